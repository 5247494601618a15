"""Execution engines: where blocks live and how functions run on them.

See :class:`galdecon.engines.base.Engine` for the contract the driver relies on.
"""

from galdecon.engines.base import Engine, block_bounds
from galdecon.engines.local import LocalEngine

__all__ = ["Engine", "LocalEngine", "block_bounds", "make_engine"]


def make_engine(name: str = "local", **options) -> Engine:
    """Return an engine by name: ``local`` or ``spark`` (needs the ``spark`` extra)."""
    if name == "local":
        return LocalEngine(**options)
    if name == "spark":
        from galdecon.engines.spark.engine import SparkEngine

        return SparkEngine(**options)
    from galdecon.errors import ConfigError

    raise ConfigError(f"option engine={name!r}: expected 'local' or 'spark'")
