"""Reading a stack from an npy or FITS input, header first: the one reader of whole arrays.

Every error names the file, the offending index and what was expected, and is an
:class:`~galdecon.errors.InputError` (or a :class:`~galdecon.errors.ConfigError` for an
array too large for this machine). Inputs are never modified.

Reading treats a file as hostile data: only regular files are opened (never a FIFO, a
device or a directory); a ``.npy`` header is parsed as a literal (never unpickled) and
checked against the file's size before any data is allocated — a truncated file, or one
with bytes after its array, is refused; a FITS header is checked the same way (BITPIX,
NAXISn, the data it promises against what the file holds), and a gzip'd FITS file is
decompressed to its end, so a truncated or corrupted stream is refused, not half-read.
:func:`peek_shape` gives the shape and type from the header alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from galdecon.data.files import check_dtype, check_file, file_format, no_memory
from galdecon.data.fitsfile import read_fits
from galdecon.data.memory import available_bytes
from galdecon.data.npyfile import read_npy
from galdecon.data.npzfile import read_npz
from galdecon.data.spec import split, split_hdu
from galdecon.errors import InputError


def _locate(spec, hdu) -> tuple[Path, str, object]:
    path, bracket = split_hdu(spec)
    hdu = bracket if hdu is None else hdu
    check_file(path)
    fmt = file_format(path)
    if fmt == "npy" and hdu is not None:
        raise InputError(f"{path}: an HDU ({hdu!r}) was given but .npy files have none")
    if fmt == "npz":  # the bracket names a member; an integer-looking one stays a name
        hdu = split(spec)[1]
    return path, fmt, hdu


def peek_shape(spec, hdu=None) -> tuple[tuple[int, ...], np.dtype]:
    """Return the shape and type of an input from its header alone (no data is read).

    The header is checked as :func:`read_array` checks it, including the data size it
    promises against the file's size, so a truncated file is refused here, before any
    memory is allocated for it.

    Parameters
    ----------
    spec : str or path
        File name, optionally with a FITS HDU in brackets.
    hdu : int or str, optional
        FITS HDU index or EXTNAME (overrides the bracket form).

    Returns
    -------
    shape : tuple of int
    dtype : numpy.dtype
        The (native-endian) type :func:`read_array` returns.

    Raises
    ------
    InputError
        As :func:`read_array`.
    """
    path, fmt, hdu = _locate(spec, hdu)
    if fmt == "npy":
        shape, dtype, _ = read_npy(path, None, False)
    elif fmt == "npz":
        shape, dtype, _ = read_npz(path, hdu, None, False)
    else:
        shape, dtype, _ = read_fits(path, hdu, None, False)
    return shape, dtype.newbyteorder("=")


def read_array(spec, hdu=None, *, max_bytes: float | None = None) -> np.ndarray:
    """Read a numeric array from ``.npy`` or FITS (first image HDU, or ``file.fits[HDU]``).

    Parameters
    ----------
    spec : str or path
        File name, optionally with a FITS HDU in brackets.
    hdu : int or str, optional
        FITS HDU index or EXTNAME (overrides the bracket form).
    max_bytes : float, optional
        Refuse (before allocating) data larger than this; default: the memory available
        (:func:`galdecon.data.memory.available_bytes`); ``math.inf`` for no limit.

    Returns
    -------
    ndarray
        A new native-endian array (never a view on the file).

    Raises
    ------
    InputError
        Missing file, not a regular file, unknown format, unreadable, truncated or damaged
        content, pickled or non-numeric data.
    ConfigError
        The data would not fit in ``max_bytes``.
    """
    path, fmt, hdu = _locate(spec, hdu)
    limit = available_bytes() if max_bytes is None else max_bytes
    if fmt == "npy":
        shape, dtype, array = read_npy(path, limit, True)
    elif fmt == "npz":
        shape, dtype, array = read_npz(path, hdu, limit, True)
    else:
        shape, dtype, array = read_fits(path, hdu, limit, True)
    check_dtype(path, array.dtype)
    try:
        return np.asarray(array, dtype=array.dtype.newbyteorder("="))
    except MemoryError:
        raise no_memory(path, shape, dtype) from None

