"""pki: certificates, TLS contexts, request tokens and config loading.

Every security-sensitive default lives here, once. ``pki`` imports no other package of ours.
Exceptions: see :mod:`pki.errors`.
"""
