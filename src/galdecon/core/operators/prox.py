r"""Proximity operators: positivity, soft/hard thresholding, singular-value thresholding.

The singular-value threshold is built for the distributed, global low-rank step
(ALGORITHM.md §6): with :math:`M^T` the n × p matrix of one row per galaxy and :math:`R`
its TSQR factor (:mod:`galdecon.core.tsqr`), :math:`R = U_R \operatorname{diag}(s) V^T`
gives the singular values and right singular vectors of :math:`M^T` to the accuracy of a
Householder QR, and :math:`\mathrm{SVT}(M^T) = M^T V_k \operatorname{diag}(f(s)/s) V_k^T`
over the kept components. Only R factors (at most p × p) and the p × k factors cross
between blocks, never the stack, and no full-matrices SVD is ever formed.
"""

from __future__ import annotations

import numpy as np

from galdecon.core.operators.svd import leading_singular, singular_values
from galdecon.core.threads import blas_threads_for

THRESHOLD_TYPES = ("hard", "soft")


def positivity(x: np.ndarray) -> np.ndarray:
    """Project onto the non-negative orthant."""
    return np.maximum(x, 0)


def soft_threshold(x: np.ndarray, threshold) -> np.ndarray:
    r"""Return :math:`\mathrm{sign}(x)\,(|x| - t)_+`."""
    return np.sign(x) * np.maximum(np.abs(x) - threshold, 0)


def hard_threshold(x: np.ndarray, threshold) -> np.ndarray:
    """Return ``x`` where ``|x| >= t``, zero elsewhere."""
    return np.where(np.abs(x) >= threshold, x, 0)


def threshold_singular_values(values: np.ndarray, threshold: float, kind: str) -> np.ndarray:
    """Apply a hard or soft threshold to non-negative singular values."""
    if kind == "hard":
        return np.where(values >= threshold, values, 0.0)
    if kind == "soft":
        return np.maximum(values - threshold, 0.0)
    raise ValueError(f"threshold type must be one of {THRESHOLD_TYPES}, got {kind!r}")


def svt_factors(r: np.ndarray, threshold: float, kind: str = "hard",
                rcond: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    r"""Return ``(basis, scale)`` of the global SVT from the R factor of the matrix.

    Every engine calls this one function on the TSQR factor (:mod:`galdecon.core.tsqr`),
    so equal factors give equal results.

    Parameters
    ----------
    r : ndarray, shape (k, p)
        The R factor of :math:`M^T` (n × p, one row per galaxy): its singular values and
        right singular vectors are those of :math:`M^T`.
    threshold : float
        Singular-value threshold :math:`t`.
    kind : {'hard', 'soft'}
        Threshold type.
    rcond : float
        Components with :math:`s \le` ``rcond`` :math:`\cdot s_{max}` are treated as zero.

    Returns
    -------
    basis : ndarray, shape (p, k)
        Right singular vectors :math:`v_i` of the kept components.
    scale : ndarray, shape (k,)
        :math:`f(s_i)/s_i`; ``SVT(M) = basis @ (scale * (basis.T @ M))``, a rank-k update
        (:func:`apply_svt`).

    Notes
    -----
    BLAS threads follow :func:`galdecon.core.threads.blas_threads_for`, whichever engine
    calls, since thread counts change the rounding.
    """
    if kind not in THRESHOLD_TYPES:
        raise ValueError(f"threshold type must be one of {THRESHOLD_TYPES}, got {kind!r}")
    with blas_threads_for(r):
        values, vectors = leading_singular(r, threshold)
    smax = values.max(initial=0.0)
    shrunk = threshold_singular_values(values, threshold, kind)
    keep = (values > rcond * smax) & (shrunk > 0)
    return vectors[:, keep], shrunk[keep] / values[keep]


def nuclear_norm_of(r: np.ndarray) -> float:
    """Return the nuclear norm of a matrix from its R factor (the sum of singular values)."""
    with blas_threads_for(r):
        return float(singular_values(r).sum())


def apply_svt(block: np.ndarray, basis: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Apply the SVT (factors from :func:`svt_factors`) to a block of stamps: rank k."""
    flat = block.reshape(block.shape[0], -1)
    coeffs = flat @ basis.astype(block.dtype, copy=False)
    coeffs *= scale.astype(block.dtype, copy=False)
    return (coeffs @ basis.T.astype(block.dtype, copy=False)).reshape(block.shape)


def svt(matrix: np.ndarray, threshold: float, kind: str = "hard") -> np.ndarray:
    """Singular-value threshold of a 2-D matrix by a thin SVD (reference implementation)."""
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    return (u * threshold_singular_values(s, threshold, kind)) @ vt
