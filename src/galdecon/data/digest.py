"""Digests: of a file, of an array, of a store chunk's raw little-endian bytes."""

from __future__ import annotations

import hashlib

import numpy as np

from galdecon.data.spec import split_hdu


def sha256(path) -> str:
    """Checksum of a file (for provenance in the run record)."""
    digest = hashlib.sha256()
    with open(split_hdu(path)[0], "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def array_digest(array: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and C-order bytes."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    flat = array.reshape(-1).view(np.uint8)
    step = 1 << 24
    for i in range(0, flat.size, step):
        digest.update(flat[i:i + step])
    return digest.hexdigest()


def chunk_sha256(data: np.ndarray) -> str:
    """SHA-256 of an array's raw little-endian C-order bytes (a store chunk's checksum)."""
    data = np.ascontiguousarray(data, dtype=np.dtype(data.dtype).newbyteorder("<"))
    return hashlib.sha256(data.reshape(-1).view(np.uint8).data).hexdigest()
