"""viz: reads storage and draws plots and an HTML dashboard; knows nothing of the wire."""
