"""secure_audit: audit-log verification and deployment compliance checks (a leaf: nothing imports it)."""

__version__ = "0.1.0"  # the project's version (pyproject.toml); a test keeps them equal
