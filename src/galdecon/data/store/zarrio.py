"""The Zarr calls of a store, for zarr-python 2 and 3 alike."""

from __future__ import annotations

from galdecon.data.store.location import Where
from galdecon.data.store.schema import COMPRESSIONS, INSTALL_HINT, ZARR_FORMAT
from galdecon.errors import ConfigError, EngineError


def zarr_module():
    """zarr, or an EngineError naming the extra to install."""
    try:
        import zarr
    except ImportError:
        raise EngineError(f"chunked stacks (.zarr) need zarr and fsspec: {INSTALL_HINT}"
                          ) from None
    return zarr


def zarr_major() -> int:
    """The major version of the installed zarr-python."""
    return int(zarr_module().__version__.split(".")[0])


def compressor(compression):
    """The numcodecs codec of ``compression`` (None for ``'none'``)."""
    if compression in (None, "none"):
        return None
    if compression != "zstd":
        raise ConfigError(f"compression {compression!r}: expected one of "
                          f"{', '.join(COMPRESSIONS)}")
    zarr_module()
    import numcodecs

    return numcodecs.Zstd(level=1)


def _zarr_kwargs(where: Where) -> dict:
    return {"storage_options": where.storage_options} if where.storage_options else {}


def create_group(where: Where):
    """Create an empty Zarr group at ``where``."""
    zarr = zarr_module()
    if zarr_major() >= 3:
        return zarr.open_group(store=where.root, mode="w", zarr_format=ZARR_FORMAT,
                               **_zarr_kwargs(where))
    return zarr.open_group(store=where.root, mode="w", **_zarr_kwargs(where))


def open_group_rw(where: Where):
    """Open the Zarr group at ``where`` for writing."""
    zarr = zarr_module()
    if zarr_major() >= 3:
        return zarr.open_group(store=where.root, mode="r+", zarr_format=ZARR_FORMAT,
                               **_zarr_kwargs(where))
    return zarr.open_group(store=where.root, mode="r+", **_zarr_kwargs(where))


def create_array(group, name, shape, dtype, chunks, compression) -> None:
    """Create a Zarr array in ``group``, every chunk stored."""
    codec = compressor(compression)
    if zarr_major() >= 3:
        group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                           compressors=codec)
    else:
        group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                             compressor=codec, write_empty_chunks=True)


def open_array(where: Where, name: str, mode: str):
    """Open Zarr array ``name`` at ``where`` (``mode`` 'r' or 'r+')."""
    zarr = zarr_module()
    if zarr_major() >= 3:
        # Every chunk is stored, even one of zeros, so that a missing chunk file is an error.
        with zarr.config.set({"array.write_empty_chunks": True}):
            return zarr.open_array(store=where.root, path=name, mode=mode,
                                   zarr_format=ZARR_FORMAT, **_zarr_kwargs(where))
    return zarr.open_array(store=where.root, path=name, mode=mode, write_empty_chunks=True,
                           **_zarr_kwargs(where))


def chunk_key(name: str, index: int, ndim: int) -> str:
    """The key of chunk ``index`` of array ``name``."""
    # Zarr format 2, dimension separator ".": chunk (i, 0, ..., 0) is the file "i.0...0".
    return f"{name}/" + ".".join([str(index)] + ["0"] * (ndim - 1))
