r"""Singular values and right singular vectors of an R factor (:mod:`galdecon.core.tsqr`).

:func:`singular_values` is LAPACK's SVD without vectors. :func:`leading_singular` gives the
singular triplets above a threshold, which is what the singular-value threshold needs, to
the accuracy of a full SVD (backward error :math:`O(\varepsilon \lVert R \rVert)`), but
without the cost of all p right singular vectors when only a few survive (a full p × p SVD
with vectors takes seconds at p = 1681; the kept components are a few dozen):

1. the eigenvectors of :math:`R^T R` whose eigenvalues may belong to singular values above
   c·t (:data:`MARGIN` c < 1) start a block of b vectors. The Gram squares the condition
   number, so these are only a starting guess; its count is reliable whenever its error
   bound (:func:`_gram_error`) is below the margin :math:`(1 - c^2) t^2`;
2. two-sided subspace iteration with R itself (:math:`U = \mathrm{orth}(RV)`,
   :math:`R^T U = W \Sigma Z^T`, V ← W) converges for every triplet with
   :math:`\sigma > t` at least as fast as :math:`(c)^2` per step (Saad's bound for the
   leading vectors of a block), and a Rayleigh–Ritz step from R keeps the accuracy of R;
3. it stops when every Ritz triplet above :data:`CHECKED` · t has a residual
   :math:`\lVert R w - \sigma u \rVert` at the rounding level of a product with R, so the
   triplets are exact for a matrix within that distance of R.

Whenever a condition fails (a threshold of 0, a small R, a block that is not small, a
Gram whose count could be wrong, no convergence) the full SVD is taken instead. Either
way the result is a deterministic function of R: equal factors give equal results.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from scipy.linalg import blas

#: Candidates: the Gram's eigenvalues that may belong to singular values above MARGIN · t.
MARGIN = 0.5
#: Ritz triplets from CHECKED · t up must have converged (a value above t is never below
#: this while its vector is near: the Ritz values approach the singular values from below).
CHECKED = 0.75
#: Below this smaller side, or with more candidates than this fraction of it, the full SVD
#: is faster than the iteration (p = 1,681, R full: 1.1-1.4 s at 340-390 candidates, 2.1 s
#: at 556, the full SVD 2.0-2.3 s).
FULL_BELOW = 400
FULL_FRACTION = 0.3
MAX_STEPS = 40
EPS = np.finfo(np.float64).eps


def singular_values(r: np.ndarray) -> np.ndarray:
    """All singular values of ``r``, descending (LAPACK ``gesdd``, no vectors)."""
    if 0 in r.shape:
        return np.zeros(0)
    return scipy.linalg.svd(r, compute_uv=False, check_finite=False)


def full_singular(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(s, v)``: every singular value (descending) and right singular vector (columns)."""
    if 0 in r.shape:
        return np.zeros(0), np.zeros((r.shape[1], 0))
    _, s, vt = scipy.linalg.svd(r, full_matrices=False, check_finite=False)
    return s, vt.T


def leading_singular(r: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """``(s, v)`` holding at least every singular triplet of ``r`` with s > ``threshold``.

    Parameters
    ----------
    r : ndarray, shape (k, p)
        An R factor (upper trapezoidal), float64.
    threshold : float
        The singular-value threshold t.

    Returns
    -------
    s : ndarray, shape (b,)
        Singular values, descending: all those above t, possibly some below.
    v : ndarray, shape (p, b)
        The corresponding right singular vectors (orthonormal columns).
    """
    k, p = r.shape
    if not threshold > 0 or min(k, p) < FULL_BELOW:
        return full_singular(r)
    found = _subspace_iteration(r, float(threshold))
    return found if found is not None else full_singular(r)


def _gram_error(r: np.ndarray) -> float:
    """A bound on the eigenvalue errors of the computed Gram of ``r`` (rounding of the
    product and of the eigensolver, both below a small multiple of p·ε·‖R‖_F²)."""
    return 8.0 * max(r.shape) * EPS * float(np.sum(r * r))


def _start_block(r: np.ndarray, floor: float) -> np.ndarray:
    """Orthonormal right vectors of the Gram's eigenvalues above ``floor`` (p × b)."""
    k, p = r.shape
    rows = k < p  # the smaller Gram: R Rᵀ (k × k) when R is wide, else Rᵀ R (p × p)
    # syrk computes one triangle (the lower, which eigh reads): half a general product.
    gram = blas.dsyrk(1.0, r, trans=0 if rows else 1, lower=1)
    _, vectors = scipy.linalg.eigh(gram, lower=True, driver="evr", check_finite=False,
                                   subset_by_value=(floor, np.inf))
    if rows:  # left vectors: the right ones are orth(Rᵀ U)
        vectors = np.linalg.qr(r.T @ vectors)[0]
    return vectors


def _subspace_iteration(r: np.ndarray, threshold: float):
    """The triplets above ``threshold``, or None where the full SVD must decide."""
    k, p = r.shape
    margin = (1.0 - MARGIN**2) * threshold**2
    error = _gram_error(r)
    if error >= 0.5 * margin:  # the Gram cannot tell which values exceed t
        return None
    v = _start_block(r, (MARGIN * threshold) ** 2 - error)
    b = v.shape[1]
    if b == 0:  # every singular value is below c·t (the Gram's error is below the margin)
        return np.zeros(0), np.zeros((p, 0))
    if b > FULL_FRACTION * min(k, p):
        return None
    rv = r @ v
    for _ in range(MAX_STEPS):
        u = np.linalg.qr(rv)[0]
        w, sigma, zt = np.linalg.svd(r.T @ u, full_matrices=False)
        rv = r @ w  # R W = U Z Σ exactly when the block holds the triplets
        checked = sigma >= CHECKED * threshold
        residual = rv[:, checked] - (u @ zt.T[:, checked]) * sigma[checked]
        if np.all(np.linalg.norm(residual, axis=0) <= _tolerance(r, sigma)):
            return sigma, w
    return None


def _tolerance(r: np.ndarray, sigma: np.ndarray) -> float:
    """Residual of a converged triplet: the rounding of a product with R, a few times over."""
    largest = float(sigma[0]) if sigma.size else 0.0
    return 32.0 * np.sqrt(max(r.shape)) * EPS * largest
