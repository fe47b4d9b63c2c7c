"""secure_agent: the hardened XML-RPC metrics agent.

Layers, outermost first: transport guard (allowlist, TLS, limits, token) -> dispatcher -> metric probes.
``secure_agent`` imports only ``pki`` among our packages.
"""

__version__ = "0.1.0"
