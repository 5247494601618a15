"""How many BLAS threads a piece of numerical work gets.

One policy for every engine, so that equal data give equal numbers: a multi-threaded BLAS
splits a product differently from a single-threaded one and rounds differently, and the
hard singular-value threshold can amplify such rounding over iterations.
"""

from __future__ import annotations

import contextlib

from threadpoolctl import ThreadpoolController

#: Below this side the driver-side factorisations of the low-rank step run single-threaded:
#: a few milliseconds of work, which BLAS threads only slow down (badly on a busy machine).
SMALL_GRAM = 256

_controller: ThreadpoolController | None = None


def blas_single_thread():
    """Context manager limiting BLAS to one thread (the library scan is done once)."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def blas_threads_for(matrix):
    """One BLAS thread for a matrix whose smaller side is at most :data:`SMALL_GRAM`."""
    return blas_single_thread() if min(matrix.shape) <= SMALL_GRAM else contextlib.nullcontext()
