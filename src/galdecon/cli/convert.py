"""``galdecon convert``: stacks between npy/FITS/npz files and chunked stores, streaming.

``galdecon convert IN OUT`` reads ``IN`` and writes ``OUT``, each an ``.npy`` file, a FITS
file (``stack.fits[HDU]`` to pick an input HDU), a chunked stack store (``NAME.zarr`` or a
URL, see :mod:`galdecon.data.chunked`), or — as input only — an ``.npz`` archive (a
``galdecon simulate`` data set converts into one store with all its arrays). Whatever the
direction, at most a few chunks of galaxies are in memory at a time: npy files are read and
written with plain file I/O at computed offsets (no memory map, whose pages would count
against the process), FITS files through astropy's ``section`` and ``StreamingHDU``, npz
members sequentially from the archive, stores chunk by chunk. Outputs are written to a
temporary name and renamed, so a failure leaves nothing under the final name; inputs are
never modified.

Wired into :mod:`galdecon.cli.app` by :func:`add_convert_parser` and :func:`run_convert`; errors
a user can cause raise :class:`~galdecon.errors.GalDeconError` (one line, exit status 2).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import time
import zipfile
from pathlib import Path

import numpy as np

from galdecon.cli.options import add_verbosity, new_parser, positive_int
from galdecon.data import chunked, io
from galdecon.errors import ConfigError, InputError, OutputError

DEFAULT_ARRAY = "images"
# BITPIX of the dtypes a FITS image stores without scaling.
_BITPIX = {"uint8": 8, "int16": 16, "int32": 32, "int64": 64, "float32": -32, "float64": -64}


# -- readers: shape, dtype and [a:b] along axis 0 ------------------------------------------

class NpyReader:
    """Rows of an ``.npy`` file read with file I/O at computed offsets.

    A Fortran-ordered file (rare) is read through a memory map instead, whose pages then
    count against the process.
    """

    def __init__(self, path):
        self.path = Path(path)
        try:
            # mmap_mode only to learn the header (shape, dtype, data offset): no page is read
            mapped = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"{self.path}: not a numeric .npy array ({exc}); pickles are "
                             "never loaded") from None
        except (OSError, EOFError) as exc:
            raise InputError(f"{self.path}: not a readable .npy file ({exc})") from None
        self.shape, self.dtype = tuple(mapped.shape), mapped.dtype
        fortran = mapped.ndim > 1 and not mapped.flags.c_contiguous
        self._mapped = mapped if fortran else None
        self._offset = int(mapped.offset)
        del mapped
        self._row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._file = open(self.path, "rb")

    def __getitem__(self, rows: slice) -> np.ndarray:
        a, b = rows.start, rows.stop
        if self._mapped is not None:
            return np.array(self._mapped[a:b])
        out = np.empty((b - a,) + self.shape[1:], dtype=self.dtype)
        self._file.seek(self._offset + a * self._row)
        if self._file.readinto(out.reshape(-1).view(np.uint8)) != out.nbytes:
            raise InputError(f"{self.path}: truncated: rows {a} to {b - 1} are not all in "
                             "the file")
        return out

    def close(self) -> None:
        """Close the file."""
        self._file.close()
        self._mapped = None


class FitsReader:
    """Rows of a FITS image HDU, read through astropy's ``section`` (no memory map)."""

    def __init__(self, spec):
        from astropy.io import fits

        self.path, hdu = io.split_hdu(spec)
        try:
            self._hdul = fits.open(self.path, memmap=False, lazy_load_hdus=True)
            self._unit = self._select(self._hdul, hdu)
            self.shape = tuple(self._unit.shape)
            self.dtype = self._unit.section[0:1].dtype
        except InputError:
            self.close()
            raise
        except (OSError, ValueError, TypeError, IndexError, KeyError) as exc:
            self.close()
            raise InputError(f"{self.path}: not a readable FITS image ({exc})") from None

    def _select(self, hdul, hdu):
        if hdu is None:
            for unit in hdul:
                if unit.is_image and unit.header.get("NAXIS", 0) >= 1:
                    return unit
            raise InputError(f"{self.path}: no image HDU with data (HDUs: "
                             f"{[u.name for u in hdul]})")
        try:
            unit = hdul[hdu]
        except (KeyError, IndexError):
            raise InputError(f"{self.path}: no HDU {hdu!r} (HDUs: {[u.name for u in hdul]})"
                             ) from None
        if not unit.is_image or unit.header.get("NAXIS", 0) < 1:
            raise InputError(f"{self.path}: HDU {hdu!r} holds no image data")
        return unit

    def __getitem__(self, rows: slice) -> np.ndarray:
        return np.asarray(self._unit.section[rows.start:rows.stop])

    def close(self) -> None:
        """Close the file."""
        if getattr(self, "_hdul", None) is not None:
            self._hdul.close()
            self._hdul = None


