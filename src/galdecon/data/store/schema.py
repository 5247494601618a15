"""The store format: its names and constants, how an array is laid out in Zarr."""

from __future__ import annotations

import re

import numpy as np

from galdecon.errors import ConfigError

FORMAT = "galdecon-stack"
FORMAT_VERSION = 1
MANIFEST = "galdecon.json"
DEFAULT_CHUNK = 1024
KNOWN_ARRAYS = ("images", "psfs", "truth", "primal", "dual")
COMPRESSIONS = ("zstd", "none")
INSTALL_HINT = "pip install 'galdecon[chunked]'"
ZARR_FORMAT = 2
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
RESERVED = {MANIFEST, ".zgroup", ".zattrs", ".zarray", "zarr.json"}
# Dimensions of the arrays with a fixed meaning (3 = (n, N0, N1)).
NDIM = {"images": (3,), "truth": (3,), "primal": (3,), "psfs": (2, 3)}
DTYPE_KINDS = "biufc"


def _little(dtype: np.dtype) -> np.dtype:
    return np.dtype(dtype).newbyteorder("<")


def check_store_dtype(dtype, what: str) -> np.dtype:
    """Refuse a dtype a store cannot hold; return it little-endian."""
    dtype = np.dtype(dtype)
    if dtype.names is not None:
        if dtype.hasobject or any(dtype.fields[f][0].base.kind not in DTYPE_KINDS
                                  for f in dtype.names):
            raise ConfigError(f"{what}: structured dtype {dtype} has non-numeric fields; "
                              "only numbers (and records of numbers) are stored")
        return _little(dtype)
    if dtype.kind not in DTYPE_KINDS or dtype.subdtype is not None:
        raise ConfigError(f"{what}: data type {dtype} is not supported; expected numbers "
                          "(bool, integer, float or complex) or records of numbers")
    return _little(dtype)


def bounds(n: int, chunk: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of chunks of ``chunk`` galaxies along ``n``."""
    return [(a, min(a + chunk, n)) for a in range(0, n, chunk)]


def storage_layout(spec: dict) -> tuple[tuple, np.dtype]:
    """Shape and dtype of the Zarr array holding an array of ``spec``."""
    dtype = np.lib.format.descr_to_dtype(spec["dtype"])
    shape = tuple(spec["shape"])
    if spec["storage"] == "records":
        return shape + (dtype.itemsize,), np.dtype(np.uint8)
    return shape, dtype


def to_storage(data: np.ndarray, spec: dict) -> np.ndarray:
    """An array as the Zarr array stores it (records as raw bytes)."""
    if spec["storage"] == "records":
        data = np.ascontiguousarray(data)
        return data.reshape(-1).view(np.uint8).reshape(data.shape + (data.dtype.itemsize,))
    return data


def from_storage(raw: np.ndarray, spec: dict) -> np.ndarray:
    """An array read from Zarr, in the dtype of ``spec``."""
    dtype = np.lib.format.descr_to_dtype(spec["dtype"])
    if spec["storage"] == "records":
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        return raw.reshape(-1).view(dtype).reshape(raw.shape[:-1])
    return np.asarray(raw, dtype=dtype)
