"""Read, validate and write stacks of stamps (npy and FITS); atomic outputs.

Every error names the file, the offending index and what was expected, and is an
:class:`~galdecon.errors.InputError` (or :class:`~galdecon.errors.OutputError`, or a
:class:`~galdecon.errors.ConfigError` for an array too large for this machine). Inputs are
never modified; outputs are written to a temporary file in the target directory and
renamed, so a failed run never leaves a half-written file under a final name.

Reading treats a file as hostile data: only regular files are opened (never a FIFO, a
device or a directory); a ``.npy`` header is parsed as a literal (never unpickled) and
checked against the file's size before any data is allocated — a truncated file, or one
with bytes after its array, is refused; a FITS header is checked the same way (BITPIX,
NAXISn, the data it promises against what the file holds), and a gzip'd FITS file is
decompressed to its end, so a truncated or corrupted stream is refused, not half-read.
:func:`peek_shape` gives the shape and type from the header alone.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import math
import os
import re
import stat
import tempfile
import warnings
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np

from galdecon.errors import ConfigError, GalDeconError, GalDeconWarning, InputError, OutputError
from galdecon.data.memory import available_bytes, format_bytes

NPY_SUFFIXES = (".npy",)
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
OUTPUT_FORMATS = ("npy", "fits")
PSF_SUM_TOLERANCE = 1e-5
NPY_MAGIC = b"\x93NUMPY"
GZIP_MAGIC = b"\x1f\x8b"
#: FITS BITPIX values and the types they hold (big-endian on disk).
FITS_BITPIX = {8: np.dtype("u1"), 16: np.dtype("i2"), 32: np.dtype("i4"), 64: np.dtype("i8"),
               -32: np.dtype("f4"), -64: np.dtype("f8")}
_HDU_SPEC = re.compile(r"^(?P<path>.+?)\[(?P<hdu>[^\[\]]+)\]$")
_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


def split_hdu(spec: str | os.PathLike) -> tuple[Path, str | int | None]:
    """Split ``file.fits[HDU]`` into the path and the HDU (index or EXTNAME)."""
    text = os.fspath(spec)
    match = _HDU_SPEC.match(text)
    if match and not os.path.exists(text):  # os.path.exists: False, not an error, for odd names
        hdu = match.group("hdu")
        return Path(match.group("path")), int(hdu) if hdu.lstrip("-").isdigit() else hdu
    return Path(text), None


def file_format(path: Path) -> str:
    """Return 'npy' or 'fits' from a file name, or raise InputError."""
    name = path.name.lower()
    if name.endswith(NPY_SUFFIXES):
        return "npy"
    if name.endswith(FITS_SUFFIXES):
        return "fits"
    raise InputError(f"{path}: unknown file format; expected one of "
                     f"{', '.join(NPY_SUFFIXES + FITS_SUFFIXES)}")


def _one_line(exc: BaseException) -> str:
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
        raise InputError(f"{path}: cannot be accessed ({exc.strerror or _one_line(exc)}); "
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
def _open(path: Path):
    """Open an input for reading; an OS error becomes an InputError."""
    try:
        handle = open(path, "rb")  # closed by the with below
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or _one_line(exc)}); "
                         "expected a readable .npy or FITS file") from None
    with handle:
        yield handle


def _shape_text(shape) -> str:
    return "×".join(str(s) for s in shape) if shape else "scalar"


def _check_size_limit(path, shape, dtype: np.dtype, limit) -> None:
    """Refuse, before allocating it, an array larger than ``limit`` bytes."""
    n_bytes = math.prod(shape) * dtype.itemsize
    if limit is not None and n_bytes > limit:
        raise ConfigError(f"{path}: reading its {_shape_text(shape)} {dtype.name} array needs "
                          f"{format_bytes(n_bytes)}; this machine has {format_bytes(limit)} "
                          "available")


def _no_memory(path, shape, dtype) -> ConfigError:
    n_bytes = math.prod(shape) * np.dtype(dtype).itemsize
    return ConfigError(f"{path}: not enough memory to read its {_shape_text(shape)} "
                       f"{np.dtype(dtype).name} array ({format_bytes(n_bytes)}); this machine "
                       f"has {format_bytes(available_bytes())} available")


def _check_dtype(path, dtype: np.dtype) -> None:
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


# -- .npy --------------------------------------------------------------------------------

def _npy_header(handle, path) -> tuple[tuple, np.dtype, int]:
    """Parse and check a .npy header; return (shape, dtype, data offset).

    The header is a Python literal read by numpy's parser (``ast.literal_eval``): nothing
    in it is executed, and an object (pickled) type is refused before any data is read.
    """
    head = handle.read(8)
    if not head:
        raise InputError(f"{path}: is empty (0 bytes); expected a .npy array written by "
                         "numpy.save")
    if head.startswith(b"PK\x03\x04"):
        raise InputError(f"{path}: is a zip archive (an .npz?), not a .npy array; expected "
                         "one array written by numpy.save")
    if head[:1] == b"\x80":
        raise InputError(f"{path}: holds a pickled Python object, not a .npy array; "
                         "pickles are never loaded")
    if head.startswith(NPY_MAGIC[:len(head)]) and len(head) < 8:
        raise InputError(f"{path}: truncated .npy file ({len(head)} bytes); expected a "
                         "header written by numpy.save")
    if not head.startswith(NPY_MAGIC):
        raise InputError(f"{path}: not a .npy file (it starts with {head[:6]!r}, not the .npy "
                     "magic string b'\\x93NUMPY'); expected an array written by "
                     "numpy.save (pickles and other formats are never loaded)")
    handle.seek(0)
    version = np.lib.format.read_magic(handle)
    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise InputError(f"{path}: .npy format version {version[0]}.{version[1]} is not "
                         "supported; expected version 1.0 or 2.0 (what numpy.save writes "
                         "for numeric arrays)")
    try:
        shape, _fortran, dtype = readers[version](handle)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged header may fail in many ways
        raise InputError(f"{path}: damaged .npy header ({_one_line(exc)}); expected a "
                         "header written by numpy.save") from None
    if any(isinstance(s, bool) or s < 0 for s in shape):
        raise InputError(f"{path}: damaged .npy header (shape {shape}); expected sizes >= 0")
    _check_dtype(path, dtype)
    return tuple(int(s) for s in shape), dtype, handle.tell()


def _npy_check_length(path, shape, dtype, offset: int, file_size: int) -> None:
    """Refuse a file that holds fewer or more data bytes than its header promises."""
    expected = math.prod(shape) * dtype.itemsize
    held = file_size - offset
    if held < expected:
        raise InputError(f"{path}: truncated: its header promises a {_shape_text(shape)} "
                         f"{dtype.name} array ({expected:,} bytes of data) but the file holds "
                         f"only {held:,} bytes after the {offset}-byte header")
    if held > expected:
        raise InputError(f"{path}: {held - expected:,} unexpected bytes after the "
                         f"{_shape_text(shape)} {dtype.name} array its header describes; "
                         f"expected exactly {expected:,} bytes of data (a damaged or "
                         "concatenated file)")


def _npy(path: Path, limit, load: bool):
    with _open(path) as handle:
        shape, dtype, offset = _npy_header(handle, path)
        _npy_check_length(path, shape, dtype, offset, os.fstat(handle.fileno()).st_size)
        if not load:
            return shape, dtype, None
        _check_size_limit(path, shape, dtype, limit)
        if math.prod(shape) == 0:
            return shape, dtype, np.zeros(shape, dtype=dtype)
        handle.seek(0)
        try:
            array = np.lib.format.read_array(handle, allow_pickle=False)
        except MemoryError:
            raise _no_memory(path, shape, dtype) from None
        except (ValueError, OSError, EOFError) as exc:  # e.g. the file changed meanwhile
            raise InputError(f"{path}: not a readable .npy array ({_one_line(exc)})") from None
    if array.shape != shape or array.dtype != dtype:
        raise InputError(f"{path}: not a readable .npy array (read {array.shape} "
                         f"{array.dtype}, its header says {shape} {dtype})")
    return shape, dtype, array


# -- FITS --------------------------------------------------------------------------------

def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _fits_shape(unit, path, index) -> tuple[int, ...]:
    """Shape of an image HDU from its header (NAXIS, NAXISn), checked."""
    header = unit.header
    naxis = header.get("NAXIS", 0)
    if not _is_int(naxis) or not 0 <= naxis <= 999:
        raise InputError(f"{path}: HDU {index} has a damaged header: NAXIS = {naxis!r}; "
                         "expected an integer from 0 to 999")
    axes = []
    for j in range(int(naxis), 0, -1):
        value = header.get(f"NAXIS{j}")
        if not _is_int(value) or value < 0:
            raise InputError(f"{path}: HDU {index} has a damaged header: NAXIS{j} = "
                             f"{value!r}; expected an integer >= 0")
        axes.append(int(value))
    return tuple(axes)


def _fits_dtype(unit, path, index) -> tuple[np.dtype, int]:
    """The type astropy returns for an image HDU (BITPIX, BSCALE/BZERO), and BITPIX."""
    header = unit.header
    bitpix = header.get("BITPIX")
    if not _is_int(bitpix) or int(bitpix) not in FITS_BITPIX:
        raise InputError(f"{path}: HDU {index} has BITPIX = {bitpix!r}; expected one of "
                         f"{', '.join(str(b) for b in FITS_BITPIX)}")
    bitpix = int(bitpix)
    scale, zero = header.get("BSCALE", 1), header.get("BZERO", 0)
    for name, value in (("BSCALE", scale), ("BZERO", zero)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float)) \
                or not np.isfinite(value):
            raise InputError(f"{path}: HDU {index} has a damaged header: {name} = {value!r}; "
                             "expected a finite number")
    dtype = FITS_BITPIX[bitpix]
    if bitpix > 0 and (scale != 1 or zero != 0):
        if scale == 1 and bitpix == 8 and zero == -128:
            dtype = np.dtype("i1")
        elif scale == 1 and bitpix > 8 and zero == 1 << (bitpix - 1):
            dtype = np.dtype(f"u{bitpix // 8}")
        else:
            dtype = np.dtype("f8" if bitpix > 16 else "f4")
    return dtype, bitpix


def _hdu_list(hdul) -> str:
    """A one-line description of every HDU: index, name, what it holds."""
    items = []
    try:
        for i, unit in enumerate(hdul):
            if unit.is_image:
                try:
                    shape = _fits_shape(unit, "", i)
                    kind = f"image {_shape_text(shape)}" if shape else "no data"
                except InputError:
                    kind = "damaged header"
            else:
                kind = f"table ({type(unit).__name__})"
            items.append(f"{i} {unit.name or '(unnamed)'}: {kind}")
    except Exception as exc:  # noqa: BLE001 - a damaged HDU further on ends the list
        items.append(f"then unreadable ({_one_line(exc)})")
    return "; ".join(items)


def _fits_pick(hdul, hdu, path) -> tuple[int, object, tuple]:
    """Return (index, HDU, shape) of the image HDU asked for (default: the first ≥ 2-D)."""
    if hdu is None:
        for index, unit in enumerate(hdul):
            if unit.is_image:
                shape = _fits_shape(unit, path, index)
                if len(shape) >= 2:
                    return index, unit, shape
        raise InputError(f"{path}: no image HDU with 2-D or 3-D data; expected an image HDU "
                         f"(HDUs: {_hdu_list(hdul)})")
    try:
        unit = hdul[hdu]
    except (KeyError, IndexError):
        raise InputError(f"{path}: no HDU {hdu!r} (HDUs: {_hdu_list(hdul)})") from None
    index = hdul.index(unit)
    if not unit.is_image:
        raise InputError(f"{path}: HDU {hdu!r} is a table ({type(unit).__name__}), not an "
                         f"image; expected an image HDU (HDUs: {_hdu_list(hdul)})")
    shape = _fits_shape(unit, path, index)
    if not shape:
        raise InputError(f"{path}: HDU {hdu!r} holds no image data (NAXIS = 0); expected an "
                         f"image HDU (HDUs: {_hdu_list(hdul)})")
    return index, unit, shape


def _gunzip(path: Path, limit) -> BytesIO:
    """Decompress a whole gzip file (its CRC and length checked) into memory."""
    buffer = BytesIO()
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 22):
                buffer.write(chunk)
                if limit is not None and buffer.tell() > limit:
                    raise ConfigError(f"{path}: decompresses to more than "
                                      f"{format_bytes(limit)}; this machine has "
                                      f"{format_bytes(limit)} available")
    except (OSError, *_GZIP_ERRORS) as exc:
        raise InputError(f"{path}: gzip data is truncated or corrupt ({_one_line(exc)}); "
                         "expected a complete .gz file") from None
    buffer.seek(0)
    return buffer


def _fits(path: Path, hdu, limit, load: bool):
    """Read the header (and the data, if ``load``) of a FITS image HDU, all checked."""
    from astropy.io import fits

    with _open(path) as handle:
        magic = handle.read(4)
    gzipped = magic.startswith(GZIP_MAGIC)
    with contextlib.ExitStack() as stack, warnings.catch_warnings(record=True) as caught:
        # astropy's warnings (truncation, unparsable cards) are checked or quoted in the
        # error here, never printed.
        warnings.simplefilter("always")
        if not gzipped:
            # astropy also opens bzip2 and zip files, whose size says nothing of the data's.
            packed = magic.startswith((b"BZh", b"PK\x03\x04"))
            source, size = path, None if packed else os.path.getsize(path)
        elif load:
            source = _gunzip(path, limit)
            size = source.getbuffer().nbytes
        else:  # the header only: decompress no further than astropy reads
            source = stack.enter_context(gzip.open(path, "rb"))
            size = None
        try:
            hdul = stack.enter_context(fits.open(source, memmap=False))
            index, unit, shape = _fits_pick(hdul, hdu, path)
            dtype, bitpix = _fits_dtype(unit, path, index)
            if size is not None and not isinstance(unit, fits.CompImageHDU):
                offset = hdul.fileinfo(index)["datLoc"]
                promised = math.prod(shape) * abs(bitpix) // 8
                if offset + promised > size:
                    raise InputError(
                        f"{path}: truncated: HDU {index} promises a {_shape_text(shape)} "
                        f"array of BITPIX {bitpix} ({promised:,} bytes from byte {offset:,}) "
                        f"but the file ends at byte {size:,}")
            if not load:
                return shape, dtype, None
            _check_size_limit(path, shape, dtype, limit)
            if math.prod(shape) == 0:
                return shape, dtype, np.zeros(shape, dtype=dtype)
            data = unit.data
            if data is None or tuple(data.shape) != shape:
                raise InputError(f"{path}: HDU {index} data could not be read as its header "
                                 f"describes ({_shape_text(shape)})")
            return shape, dtype, np.array(data)
        except GalDeconError:
            raise
        except MemoryError:
            raise ConfigError(f"{path}: not enough memory to read it; this machine has "
                              f"{format_bytes(available_bytes())} available") from None
        except Exception as exc:  # noqa: BLE001 - astropy fails in many ways on damaged files
            if gzipped and isinstance(exc, _GZIP_ERRORS):
                raise InputError(f"{path}: gzip data is truncated or corrupt "
                                 f"({_one_line(exc)}); expected a complete .gz file") from None
            detail = _one_line(exc)
            if caught:
                detail += "; " + " ".join(str(caught[0].message).split())[:300]
            raise InputError(f"{path}: not a readable FITS file ({detail})") from None


# -- reading -------------------------------------------------------------------------------

def _locate(spec, hdu) -> tuple[Path, str, object]:
    path, bracket = split_hdu(spec)
    hdu = bracket if hdu is None else hdu
    check_file(path)
    fmt = file_format(path)
    if fmt == "npy" and hdu is not None:
        raise InputError(f"{path}: an HDU ({hdu!r}) was given but .npy files have none")
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
    shape, dtype, _ = _npy(path, None, False) if fmt == "npy" else _fits(path, hdu, None, False)
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
        shape, dtype, array = _npy(path, limit, True)
    else:
        shape, dtype, array = _fits(path, hdu, limit, True)
    _check_dtype(path, array.dtype)
    try:
        return np.asarray(array, dtype=array.dtype.newbyteorder("="))
    except MemoryError:
        raise _no_memory(path, shape, dtype) from None


# -- validation ------------------------------------------------------------------------------

def as_array(value, name, what: str) -> np.ndarray:
    """``np.asarray`` for validation: what cannot be a real-number array is an InputError."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nested sequences, odd objects
        raise InputError(f"{name}: {what} cannot be made into an array ({_one_line(exc)}); "
                         "expected an array of real numbers") from None
    _check_dtype(name, array.dtype)
    return array


