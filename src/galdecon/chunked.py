"""Old import path of :mod:`galdecon.data.chunked`, kept for one release."""

from galdecon.data.chunked import *  # noqa: F403
from galdecon.data.chunked import Store, StoreWriter, create_store, open_store, write_store

__all__ = ["Store", "StoreWriter", "create_store", "open_store", "write_store"]
