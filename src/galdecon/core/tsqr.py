r"""Tall-skinny QR (TSQR): the R factor of a matrix whose rows are spread over blocks.

The low-rank step needs the singular values and right singular vectors of the n × p matrix
:math:`A = M^T` (one row per galaxy). Its Gram :math:`A^T A` squares the condition number,
so a singular value :math:`s` comes out with an error of :math:`\varepsilon s_{max}^2/s`
instead of :math:`\varepsilon s_{max}`. TSQR keeps the accuracy of a Householder QR
(Demmel, Grigori, Hoemmen & Langou 2012; Benson, Gleich & Demmel 2013): every block's rows
are QR-factored, the R factors are stacked and factored again, up a tree, and the final
:math:`R` (at most p × p) satisfies :math:`A = QR` for an orthonormal :math:`Q` that is
never formed — :math:`R` has the singular values and right singular vectors of :math:`A`.

:class:`RFactor` is the value reduced over the blocks. Rows are added lazily (kept as they
are, views of the blocks' arrays) and folded in by one Householder QR of ``[R; rows]`` once
:data:`FLUSH_FACTOR` · p of them wait, so that a group of blocks costs about one QR of all
its rows (2mp² flops, LAPACK ``geqrf``) instead of one per block. Two full p × p triangles
merge by LAPACK's triangular-pentagonal QR (``tpqrt``, (2/3)p³ flops). Pickled (a Spark
partition's share), a factor is folded first and only its upper triangle travels, as raw
float64.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg.lapack as lapack

from galdecon.core.threads import blas_single_thread

#: Rows waiting to be folded, in units of p, before one QR folds them in: 3p rows of
#: 41×41 stamps is 68 MB, and a group of up to ~5,000 galaxies costs a single QR.
FLUSH_FACTOR = 3
#: Block size of the triangular-pentagonal QR that merges two triangles (fastest of 32,
#: 64, 128 measured at p = 1681).
TPQRT_BLOCK = 64


def qr_r(rows: np.ndarray) -> np.ndarray:
    """The upper-trapezoidal R factor, min(m, p) × p, of an m × p matrix (float64).

    numpy's reduced QR (LAPACK ``geqrf``; it releases the GIL, so the local engine's threads
    factor in parallel).
    """
    rows = np.asarray(rows, dtype=np.float64)
    if rows.shape[0] == 0:
        return np.zeros((0, rows.shape[1]))
    return np.linalg.qr(rows, mode="r")


def merge_r(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The R factor of two stacked R factors (upper trapezoidal, p columns each)."""
    p = first.shape[1]
    if first.shape[0] < second.shape[0]:
        first, second = second, first
    if first.shape[0] == p and second.shape[0] > 0:
        # [A; B] with A p × p upper triangular and B the first rows of another triangle:
        # tpqrt uses both structures (l = rows of B that are upper trapezoidal). One BLAS
        # thread: its panels are narrow, and two threads took 5 to 20 times as long.
        with blas_single_thread():
            a, _, _, info = lapack.dtpqrt(second.shape[0], min(TPQRT_BLOCK, p), first,
                                          second)
        if info != 0:  # pragma: no cover - LAPACK argument errors only
            raise ValueError(f"dtpqrt failed (info={info})")
        return np.triu(a)
    return qr_r(np.concatenate([first, second], axis=0))


