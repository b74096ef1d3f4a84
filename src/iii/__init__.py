"""iii: a fast, wire-compatible Python implementation of the iii engine.

The engine lives in :mod:`iii.engine` and runs with the ``iii`` command.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
