"""Converting stacks between npy/FITS/npz files and chunked stores, streaming.

Whatever the direction, at most a few chunks of galaxies are in memory at a time: inputs
are read by the streaming readers of :mod:`galdecon.data.streaming`; npy files are written
with plain file I/O, FITS files through astropy's ``StreamingHDU``, stores chunk by chunk.
Outputs are written to a temporary name and renamed, so a failure leaves nothing under the
final name; inputs are never modified.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from galdecon.data import chunked
from galdecon.data.output import atomic_path, check_outputs
from galdecon.data.spec import split_hdu
from galdecon.data.streaming import DEFAULT_ARRAY, StoreArrayReader, kind, open_sources, store_array
from galdecon.errors import ConfigError, InputError, OutputError

# BITPIX of the dtypes a FITS image stores without scaling.
_BITPIX = {"uint8": 8, "int16": 16, "int32": 32, "int64": 64, "float32": -32, "float64": -64}


# -- writers -----------------------------------------------------------------------------

def _steps(reader, chunk: int) -> list[tuple[int, int]]:
    if isinstance(reader, StoreArrayReader):
        return reader.store.chunk_bounds(reader.name)
    n = reader.shape[0]
    return [(a, min(a + chunk, n)) for a in range(0, n, chunk)]


def write_npy(path, reader, chunk: int) -> Path:
    """Stream ``reader`` into an ``.npy`` file (native byte order), atomically."""
    dtype = reader.dtype.newbyteorder("=")
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": tuple(reader.shape)}
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:
        try:
            np.lib.format.write_array_header_1_0(handle, header)
        except ValueError:  # a header over 64 KiB
            handle.seek(0)
            handle.truncate()
            np.lib.format.write_array_header_2_0(handle, header)
        for a, b in _steps(reader, chunk):
            block = np.ascontiguousarray(reader[slice(a, b)], dtype=dtype)
            handle.write(block.reshape(-1).view(np.uint8).data)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def write_fits(path, reader, chunk: int, cards: dict | None = None) -> Path:
    """Stream ``reader`` into the primary HDU of a FITS file, atomically."""
    from astropy.io import fits

    dtype = np.dtype(reader.dtype)
    if dtype.names is not None or dtype.name not in _BITPIX:
        raise ConfigError(f"{path}: a FITS image holds {', '.join(_BITPIX)} without "
                          f"scaling, not {dtype}; write an .npy file instead")
    header = fits.Header([("SIMPLE", True), ("BITPIX", _BITPIX[dtype.name]),
                          ("NAXIS", len(reader.shape))]
                         + [(f"NAXIS{k + 1}", n) for k, n in enumerate(reader.shape[::-1])]
                         + [("EXTEND", True)])
    for key, value in (cards or {}).items():
        header[key] = value
    with atomic_path(Path(path)) as tmp:
        stream = fits.StreamingHDU(str(tmp), header)
        try:
            for a, b in _steps(reader, chunk):
                stream.write(np.ascontiguousarray(reader[slice(a, b)], dtype=dtype))
        finally:
            stream.close()
    return Path(path)


# -- the conversion ----------------------------------------------------------------------

def convert(source, target, *, array: str | None = None, chunk: int = chunked.DEFAULT_CHUNK,
            overwrite: bool = False, compression: str = "zstd",
            command: str | None = None, dataset_format: str | None = None) -> dict:
    """Convert between npy/FITS/npz files and chunked stores, in bounded memory.

    Parameters
    ----------
    source : str or path
        ``.npy``, FITS (``file.fits[HDU]``), ``.npz`` or a store (``NAME.zarr`` or URL;
        ``STORE[NAME]`` names an array, like ``array``).
    target : str or path
        ``.npy``, FITS or a store (``STORE[NAME]`` as for ``source``).
    array : str, optional
        npy/FITS → store: the name given to the array (default ``images``). Store/npz →
        npy/FITS: the array read (default ``images``). Store/npz → store: only this array
        (default: all).
    chunk : int
        Galaxies per chunk of a store written (and per step when streaming files).
    overwrite : bool
        Replace an existing output (a store only once the new one is complete).
    compression : {'zstd', 'none'}
        Codec of a store's chunks.
    command : str, optional
        Recorded in a store's provenance.
    dataset_format : str, optional
        The format of a simulated data set's ``meta`` (an npz source of this format gives
        its settings to the store's provenance; see :func:`~galdecon.data.streaming.open_sources`).

    Returns
    -------
    dict
        ``output`` and ``arrays`` (``{name: (shape, dtype)}``) written; ``chunks`` for a store.

    Raises
    ------
    InputError, OutputError, ConfigError
        Unreadable input, unwritable or existing output, an unsupported combination.
    """
    source, source_name = store_array(source)
    target, target_name = store_array(target)
    named = {n for n in (array, source_name, target_name) if n is not None}
    if len(named) > 1:
        raise ConfigError(f"arrays {', '.join(sorted(named))} named for one conversion; "
                          "name one array (STORE[NAME] or --array NAME)")
    array = named.pop() if named else None
    source_kind, target_kind = kind(source), kind(target)
    if target_kind == "npz":
        raise OutputError(f"{target}: writing .npz is not supported; write a store (.zarr) "
                          "or an npy/FITS file")
    _refuse_same(source, target, source_kind, target_kind)
    if target_kind != "store":
        check_outputs({"output": Path(target)},
                         [split_hdu(source)[0]] if source_kind != "store" else [],
                         overwrite)
    with contextlib.ExitStack() as stack:
        # a single file's array is named by --array; a store's or npz's is picked by it
        named = target_kind == "store" or source_kind in ("npy", "fits")
        readers, run = open_sources(source, array if named else None, stack,
                                    dataset_format)
        if target_kind == "store":
            sources = [str(source)]
            store = chunked.write_store(
                target, readers, chunk=chunk, overwrite=overwrite, compression=compression,
                provenance={"command": command, "sources": sources, "run": run})
            return {"output": str(target),
                    "arrays": {k: (store.shape(k), store.dtype(k)) for k in store.names},
                    "chunks": {k: len(store.chunk_bounds(k)) for k in store.names}}
        name = array or DEFAULT_ARRAY
        if name not in readers:
            raise InputError(f"{source}: no array {name!r} (arrays: {', '.join(readers)}); "
                             "choose one with --array")
        reader = readers[name]
        if target_kind == "npy":
            write_npy(target, reader, chunk)
        else:
            write_fits(target, reader, chunk)
        return {"output": str(target), "arrays": {name: (reader.shape, reader.dtype)}}


def _refuse_same(source, target, source_kind, target_kind) -> None:
    if source_kind != target_kind:
        return
    a, b = (chunked.Where(str(s)) for s in (source, target))
    if a.local is not None and b.local is not None:
        same = a.local.absolute() == b.local.absolute() or (
            a.local.exists() and b.local.exists() and a.local.samefile(b.local))
    else:
        same = a.url.rstrip("/") == b.url.rstrip("/")
    if same:
        raise OutputError(f"{target}: output would overwrite the input; choose another name")