class RFactor:
    """The TSQR value of some rows of an n × p matrix: a folded R and rows not yet folded.

    Parameters
    ----------
    p : int
        Columns.
    r : ndarray or None
        The folded part: upper trapezoidal, at most p × p, float64.
    rows : list of ndarray
        Rows waiting to be folded (any real dtype; views are kept, never written).
    """

    __slots__ = ("p", "r", "rows")

    def __init__(self, p: int, r: np.ndarray | None = None, rows: list | None = None):
        self.p = int(p)
        self.r = r
        self.rows = list(rows or [])

    @classmethod
    def of_rows(cls, rows: np.ndarray) -> RFactor:
        """The factor of ``rows`` (m × p, or m stamps: flattened), nothing computed yet."""
        rows = rows.reshape(rows.shape[0], -1)
        return cls(rows.shape[1], None, [rows])

    @property
    def waiting(self) -> int:
        """Rows not yet folded."""
        return sum(block.shape[0] for block in self.rows)

    def merged(self, other: RFactor) -> RFactor:
        """The factor of the rows of both (neither is changed)."""
        if other.p != self.p:
            raise ValueError(f"R factors of {self.p} and {other.p} columns")
        if self.r is not None and other.r is not None:
            r = merge_r(self.r, other.r)
        else:
            r = self.r if self.r is not None else other.r
        out = RFactor(self.p, r, self.rows + other.rows)
        return out.folded() if out.waiting >= FLUSH_FACTOR * self.p else out

    def folded(self) -> RFactor:
        """The same factor with every waiting row folded into R (by one QR)."""
        if not self.rows:
            return self
        parts = ([] if self.r is None else [self.r]) + self.rows
        return RFactor(self.p, qr_r(np.concatenate(parts, axis=0, dtype=np.float64)))

    def compacted(self) -> RFactor:
        """:meth:`folded` if at least p rows wait (the triangle is then smaller), else self.

        Applied where a group of blocks was combined, so that the group's rows are folded
        in parallel with the other groups' rather than all at the end.
        """
        return self.folded() if self.waiting >= self.p else self

    def triangle(self) -> np.ndarray:
        """The final R: upper trapezoidal, min(rows, p) × p, float64."""
        r = self.folded().r
        return np.zeros((0, self.p)) if r is None else r

    def matrix(self) -> np.ndarray:
        """A matrix with the singular values and right singular vectors of the rows.

        The rows themselves while none was folded and they are fewer than p (an R factor
        would be as large, and the QR only a cost), else :meth:`triangle`.
        """
        if self.r is None and 0 < self.waiting < self.p:
            return np.concatenate(self.rows, axis=0, dtype=np.float64)
        return self.triangle()

    def __getstate__(self):
        r = self.triangle()
        return {"p": self.p, "k": r.shape[0], "upper": pack_upper(r)}

    def __setstate__(self, state):
        self.p = int(state["p"])
        self.r = unpack_upper(state["upper"], int(state["k"]), self.p)
        self.rows = []


def merge(first: RFactor | None, second: RFactor | None) -> RFactor | None:
    """:meth:`RFactor.merged`, with None for "no rows" (the costs' iterations only)."""
    if first is None or second is None:
        return first if second is None else second
    return first.merged(second)


def _upper_mask(k: int, p: int) -> np.ndarray:
    return np.triu(np.ones((k, p), dtype=bool))


def pack_upper(r: np.ndarray) -> np.ndarray:
    """The elements on and above the diagonal of a k × p matrix, row by row (float64)."""
    return np.ascontiguousarray(r[_upper_mask(*r.shape)], dtype=np.float64)


def unpack_upper(values: np.ndarray, k: int, p: int) -> np.ndarray:
    """The k × p upper-trapezoidal matrix of :func:`pack_upper`'s ``values``."""
    out = np.zeros((k, p))
    out[_upper_mask(k, p)] = values
    return out


def tsqr_bytes(n_rows: int, p: int, groups: int = 1) -> int:
    """Peak bytes of folding two factors of ``n_rows`` rows in ``groups`` (float64).

    Rows wait as views (no copy). A fold stacks at most (FLUSH_FACTOR + 1)·p rows and numpy
    copies them; groups of at least FLUSH_FACTOR·p rows fold in parallel, each keeping its
    two R factors; smaller ones are folded once, at the end (n < p: the rows are only
    joined, :meth:`RFactor.matrix`).
    """
    n, p, groups = int(n_rows), int(p), max(1, int(groups))
    at_once = (FLUSH_FACTOR + 1) * p
    per_group = -(-n // groups)
    if per_group >= FLUSH_FACTOR * p:
        return groups * (2 * min(per_group, at_once) * p * 8 + 2 * p * p * 8)
    return (2 if n >= p else 1) * min(n, at_once) * p * 8
