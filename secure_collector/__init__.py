"""secure_collector: polls agents over verified mTLS, validates answers, alerts and stores."""

__version__ = "0.1.0"  # the project's version (pyproject.toml); a test keeps them equal
