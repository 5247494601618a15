"""Stacks read a few rows at a time (npy, FITS, npz members, store arrays), header first.

A streaming reader has ``shape``, ``dtype``, ``reader[a:b]`` (rows ``a`` to ``b - 1`` along
axis 0, a new array) and ``close()``. The npy and FITS readers are built on the whole-array
readers' checks (:mod:`galdecon.data.npyfile`, :mod:`galdecon.data.fitsfile`): the same
regular-file test, the same header parsing, the same HDU (by default the first image HDU
with 2-D or 3-D data, the one ``galdecon deconvolve`` reads) and the same refusal of a file
that holds less data than its header promises — so ``convert`` and ``deconvolve`` read the
same array of a file, and a damaged file is one :class:`~galdecon.errors.InputError` naming
it. Rows are read with plain file I/O at computed offsets (npy, npz members), through
astropy's ``section`` (FITS) or chunk by chunk (stores): no memory map, whose pages would
count against the process.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from galdecon.data import chunked
from galdecon.data.files import check_file, file_format, open_input
from galdecon.data.fitsfile import check_image, data_size, fits_errors, is_gzipped
from galdecon.data.npyfile import check_npy_length, read_npy_header
from galdecon.data.spec import split, split_hdu
from galdecon.errors import InputError

DEFAULT_ARRAY = "images"


class NpyReader:
    """Rows of an ``.npy`` file read with file I/O at computed offsets.

    A Fortran-ordered file (rare) is read through a memory map instead, whose pages then
    count against the process.
    """

    def __init__(self, path):
        self.path = Path(path)
        check_file(self.path)
        with open_input(self.path) as handle:
            header = read_npy_header(handle, self.path, numbers_only=False)
            check_npy_length(self.path, header.shape, header.dtype, header.offset,
                             os.fstat(handle.fileno()).st_size)
        self.shape, self.dtype = header.shape, header.dtype
        self._offset = header.offset
        self._mapped = None
        if header.fortran_order and len(self.shape) > 1:
            self._mapped = np.load(self.path, mmap_mode="r", allow_pickle=False)
        self._row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()

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
    """Rows of a FITS image HDU, read through astropy's ``section`` (no memory map).

    The HDU is the one :func:`galdecon.data.readers.read_array` reads (``file.fits[HDU]``,
    or by default the first image HDU with 2-D or 3-D data), checked the same way.
    """

    def __init__(self, spec):
        from astropy.io import fits

        self.path, hdu = split_hdu(spec)
        check_file(self.path)
        self._hdul = None
        self._gzipped = is_gzipped(self.path)
        try:
            with fits_errors(self.path, self._gzipped):
                self._hdul = fits.open(self.path, memmap=False, lazy_load_hdus=True)
                image = check_image(self._hdul, hdu, self.path,
                                    None if self._gzipped else data_size(self.path))
        except BaseException:
            self.close()
            raise
        self._unit, self.shape = image.unit, image.shape
        self.dtype = image.dtype.newbyteorder("=")

    def __getitem__(self, rows: slice) -> np.ndarray:
        with fits_errors(self.path, self._gzipped):
            return np.asarray(self._unit.section[rows.start:rows.stop], dtype=self.dtype)

    def close(self) -> None:
        """Close the file."""
        if self._hdul is not None:
            self._hdul.close()
            self._hdul = None


class NpzMemberReader:
    """Rows of one member of an ``.npz`` archive, read sequentially from the archive.

    The member's header is checked as an ``.npy`` file's is, against the member's size.
    """

    def __init__(self, archive: zipfile.ZipFile, member: str, path: Path):
        self._archive, self._member, self.path = archive, member, path
        self.name = member[:-4] if member.endswith(".npy") else member
        self._where = f"{path}: member {self.name!r}"
        self._whole = None
        self._open()

    def _open(self) -> None:
        self._handle = self._archive.open(self._member)
        header = read_npy_header(self._handle, self._where, numbers_only=False)
        check_npy_length(self._where, header.shape, header.dtype, header.offset,
                         self._archive.getinfo(self._member).file_size)
        if header.fortran_order:
            self._handle.close()
            with self._archive.open(self._member) as handle:
                self._whole = np.lib.format.read_array(handle, allow_pickle=False)
        self.shape, self.dtype = header.shape, header.dtype
        self._row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
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
                raise InputError(f"{self._where} is truncated")
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


# -- what a name is, and opening it -------------------------------------------------------

def kind(spec) -> str:
    """``'store'``, ``'npz'``, ``'npy'`` or ``'fits'``, from the name (or a store's content)."""
    text = str(spec)
    if chunked.is_store(text):
        return "store"
    path = split_hdu(text)[0]
    if path.name.lower().endswith(".npz"):
        return "npz"
    return file_format(path)


def store_array(spec) -> tuple[str, str | None]:
    """``STORE[NAME]`` → (``STORE``, ``NAME``); anything else → (``spec``, None)."""
    text, name = split(str(spec))
    if name is not None and chunked.is_store(text):
        return text, name
    return str(spec), None


def _dataset_meta(archive: zipfile.ZipFile, dataset_format: str | None):
    """The settings of a data set (``meta.npy`` of ``dataset_format``), or None."""
    if dataset_format is None or "meta.npy" not in archive.namelist():
        return None
    with archive.open("meta.npy") as handle:
        meta = np.lib.format.read_array(handle, allow_pickle=False)
    try:
        meta = json.loads(str(meta.item()))
    except (ValueError, TypeError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == dataset_format else None


def _open_npz(path: Path, stack: contextlib.ExitStack, array: str | None,
              dataset_format: str | None):
    check_file(path)
    try:
        archive = stack.enter_context(zipfile.ZipFile(path))
    except (OSError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable .npz archive ({exc})") from None
    members = [m for m in archive.namelist() if m.endswith(".npy")]
    run, skip = {}, set()
    meta = _dataset_meta(archive, dataset_format)
    if meta is not None:  # a data set: its settings go to the manifest
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


def open_sources(spec, array: str | None, stack: contextlib.ExitStack,
                 dataset_format: str | None = None) -> tuple[dict, dict]:
    """Open ``spec`` for reading: ``({name: reader}, run facts for the provenance)``.

    An npy/FITS file gives one array, named ``array`` (default ``images``); an npz archive
    or a store gives all its arrays, or only ``array`` when given. An npz archive whose
    ``meta`` member is a JSON document of format ``dataset_format`` (a ``galdecon
    simulate`` data set) gives its settings as the run facts.
    """
    what = kind(spec)
    if what == "store":
        store = chunked.open_store(spec)
        names = store.names if array is None else [array]
        readers = {name: StoreArrayReader(store, name) for name in names}
        return readers, {"converted_from": store.provenance}
    path = split_hdu(spec)[0]
    if what == "npz":
        return _open_npz(path, stack, array, dataset_format)
    reader = NpyReader(path) if what == "npy" else FitsReader(spec)
    stack.callback(reader.close)
    if not reader.shape:
        raise InputError(f"{path}: holds a single number (shape ()); expected a stack")
    return {array or DEFAULT_ARRAY: reader}, {}