def check_finite(array: np.ndarray, path, what: str) -> None:
    """Raise InputError naming the first image holding NaN or Inf."""
    finite = np.isfinite(array)
    if not finite.all():
        if array.ndim == 3:
            index = int(np.argmin(finite.reshape(array.shape[0], -1).all(axis=1)))
            raise InputError(f"{path}: {what} image {index} contains NaN or Inf")
        pixel = tuple(int(i) for i in np.unravel_index(np.argmin(finite), array.shape))
        raise InputError(f"{path}: {what} (one 2-D image) contains NaN or Inf, first at "
                         f"pixel {pixel}")


def _cast(array: np.ndarray, path, what: str, dtype) -> np.ndarray:
    """Cast a finite array to the working type, refusing values beyond its range."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(array, dtype=dtype)
    if out.dtype != array.dtype and not np.isfinite(out).all():
        stack = out if out.ndim == 3 else out[None]
        index = int(np.argmin(np.isfinite(stack).reshape(stack.shape[0], -1).all(axis=1)))
        where = f" image {index}" if out.ndim == 3 else ""
        largest = np.max(np.abs(array))
        raise InputError(f"{path}: {what}{where} has values beyond the {np.dtype(dtype).name} "
                         f"range (largest magnitude {largest:.6g}); expected |x| <= "
                         f"{np.finfo(dtype).max:.6g} (use a wider working dtype)")
    return out


def as_stack(array: np.ndarray, path, what: str, dtype=np.float64) -> np.ndarray:
    """Validate a 2-D or 3-D stack and return it as a 3-D array of ``dtype``."""
    _check_dtype(path, array.dtype)
    if array.ndim not in (2, 3):
        raise InputError(f"{path}: {what} has {array.ndim} dimensions, shape {array.shape}; "
                         "expected 2 (one image) or 3 (n, N0, N1)")
    if array.size == 0:
        raise InputError(f"{path}: {what} is empty, shape {array.shape}")
    check_finite(array, path, what)
    stack = array[None] if array.ndim == 2 else array
    return _cast(stack, path, what, dtype)


def validate_psfs(psfs: np.ndarray, n_images: int, stamp_shape, path, dtype=np.float64,
                  tolerance: float = PSF_SUM_TOLERANCE) -> np.ndarray:
    """Validate PSFs against the images: count, size, finiteness, not all zero.

    Warns (:class:`~galdecon.errors.GalDeconWarning`) when PSFs do not sum to 1 or have
    negative pixels (empirical PSFs may hold a little negative noise); both are used as
    given. Returns a 2-D array (one shared PSF) or a 3-D array with one PSF per image.
    """
    _check_dtype(path, psfs.dtype)
    if psfs.ndim not in (2, 3):
        raise InputError(f"{path}: PSFs have {psfs.ndim} dimensions, shape {psfs.shape}; "
                         "expected 2 (one PSF for all) or 3 (one PSF per image)")
    if psfs.size == 0:
        raise InputError(f"{path}: PSF array is empty, shape {psfs.shape}")
    if psfs.ndim == 3 and psfs.shape[0] != n_images:
        raise InputError(f"{path}: {psfs.shape[0]} PSFs for {n_images} images; expected "
                         "exactly one PSF per image (or a single 2-D PSF)")
    if psfs.shape[-2] > stamp_shape[0] or psfs.shape[-1] > stamp_shape[1]:
        raise InputError(f"{path}: PSF shape {psfs.shape[-2:]} is larger than the stamp "
                         f"{tuple(stamp_shape)}; expected PSFs no larger than the stamps")
    check_finite(psfs, path, "PSF")
    psfs = _cast(psfs, path, "PSF", dtype)
    flat = psfs.reshape(-1, psfs.shape[-2] * psfs.shape[-1])
    name = (lambda i: f"PSF {i}") if psfs.ndim == 3 else (lambda i: "the PSF (one for all)")
    zero = np.flatnonzero(~flat.any(axis=1))
    if zero.size:
        raise InputError(f"{path}: {name(int(zero[0]))} is all zeros ({zero.size} such "
                         "PSF(s)); expected a PSF with non-zero pixels summing to 1")
    minima = flat.min(axis=1)
    negative = np.flatnonzero(minima < 0)
    if negative.size:
        worst = int(np.argmin(minima))
        warnings.warn(f"{path}: {negative.size} PSF(s) have negative pixels (first: "
                      f"{name(int(negative[0]))}; most negative value {minima[worst]:.8g} in "
                      f"{name(worst)}); they are used as given, not clipped",
                      GalDeconWarning, stacklevel=2)
    warn_psf_sums(path, *psf_sum_outliers(psfs, tolerance))
    return psfs


def psf_sum_outliers(psfs: np.ndarray, tolerance: float = PSF_SUM_TOLERANCE,
                     start: int = 0) -> tuple[int, int, float]:
    """Count the PSFs (one (k0, k1) or a stack (m, k0, k1)) whose sum is not 1.

    Returns (how many differ from 1 by more than ``tolerance``, the first one's index plus
    ``start``, its sum); (0, -1, 1.0) when all sum to 1.
    """
    psfs = np.asarray(psfs, dtype=np.float64)
    sums = psfs.reshape(-1, psfs.shape[-2] * psfs.shape[-1]).sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > tolerance)
    if not bad.size:
        return 0, -1, 1.0
    return int(bad.size), start + int(bad[0]), float(sums[bad[0]])


def warn_psf_sums(path, count: int, first: int, value: float, stacklevel: int = 2) -> None:
    """The warning for ``count`` PSFs that do not sum to 1 (the first: ``first``, ``value``)."""
    if count:
        warnings.warn(f"{path}: {count} PSF(s) do not sum to 1 (first: PSF {first} sums "
                      f"to {value:.8g}); they are used as given, not renormalised",
                      GalDeconWarning, stacklevel=stacklevel + 1)


def validate_like(array: np.ndarray, images: np.ndarray, path, what: str,
                  dtype=np.float64) -> np.ndarray:
    """Validate an array that must have the images' shape (truth, initial primal)."""
    stack = as_stack(array, path, what, dtype)
    if stack.shape != images.shape:
        raise InputError(f"{path}: {what} shape {array.shape} does not match the images "
                         f"{images.shape}")
    return stack


