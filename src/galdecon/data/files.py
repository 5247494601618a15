"""What an input file is: a readable regular file of a known format, of plain numbers."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import stat
from pathlib import Path

import numpy as np

from galdecon.data.memory import available_bytes, format_bytes
from galdecon.errors import ConfigError, InputError

NPY_SUFFIXES = (".npy",)
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz",
                 ".fz")
NPZ_SUFFIXES = (".npz",)
NPY_MAGIC = b"\x93NUMPY"
GZIP_MAGIC = b"\x1f\x8b"


def file_format(path: Path) -> str:
    """Return 'npy', 'npz' or 'fits' from a file name, or raise InputError."""
    name = path.name.lower()
    if name.endswith(NPY_SUFFIXES):
        return "npy"
    if name.endswith(NPZ_SUFFIXES):
        return "npz"
    if name.endswith(FITS_SUFFIXES):
        return "fits"
    raise InputError(f"{path}: unknown file format; expected one of "
                     f"{', '.join(NPY_SUFFIXES + NPZ_SUFFIXES + FITS_SUFFIXES)} (other "
                     "formats: `galdecon convert` reads stores and writes .npy or FITS)")


def one_line(exc: BaseException) -> str:
    """An exception as ``Type: message`` on one line (library messages may span lines)."""
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a plain file"


def check_file(path) -> os.stat_result:
    """Raise InputError unless ``path`` is a readable regular file; return its ``stat``.

    Says what is wrong: not found, a broken symbolic link or a link loop, a directory, a
    FIFO or device (never opened: reading one could block for ever), no permission.
    """
    text = os.fspath(path)
    if "\x00" in text:
        raise InputError(f"{text!r}: file name contains a NUL byte; expected a file name")
    try:
        info = os.stat(text)
    except FileNotFoundError:
        target = None
        with contextlib.suppress(OSError):
            target = os.readlink(text) if os.path.islink(text) else None
        if target is not None:
            raise InputError(f"{path}: broken symbolic link (to {target}, which does not "
                             "exist); expected a .npy or FITS file") from None
        raise InputError(f"{path}: file not found") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{path}: symbolic link loop; expected a .npy or FITS file"
                             ) from None
        raise InputError(f"{path}: cannot be accessed ({exc.strerror or one_line(exc)}); "
                         "expected a readable .npy or FITS file") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{path}: is a directory, expected a .npy or FITS file")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: is {_file_kind(info.st_mode)}, not a regular file; "
                         "expected a .npy or FITS file")
    if not os.access(text, os.R_OK):
        raise InputError(f"{path}: permission denied; expected a readable .npy or FITS file")
    return info


@contextlib.contextmanager
def open_input(path: Path):
    """Open an input for reading; an OS error becomes an InputError."""
    try:
        handle = open(path, "rb")  # closed by the with below
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or one_line(exc)}); "
                         "expected a readable .npy or FITS file") from None
    with handle:
        yield handle


def shape_text(shape) -> str:
    """A shape as ``n×N0×N1`` (``scalar`` for no axes)."""
    return "×".join(str(s) for s in shape) if shape else "scalar"


def check_size_limit(path, shape, dtype: np.dtype, limit) -> None:
    """Refuse, before allocating it, an array larger than ``limit`` bytes."""
    n_bytes = math.prod(shape) * dtype.itemsize
    if limit is not None and n_bytes > limit:
        raise ConfigError(f"{path}: reading its {shape_text(shape)} {dtype.name} array needs "
                          f"{format_bytes(n_bytes)}; this machine has {format_bytes(limit)} "
                          "available")


def no_memory(path, shape, dtype) -> ConfigError:
    """The error for an array that could not be allocated."""
    n_bytes = math.prod(shape) * np.dtype(dtype).itemsize
    return ConfigError(f"{path}: not enough memory to read its {shape_text(shape)} "
                       f"{np.dtype(dtype).name} array ({format_bytes(n_bytes)}); this machine "
                       f"has {format_bytes(available_bytes())} available")


def check_dtype(path, dtype: np.dtype) -> None:
    """Refuse anything but plain real numbers (before any data is read)."""
    if dtype.hasobject:
        raise InputError(f"{path}: holds a pickled/object array; only numeric arrays "
                         "are read (pickles are never loaded)")
    if dtype.names is not None:
        raise InputError(f"{path}: holds a structured array (fields "
                         f"{', '.join(dtype.names)}); expected plain real numbers "
                         "(float or integer)")
    if dtype.subdtype is not None:
        raise InputError(f"{path}: holds a sub-array data type {dtype}; expected plain real "
                         "numbers (float or integer)")
    if dtype.kind not in "fiu":
        raise InputError(f"{path}: data type {dtype} is not supported; expected real "
                         "numbers (float or integer)")

