"""Reading JSON configuration files, for every program: one bounded reader, one wording of every problem.

The agent, the collector, ``make_certs``, ``secure-audit``, ``python -m storage`` and viz all read their
configuration through :func:`load` (or :func:`read_object` and :func:`validate` for a file of which they
read only some sections), so a file with several mistakes gets all of them at once, one
``FILE: key.path: problem`` line each, worded alike whichever program reads it (:mod:`jsonconfig.errors`).

Every package of ours may import this one; it imports none of them (tests/test_layering.py).
"""

from jsonconfig.errors import describe_errors
from jsonconfig.loader import MAX_CONFIG_BYTES, load, read_object, validate

__all__ = ["MAX_CONFIG_BYTES", "describe_errors", "load", "read_object", "validate"]