def sha256(path) -> str:
    """Checksum of a file (for provenance in the run record)."""
    digest = hashlib.sha256()
    with open(split_hdu(path)[0], "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- writing -----------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_path(target: Path):
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates the file 0600; give the result the permissions of a normal file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        try:
            os.replace(tmp, target)
        except OSError as exc:  # e.g. the target is a directory
            raise OutputError(f"{target}: cannot be written ({exc.strerror or exc})") from None
        fsync_dir(target.parent)  # the rename itself survives a crash
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fsync_dir(path) -> None:
    """Flush a directory's entries to disk (where the platform allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_array(path: Path, array: np.ndarray, fmt: str, header: dict | None = None) -> Path:
    """Write an array atomically as ``.npy`` or FITS (primary HDU)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if fmt == "npy":
            with open(tmp, "wb") as handle:
                np.save(handle, np.asarray(array))
                handle.flush()
                os.fsync(handle.fileno())
        elif fmt == "fits":
            from astropy.io import fits

            hdu = fits.PrimaryHDU(np.asarray(array))
            for key, value in (header or {}).items():
                hdu.header[key] = value
            hdu.writeto(tmp, overwrite=True)
        else:
            raise OutputError(f"{path}: unknown output format {fmt!r}; expected one of "
                              f"{', '.join(OUTPUT_FORMATS)}")
    return path


def write_json(path: Path, data: dict) -> Path:
    """Write JSON atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=json_default) + "\n")
    return path


def json_default(value):
    """JSON for numpy scalars and arrays and paths (``json.dumps(..., default=...)``)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def output_paths(stem, fmt: str, plots: bool = True) -> dict[str, Path]:
    """The files a deconvolution writes for an output stem."""
    if fmt not in OUTPUT_FORMATS:
        raise OutputError(f"output format {fmt!r}: expected one of {', '.join(OUTPUT_FORMATS)}")
    if "\x00" in os.fspath(stem):
        raise OutputError(f"{os.fspath(stem)!r}: output stem contains a NUL byte; expected a "
                          "file name stem such as results/run")
    stem = Path(stem)
    if not stem.name:
        raise OutputError(f"{os.fspath(stem) or repr('')}: output stem has no file name; "
                          "expected a stem such as results/run")
    ext = ".npy" if fmt == "npy" else ".fits"
    paths = {
        "primal": stem.with_name(stem.name + "_primal" + ext),
        "dual": stem.with_name(stem.name + "_dual" + ext),
        "record": stem.with_name(stem.name + "_run.json"),
    }
    if plots:
        paths["plot"] = stem.with_name(stem.name + "_cost.png")
    return paths


def check_inputs_exist(inputs) -> None:
    """Fail early, before any output check or reading, when an input file is missing."""
    for spec in inputs:
        if spec is None:
            continue
        path = split_hdu(spec)[0]
        check_file(path)
        file_format(path)


def check_outputs(paths: dict[str, Path], inputs, overwrite: bool) -> None:
    """Refuse outputs that exist (unless ``overwrite``), that are inputs, or are unwritable.

    Checked before any computation, so a bad output path fails at once.
    """
    try:
        input_paths = [split_hdu(p)[0].resolve() for p in inputs if p is not None]
    except (OSError, ValueError, RuntimeError) as exc:  # checked as inputs before this
        raise OutputError(f"cannot compare the outputs with the inputs ({_one_line(exc)})"
                          ) from None
    for path in paths.values():
        try:
            _check_output(path, input_paths, overwrite)
        except (OSError, ValueError, RuntimeError) as exc:
            if isinstance(exc, OutputError):
                raise
            raise OutputError(f"{path}: not a usable output path ({_one_line(exc)})") from None


def _check_output(path: Path, input_paths, overwrite: bool) -> None:
    if "\x00" in os.fspath(path):
        raise OutputError(f"{os.fspath(path)!r}: output name contains a NUL byte")
    resolved = path.resolve()
    if resolved in input_paths or any(
            resolved.exists() and q.exists() and os.path.samefile(resolved, q)
            for q in input_paths):
        raise OutputError(f"{path}: output would overwrite an input file; choose another "
                          "output stem (-o)")
    parent = resolved.parent
    if not parent.is_dir():
        raise OutputError(f"{path}: output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{path}: output directory {parent} is not writable")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputError(f"{path}: exists; pass --overwrite to replace it")
