"""Chunked stack stores (see :mod:`galdecon.data.store`): the public names, for callers."""

from galdecon.data.store.location import Where, is_store
from galdecon.data.store.manifest import make_provenance
from galdecon.data.store.reader import Store, open_store
from galdecon.data.store.schema import (
                                        COMPRESSIONS,
                                        DEFAULT_CHUNK,
                                        FORMAT,
                                        FORMAT_VERSION,
                                        INSTALL_HINT,
                                        KNOWN_ARRAYS,
                                        MANIFEST,
                                        ZARR_FORMAT,
)
from galdecon.data.store.writer import StoreWriter, create_store, write_store

__all__ = ["COMPRESSIONS", "DEFAULT_CHUNK", "FORMAT", "FORMAT_VERSION", "INSTALL_HINT",
           "KNOWN_ARRAYS", "MANIFEST", "Store", "StoreWriter", "Where", "ZARR_FORMAT",
           "create_store", "is_store", "make_provenance", "open_store", "write_store"]