class NpzMemberReader:
    """Rows of one member of an ``.npz`` archive, read sequentially from the archive."""

    def __init__(self, archive: zipfile.ZipFile, member: str, path: Path):
        self._archive, self._member, self.path = archive, member, path
        self.name = member[:-4] if member.endswith(".npy") else member
        self._whole = None
        self._open()
        if self._whole is None and self.dtype.hasobject:
            raise InputError(f"{path}: member {self.name!r} holds Python objects; pickles "
                             "are never loaded")

    def _open(self) -> None:
        self._handle = self._archive.open(self._member)
        version = np.lib.format.read_magic(self._handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(self._handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(self._handle)
        else:  # rare (version 3: non-Latin-1 field names): read whole
            fortran, shape, dtype = True, None, None
        if fortran:
            self._handle.close()
            with self._archive.open(self._member) as handle:
                self._whole = np.lib.format.read_array(handle, allow_pickle=False)
            shape, dtype = self._whole.shape, self._whole.dtype
        self.shape, self.dtype = tuple(shape), dtype
        self._row = int(np.prod(self.shape[1:], dtype=np.int64)) * dtype.itemsize
        self._position = 0

    def __getitem__(self, rows: slice) -> np.ndarray:
        a, b = rows.start, rows.stop
        if self._whole is not None:
            return np.array(self._whole[a:b])
        if a < self._position:  # only forward reads are cheap: start again
            self._handle.close()
            self._open()
        while self._position < a:
            step = min(a - self._position, max(1, (64 << 20) // max(self._row, 1)))
            self._read(step)
        return self._read(b - a)

    def _read(self, count: int) -> np.ndarray:
        out = np.empty((count,) + self.shape[1:], dtype=self.dtype)
        view = out.reshape(-1).view(np.uint8)
        got = 0
        while got < out.nbytes:
            n = self._handle.readinto(view[got:])
            if not n:
                raise InputError(f"{self.path}: member {self.name!r} is truncated")
            got += n
        self._position += count
        return out

    def close(self) -> None:
        """Close the member."""
        self._handle.close()
        self._whole = None


class StoreArrayReader:
    """Rows of one array of a store, read (and verified) chunk by chunk."""

    def __init__(self, store: chunked.Store, name: str):
        self.store, self.name = store, name
        self.shape, self.dtype = store.shape(name), store.dtype(name)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self.store.read(self.name, rows.start, rows.stop)

    def close(self) -> None:
        """Nothing to close."""


# -- what a path is, and opening it ------------------------------------------------------

def kind(spec) -> str:
    """``'store'``, ``'npz'``, ``'npy'`` or ``'fits'``, from the name (or a store's content)."""
    text = str(spec)
    if chunked.is_store(text):
        return "store"
    path = io.split_hdu(text)[0]
    if path.name.lower().endswith(".npz"):
        return "npz"
    return io.file_format(path)


def store_spec(spec) -> tuple[str, str | None]:
    """``STORE[NAME]`` -> (``STORE``, ``NAME``); anything else -> (``spec``, None)."""
    text = str(spec)
    path, name = io.split_hdu(text)
    if name is not None and chunked.is_store(text[: text.rindex("[")]):
        return text[: text.rindex("[")], str(name)
    return text, None


def _open_npz(path: Path, stack: contextlib.ExitStack, array: str | None):
    from galdecon.science.dataset import FORMAT as DATASET_FORMAT

    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        archive = stack.enter_context(zipfile.ZipFile(path))
    except (OSError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable .npz archive ({exc})") from None
    members = [m for m in archive.namelist() if m.endswith(".npy")]
    run, skip = {}, set()
    if "meta.npy" in members:  # a galdecon simulate data set: its settings go to the manifest
        with archive.open("meta.npy") as handle:
            meta = np.lib.format.read_array(handle, allow_pickle=False)
        try:
            meta = json.loads(str(meta.item()))
        except (ValueError, TypeError):
            meta = None
        if isinstance(meta, dict) and meta.get("format") == DATASET_FORMAT:
            run, skip = meta, {"meta", "snr"}  # snr is meta["snr"]
    readers = {}
    for member in members:
        reader = NpzMemberReader(archive, member, path)
        stack.callback(reader.close)
        if reader.name in skip or (array is not None and reader.name != array):
            continue
        if not reader.shape or reader.dtype.kind not in "biufcV":
            raise InputError(f"{path}: member {reader.name!r} (shape {reader.shape}, dtype "
                             f"{reader.dtype}) is not a stack of numbers")
        readers[reader.name] = reader
    if array is not None and array not in readers:
        raise InputError(f"{path}: no member {array!r} (members: "
                         f"{', '.join(m[:-4] for m in members)})")
    return readers, run


def open_sources(spec, array: str | None, stack: contextlib.ExitStack) -> tuple[dict, dict]:
    """Open ``spec`` for reading: ``({name: reader}, run facts for the provenance)``.

    An npy/FITS file gives one array, named ``array`` (default ``images``); an npz archive
    or a store gives all its arrays, or only ``array`` when given.
    """
    what = kind(spec)
    if what == "store":
        store = chunked.open_store(spec)
        names = store.names if array is None else [array]
        readers = {name: StoreArrayReader(store, name) for name in names}
        return readers, {"converted_from": store.provenance}
    path = io.split_hdu(spec)[0]
    if what == "npz":
        return _open_npz(path, stack, array)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an npy/FITS file or a .zarr store")
    reader = NpyReader(path) if what == "npy" else FitsReader(spec)
    stack.callback(reader.close)
    if not reader.shape:
        raise InputError(f"{path}: holds a single number (shape ()); expected a stack")
    return {array or DEFAULT_ARRAY: reader}, {}


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
    with io.atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:
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
    with io.atomic_path(Path(path)) as tmp:
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
            command: str | None = None) -> dict:
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

    Returns
    -------
    dict
        ``output`` and ``arrays`` (``{name: (shape, dtype)}``) written; ``chunks`` for a store.

    Raises
    ------
    InputError, OutputError, ConfigError
        Unreadable input, unwritable or existing output, an unsupported combination.
    """
    source, source_name = store_spec(source)
    target, target_name = store_spec(target)
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
        io.check_outputs({"output": Path(target)},
                         [io.split_hdu(source)[0]] if source_kind != "store" else [],
                         overwrite)
    with contextlib.ExitStack() as stack:
        # a single file's array is named by --array; a store's or npz's is picked by it
        named = target_kind == "store" or source_kind in ("npy", "fits")
        readers, run = open_sources(source, array if named else None, stack)
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


# -- the command -------------------------------------------------------------------------

def add_convert_parser(sub) -> argparse.ArgumentParser:
    """Define ``galdecon convert`` and its options."""
    p = new_parser(
        sub, "convert", "convert stacks between npy/FITS/npz files and chunked stores",
        "Convert a stack between .npy, FITS and the chunked store format (a Zarr group "
        "chunked along the galaxy axis, NAME.zarr or a URL such as s3://bucket/NAME.zarr, "
        "with a galdecon.json manifest of per-chunk SHA-256 checksums), in both directions; "
        "a galdecon simulate .npz data set converts into one store with all its arrays. "
        "Streams in bounded memory (a few chunks at a time), reading and writing FITS too. "
        "Outputs appear only when complete; inputs are never modified.")
    p.add_argument("input", metavar="IN",
                   help="an .npy file, a FITS file (file.fits[HDU] for an HDU), an .npz "
                        "data set, or a store (NAME.zarr, file://, s3://, gs://, hdfs://...; "
                        "STORE[ARRAY] is the same as --array ARRAY)")
    p.add_argument("output", metavar="OUT", help="an .npy file, a FITS file or a store")
    p.add_argument("--chunk", type=positive_int, default=chunked.DEFAULT_CHUNK, metavar="N",
                   help="galaxies per chunk of the store written")
    p.add_argument("--array", default=None, metavar="NAME",
                   help="npy/FITS -> store: the array's name (default images); store/npz -> "
                        "npy/FITS: the array to read (default images); store/npz -> store: "
                        "only this array (default all)")
    p.add_argument("--compression", choices=chunked.COMPRESSIONS, default="zstd",
                   help="codec of the store's chunks (checksums do not depend on it)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (a store only once the new one is "
                        "complete)")
    add_verbosity(p)
    return p


def run_convert(args) -> int:
    """``galdecon convert``: stream IN into OUT."""
    words = ["galdecon", "convert", str(args.input), str(args.output), "--chunk",
             str(args.chunk), "--compression", args.compression]
    if args.array:
        words += ["--array", args.array]
    t0 = time.perf_counter()
    result = convert(args.input, args.output, array=args.array, chunk=args.chunk,
                     overwrite=args.overwrite, compression=args.compression,
                     command=shlex.join(words))
    if not args.quiet:
        print(f"galdecon convert: {args.input} -> {args.output}, "
              f"{time.perf_counter() - t0:.1f} s")
        for name, (shape, dtype) in result["arrays"].items():
            chunks = result.get("chunks", {}).get(name)
            extra = f", {chunks} chunk{'s' * (chunks != 1)}" if chunks else ""
            print(f"  {name}: shape {tuple(shape)}, {np.dtype(dtype)}{extra}")
    return 0
