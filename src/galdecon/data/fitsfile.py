"""FITS image HDUs read header first: BITPIX, NAXISn and the data promised, checked.

astropy reads the pixels; this module checks its headers first, because astropy alone
allocates what a header promises and returns short or wrong data from some damaged files.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import warnings
import zlib
from io import BytesIO
from pathlib import Path
from typing import NamedTuple

import numpy as np

from galdecon.data.files import GZIP_MAGIC, check_size_limit, one_line, open_input, shape_text
from galdecon.data.memory import available_bytes, format_bytes
from galdecon.errors import ConfigError, GalDeconError, InputError

#: FITS BITPIX values and the types they hold (big-endian on disk).
FITS_BITPIX = {8: np.dtype("u1"), 16: np.dtype("i2"), 32: np.dtype("i4"), 64: np.dtype("i8"),
               -32: np.dtype("f4"), -64: np.dtype("f8")}
GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def fits_shape(unit, path, index) -> tuple[int, ...]:
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


def fits_dtype(unit, path, index) -> tuple[np.dtype, int]:
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


def hdu_list(hdul) -> str:
    """A one-line description of every HDU: index, name, what it holds."""
    items = []
    try:
        for i, unit in enumerate(hdul):
            if unit.is_image:
                try:
                    shape = fits_shape(unit, "", i)
                    kind = f"image {shape_text(shape)}" if shape else "no data"
                except InputError:
                    kind = "damaged header"
            else:
                kind = f"table ({type(unit).__name__})"
            items.append(f"{i} {unit.name or '(unnamed)'}: {kind}")
    except Exception as exc:  # noqa: BLE001 - a damaged HDU further on ends the list
        items.append(f"then unreadable ({one_line(exc)})")
    return "; ".join(items)


def pick_hdu(hdul, hdu, path) -> tuple[int, object, tuple]:
    """Return (index, HDU, shape) of the image HDU asked for (default: the first ≥ 2-D)."""
    if hdu is None:
        for index, unit in enumerate(hdul):
            if unit.is_image:
                shape = fits_shape(unit, path, index)
                if len(shape) >= 2:
                    return index, unit, shape
        raise InputError(f"{path}: no image HDU with 2-D or 3-D data; expected an image HDU "
                         f"(HDUs: {hdu_list(hdul)})")
    try:
        unit = hdul[hdu]
    except (KeyError, IndexError):
        raise InputError(f"{path}: no HDU {hdu!r} (HDUs: {hdu_list(hdul)})") from None
    index = hdul.index(unit)
    if not unit.is_image:
        raise InputError(f"{path}: HDU {hdu!r} is a table ({type(unit).__name__}), not an "
                         f"image; expected an image HDU (HDUs: {hdu_list(hdul)})")
    shape = fits_shape(unit, path, index)
    if not shape:
        raise InputError(f"{path}: HDU {hdu!r} holds no image data (NAXIS = 0); expected an "
                         f"image HDU (HDUs: {hdu_list(hdul)})")
    return index, unit, shape


def gunzip(path: Path, limit) -> BytesIO:
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
    except (OSError, *GZIP_ERRORS) as exc:
        raise InputError(f"{path}: gzip data is truncated or corrupt ({one_line(exc)}); "
                         "expected a complete .gz file") from None
    buffer.seek(0)
    return buffer


class FitsImage(NamedTuple):
    """An image HDU picked and checked from its header: where it is and what it holds."""

    index: int
    unit: object
    shape: tuple
    dtype: np.dtype
    bitpix: int


def is_gzipped(path: Path) -> bool:
    """Whether a file starts with the gzip magic bytes."""
    with open_input(path) as handle:
        return handle.read(2) == GZIP_MAGIC


def data_size(path: Path) -> int | None:
    """Bytes astropy reads a plain FITS file from: its size; None for a packed file."""
    with open_input(path) as handle:
        magic = handle.read(4)
    # astropy also opens gzip, bzip2 and zip files, whose size says nothing of the data's.
    if magic.startswith((GZIP_MAGIC, b"BZh", b"PK\x03\x04")):
        return None
    return os.path.getsize(path)


def check_image(hdul, hdu, path, size: int | None) -> FitsImage:
    """Pick the image HDU (:func:`pick_hdu`), read its type, refuse it if truncated.

    ``size`` is the number of bytes the file holds (None when unknown: compressed).
    """
    from astropy.io import fits

    index, unit, shape = pick_hdu(hdul, hdu, path)
    dtype, bitpix = fits_dtype(unit, path, index)
    if size is not None and not isinstance(unit, fits.CompImageHDU):
        offset = hdul.fileinfo(index)["datLoc"]
        promised = math.prod(shape) * abs(bitpix) // 8
        if offset + promised > size:
            raise InputError(
                f"{path}: truncated: HDU {index} promises a {shape_text(shape)} "
                f"array of BITPIX {bitpix} ({promised:,} bytes from byte {offset:,}) "
                f"but the file ends at byte {size:,}")
    return FitsImage(index, unit, shape, dtype, bitpix)


@contextlib.contextmanager
def fits_errors(path, gzipped: bool):
    """Turn what astropy raises on a damaged file into one-line errors naming the file.

    astropy's warnings (truncation, unparsable cards) are quoted in the error, never
    printed.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except GalDeconError:
            raise
        except MemoryError:
            raise ConfigError(f"{path}: not enough memory to read it; this machine has "
                              f"{format_bytes(available_bytes())} available") from None
        except Exception as exc:  # noqa: BLE001 - astropy fails in many ways on damaged files
            if gzipped and isinstance(exc, GZIP_ERRORS):
                raise InputError(f"{path}: gzip data is truncated or corrupt "
                                 f"({one_line(exc)}); expected a complete .gz file") from None
            detail = one_line(exc)
            if caught:
                detail += "; " + " ".join(str(caught[0].message).split())[:300]
            raise InputError(f"{path}: not a readable FITS file ({detail})") from None


def read_fits(path: Path, hdu, limit, load: bool):
    """Read the header (and the data, if ``load``) of a FITS image HDU, all checked."""
    from astropy.io import fits

    gzipped = is_gzipped(path)
    with contextlib.ExitStack() as stack, fits_errors(path, gzipped):
        if not gzipped:
            source, size = path, data_size(path)
        elif load:
            source = gunzip(path, limit)
            size = source.getbuffer().nbytes
        else:  # the header only: decompress no further than astropy reads
            source = stack.enter_context(gzip.open(path, "rb"))
            size = None
        hdul = stack.enter_context(fits.open(source, memmap=False))
        image = check_image(hdul, hdu, path, size)
        shape, dtype = image.shape, image.dtype
        if not load:
            return shape, dtype, None
        check_size_limit(path, shape, dtype, limit)
        if math.prod(shape) == 0:
            return shape, dtype, np.zeros(shape, dtype=dtype)
        data = image.unit.data
        if data is None or tuple(data.shape) != shape:
            raise InputError(f"{path}: HDU {image.index} data could not be read as its "
                             f"header describes ({shape_text(shape)})")
        return shape, dtype, np.array(data)
