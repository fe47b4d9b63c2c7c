"""secure_collector: polls agents over verified mTLS, validates answers, alerts and stores."""
