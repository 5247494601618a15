"""Per-thread scratch arrays reused from call to call, and an in-place ``z += a·w``.

On 41×41 stamps a fresh megabyte-sized temporary costs about as much in page faults as
the arithmetic done on it, so the sparse loop works in buffers that only grow.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from scipy.linalg import blas

_scratch = threading.local()


def scratch(name: str, shape, dtype) -> np.ndarray:
    """Return this thread's reusable array ``name`` with the given shape and dtype.

    The buffer only grows; callers get a C-contiguous prefix view. Contents are undefined.
    Each name is one role, so no two live arrays of one iteration share memory.
    """
    arrays = getattr(_scratch, "arrays", None)
    if arrays is None:
        arrays = _scratch.arrays = {}
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    buffer = arrays.get(name)
    if buffer is None or buffer.dtype != dtype or buffer.size < size:
        buffer = arrays[name] = np.empty(size, dtype=dtype)
    return buffer[:size].reshape(shape)


def add_scaled(target: np.ndarray, values: np.ndarray, scale: float) -> None:
    """``target += scale * values`` in one pass (BLAS axpy); both C-contiguous, one dtype."""
    flat = target.reshape(-1)
    if flat.dtype.kind == "c":
        flat, values = flat.view(flat.real.dtype), values.view(flat.real.dtype)
    axpy = blas.daxpy if flat.dtype == np.float64 else blas.saxpy
    out = axpy(values.reshape(-1), flat, a=scale)
    if out is not flat:  # pragma: no cover - f2py copies only non-contiguous input
        np.copyto(flat, out)
