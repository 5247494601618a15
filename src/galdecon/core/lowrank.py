r"""The global low-rank step's reductions on any engine: TSQR factors, SVT, nuclear norm.

With :math:`M^T` the n × p matrix of one row per galaxy, every block contributes its rows
as an :class:`~galdecon.core.tsqr.RFactor`; the factors are merged over the blocks (one
``engine.reduce(..., tree=True)``, or inside the iteration's own map:
``engine.map_reduce``) and the final R, at most p × p, gives the singular values and right
singular vectors of the whole matrix to the accuracy of a Householder QR. Every engine then
calls the same :func:`~galdecon.core.operators.prox.svt_factors` and
:func:`~galdecon.core.operators.prox.nuclear_norm_of` on it.

One synchronisation per iteration carries a :class:`LowRankShare`: the fidelity part of
the cost, the factor of ỹ (for the threshold) and, on the iterations whose cost the
convergence test uses, the factor of the relaxed x (for the nuclear norm).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from galdecon.core.operators.prox import nuclear_norm_of, svt_factors
from galdecon.core.tsqr import RFactor, merge, tsqr_bytes


@dataclass
class LowRankShare:
    """What some blocks contribute to one low-rank synchronisation.

    Attributes
    ----------
    cost : float
        Their data-fidelity share of the cost at the relaxed x (NaN when not wanted).
    dual : RFactor
        The TSQR factor of their ỹ rows (the next threshold).
    primal : RFactor or None
        The factor of their relaxed x rows (the nuclear norm of the cost), when wanted.
    """

    cost: float
    dual: RFactor
    primal: RFactor | None = None


def share_of(block, cost: float, want_cost: bool) -> LowRankShare:
    """The share of a block that has just begun an iteration (``pending`` holds ỹ)."""
    primal = RFactor.of_rows(block.primal) if want_cost else None
    return LowRankShare(float(cost), RFactor.of_rows(block.pending), primal)


def combine_shares(first: LowRankShare, second: LowRankShare) -> LowRankShare:
    """The share of both (commutative up to rounding; the engines' tree combine)."""
    return LowRankShare(first.cost + second.cost, first.dual.merged(second.dual),
                        merge(first.primal, second.primal))


def fold_share(share: LowRankShare) -> LowRankShare:
    """The share of a group of blocks, its factors compacted there
    (:meth:`~galdecon.core.tsqr.RFactor.compacted`)."""
    primal = None if share.primal is None else share.primal.compacted()
    return LowRankShare(share.cost, share.dual.compacted(), primal)


def fold_factor(factor: RFactor) -> RFactor:
    """:meth:`RFactor.compacted` as a module-level function (it pickles by reference)."""
    return factor.compacted()


def block_factor(block, getter) -> RFactor:
    """The (lazy) TSQR factor of ``getter(block)``: one row per galaxy."""
    return RFactor.of_rows(getter(block))


def merge_factors(first: RFactor, second: RFactor) -> RFactor:
    """:meth:`RFactor.merged` as a module-level function (it pickles by reference)."""
    return first.merged(second)


def factor_of(engine, getter) -> RFactor:
    """The TSQR factor of the matrix with one row ``getter(block)[i]`` per galaxy.

    ``getter`` is module-level, so it pickles by reference. The engine folds the blocks as
    :meth:`~galdecon.engines.base.Engine.map_reduce` does, so a factor recomputed from
    saved blocks equals the one the iteration produced.
    """
    return engine.reduce(partial(block_factor, getter=getter), merge_factors, tree=True,
                         finish=fold_factor)


def low_rank_factors(engine, getter, threshold: float,
                     kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(basis, scale)`` of the global SVT of the matrix of ``getter(block)``."""
    return svt_factors(factor_of(engine, getter).matrix(), threshold, kind)


def nuclear_norm(engine, getter) -> float:
    """Return the nuclear norm of the matrix with one row ``getter(block)[i]`` per galaxy."""
    return nuclear_norm_of(factor_of(engine, getter).matrix())


def low_rank_bytes(n_images: int, n_pixels: int, groups: int = 1) -> int:
    """Bytes of one low-rank synchronisation at its peak (nothing is allocated).

    The TSQR folds of ỹ and x in ``groups`` (threads or Python workers,
    :func:`~galdecon.core.tsqr.tsqr_bytes`), then the SVD of the final factor on the
    driver: the factor, its vectors and LAPACK's work (min(n, p) × p each, float64).
    """
    n, p = int(n_images), int(n_pixels)
    return tsqr_bytes(n, p, groups) + 3 * min(n, p) * p * 8
