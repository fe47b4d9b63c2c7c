"""pki: certificates, TLS contexts, request tokens and config loading.

Every security-sensitive default lives here, once. ``pki`` imports no other package of ours.
Exceptions: see :mod:`pki.errors`.
"""

__version__ = "0.1.0"  # the project's version (pyproject.toml); a test keeps them equal
