"""``.npy`` files read header first: the header parsed as a literal and checked against the file.

Why not ``numpy.load`` alone: it allocates what a (possibly crafted) header promises and
may unpickle; parsing the header first refuses a bad file before any allocation.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from galdecon.data.files import (
    NPY_MAGIC,
    check_dtype,
    check_size_limit,
    no_memory,
    one_line,
    open_input,
    shape_text,
)
from galdecon.errors import InputError


class NpyHeader(NamedTuple):
    """What a ``.npy`` header says: the array's shape and type, where its data start."""

    shape: tuple
    dtype: np.dtype
    offset: int
    fortran_order: bool


def read_npy_header(handle, path, numbers_only: bool = True) -> NpyHeader:
    """Parse and check a .npy header; return (shape, dtype, data offset, Fortran order).

    The header is a Python literal read by numpy's parser (``ast.literal_eval``): nothing
    in it is executed, and an object (pickled) type is refused before any data is read.
    ``numbers_only`` also refuses what is not plain real numbers (records, complex, bool);
    a conversion copies those as they are.
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
        shape, fortran, dtype = readers[version](handle)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged header may fail in many ways
        raise InputError(f"{path}: damaged .npy header ({one_line(exc)}); expected a "
                         "header written by numpy.save") from None
    if any(isinstance(s, bool) or s < 0 for s in shape):
        raise InputError(f"{path}: damaged .npy header (shape {shape}); expected sizes >= 0")
    if numbers_only or dtype.hasobject:
        check_dtype(path, dtype)
    return NpyHeader(tuple(int(s) for s in shape), dtype, handle.tell(), bool(fortran))


def check_npy_length(path, shape, dtype, offset: int, file_size: int) -> None:
    """Refuse a file that holds fewer or more data bytes than its header promises."""
    expected = math.prod(shape) * dtype.itemsize
    held = file_size - offset
    if held < expected:
        raise InputError(f"{path}: truncated: its header promises a {shape_text(shape)} "
                         f"{dtype.name} array ({expected:,} bytes of data) but the file holds "
                         f"only {held:,} bytes after the {offset}-byte header")
    if held > expected:
        raise InputError(f"{path}: {held - expected:,} unexpected bytes after the "
                         f"{shape_text(shape)} {dtype.name} array its header describes; "
                         f"expected exactly {expected:,} bytes of data (a damaged or "
                         "concatenated file)")


def read_npy(path: Path, limit, load: bool):
    """Check a ``.npy`` file's header and size; return (shape, dtype, the array if ``load``)."""
    with open_input(path) as handle:
        shape, dtype, offset, _ = read_npy_header(handle, path)
        check_npy_length(path, shape, dtype, offset, os.fstat(handle.fileno()).st_size)
        if not load:
            return shape, dtype, None
        check_size_limit(path, shape, dtype, limit)
        if math.prod(shape) == 0:
            return shape, dtype, np.zeros(shape, dtype=dtype)
        handle.seek(0)
        try:
            array = np.lib.format.read_array(handle, allow_pickle=False)
        except MemoryError:
            raise no_memory(path, shape, dtype) from None
        except (ValueError, OSError, EOFError) as exc:  # e.g. the file changed meanwhile
            raise InputError(f"{path}: not a readable .npy array ({one_line(exc)})") from None
    if array.shape != shape or array.dtype != dtype:
        raise InputError(f"{path}: not a readable .npy array (read {array.shape} "
                         f"{array.dtype}, its header says {shape} {dtype})")
    return shape, dtype, array

