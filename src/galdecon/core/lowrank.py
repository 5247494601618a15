r"""The global low-rank step's reductions: SVT factors and the nuclear norm, on any engine.

With :math:`M` the :math:`p \times n` matrix of one column per galaxy, every engine hands
:func:`~galdecon.core.operators.prox.svt_factors` the same exact form of the data
(:func:`~galdecon.core.operators.prox.low_rank_form`): the rows :math:`M^T` joined in
galaxy order when n < p, else :math:`G = M M^T` as the sum of the blocks' Grams. Both are
one ``engine.reduce``; the Gram sum asks for a tree (a distributed engine then adds the
p × p matrices among its workers instead of on the driver).
"""

from __future__ import annotations

import operator
from functools import partial

import numpy as np

from galdecon.core.operators.prox import gram, low_rank_form, nuclear_norm_of, svt_factors


def block_rows(block, getter) -> list:
    """``[Mᵀ rows of one block]``: ``getter(block)``, one row per galaxy (a view)."""
    # Left in the working dtype: the join casts to float64 once, without block copies.
    return [getter(block).reshape(block.size, -1)]


def block_gram(block, getter) -> np.ndarray:
    """The p × p Gram of one block's ``getter(block)`` (float64)."""
    return gram(getter(block))


def low_rank_data(engine, getter, n_images: int, n_pixels: int) -> tuple[str, np.ndarray]:
    """Return ``(form, matrix)``: the exact form of the data for :func:`svt_factors`.

    Parameters
    ----------
    engine : Engine
        Holds the blocks; only its ``reduce`` is used.
    getter : callable
        ``getter(block)`` is the block's (m, N0, N1) share of the matrix (module-level, so
        it pickles by reference).
    n_images, n_pixels : int
        The matrix's n (galaxies) and p (pixels per galaxy).
    """
    if low_rank_form(int(n_images), int(n_pixels)) == "rows":
        rows = engine.reduce(partial(block_rows, getter=getter), operator.add)
        return "rows", np.concatenate(rows, axis=0, dtype=np.float64)
    return "gram", engine.reduce(partial(block_gram, getter=getter), operator.add, tree=True)


def low_rank_factors(engine, getter, n_images: int, n_pixels: int, threshold: float,
                     kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(basis, scale)`` of the global SVT of the matrix of ``getter(block)``."""
    return svt_factors(*low_rank_data(engine, getter, n_images, n_pixels), threshold, kind)


def nuclear_norm(engine, getter, n_images: int, n_pixels: int) -> float:
    """Return the nuclear norm of the matrix with one column ``getter(block)[i]`` per galaxy."""
    return nuclear_norm_of(*low_rank_data(engine, getter, n_images, n_pixels))


def low_rank_bytes(n_images: int, n_pixels: int) -> int:
    """Bytes of one low-rank reduction at its peak (nothing is allocated).

    The n × p float64 rows, plus the n × n or p × p Gram and its eigen-decomposition
    (:func:`~galdecon.core.operators.prox.low_rank_form`). In the Gram form the rows are
    never joined, so this bounds the blocks' Grams in flight from above.
    """
    n, p = int(n_images), int(n_pixels)
    gram_size = n * n if low_rank_form(n, p) == "rows" else p * p
    return n * p * 8 + 2 * gram_size * 8

