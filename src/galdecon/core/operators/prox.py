r"""Proximity operators: positivity, soft/hard thresholding, singular-value thresholding.

The singular-value threshold is built for the distributed, global low-rank step
(ALGORITHM.md §6): with :math:`M` the :math:`p \times n` matrix of one column per galaxy,
:math:`G = M M^T = U \operatorname{diag}(e) U^T`, :math:`s = \sqrt{e}`, and
:math:`\mathrm{SVT}(M) = P M` with :math:`P = U \operatorname{diag}(f(s)/s) U^T` over the
kept components. Only :math:`G` (a sum over galaxies) and :math:`P` (broadcast) cross
between blocks, never the stack, and no full-matrices SVD is ever formed.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from scipy.linalg import blas

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


def gram(block: np.ndarray) -> np.ndarray:
    r"""Return :math:`\sum_i \mathrm{vec}(x_i)\mathrm{vec}(x_i)^T` for a block, in float64."""
    flat = np.asarray(block, dtype=np.float64).reshape(block.shape[0], -1)
    return _syrk(flat, rows_gram=False)


def smaller_gram(rows: np.ndarray) -> np.ndarray:
    """Return ``rows @ rows.T`` or ``rows.T @ rows``, whichever is smaller (float64)."""
    rows = np.asarray(rows, dtype=np.float64)
    return _syrk(rows, rows_gram=rows.shape[0] < rows.shape[1])


def _syrk(rows: np.ndarray, rows_gram: bool) -> np.ndarray:
    """``rows @ rows.T`` (``rows_gram``) or ``rows.T @ rows`` by a symmetric rank-k update.

    BLAS syrk computes one triangle, half the work of a general product; the other
    triangle is mirrored so the result is an ordinary symmetric matrix.
    """
    rows = np.ascontiguousarray(rows, dtype=np.float64)
    # rows.T is Fortran-ordered, so syrk reads it in place; trans=1 gives AᵀA of A = rows.T.
    result = blas.dsyrk(1.0, rows.T, trans=1 if rows_gram else 0, lower=1)
    upper = np.triu_indices(result.shape[0], 1)
    result[upper] = result.T[upper]
    return result


def singular_values_from_gram(gram_matrix: np.ndarray) -> np.ndarray:
    """Return the singular values of ``M`` given ``G = M M^T`` (descending)."""
    eig = np.linalg.eigvalsh(gram_matrix)
    return np.sqrt(np.maximum(eig[::-1], 0.0))


def nuclear_norm_from_gram(gram_matrix: np.ndarray) -> float:
    """Return the nuclear norm of ``M`` from ``G = M M^T``."""
    return float(singular_values_from_gram(gram_matrix).sum())


def svt_projector(gram_matrix: np.ndarray, threshold: float, kind: str = "hard",
                  rcond: float = 1e-12) -> tuple[np.ndarray, np.ndarray, int]:
    r"""Return the factors of the projector that applies SVT from the left.

    Parameters
    ----------
    gram_matrix : ndarray, shape (p, p)
        :math:`G = M M^T`.
    threshold : float
        Singular-value threshold :math:`t`.
    kind : {'hard', 'soft'}
        Threshold type.
    rcond : float
        Components with :math:`s \le` ``rcond`` :math:`\cdot s_{max}` are treated as zero.

    Returns
    -------
    basis : ndarray, shape (p, k)
        Left singular vectors of the kept components.
    scale : ndarray, shape (k,)
        :math:`f(s)/s` for those components; ``SVT(M) = basis @ (scale * (basis.T @ M))``.
    rank : int
        Number of kept components ``k``.
    """
    eig, vectors = np.linalg.eigh(gram_matrix)
    values = np.sqrt(np.maximum(eig, 0.0))
    smax = values.max(initial=0.0)
    shrunk = threshold_singular_values(values, threshold, kind)
    keep = (values > rcond * smax) & (shrunk > 0)
    scale = shrunk[keep] / values[keep]
    return vectors[:, keep], scale, int(keep.sum())


def kept_eigenpairs(gram_matrix: np.ndarray, threshold: float, kind: str = "hard",
                    rcond: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(basis, scale)`` exactly as :func:`svt_projector` does, faster.

    Only eigenpairs that can survive the threshold (eigenvalue near or above ``t²``) are
    computed (LAPACK ``syevr`` on a value range): the singular-value threshold keeps few
    components, and computing all 1681 eigenvectors of a p × p Gram costs several times
    more than the tridiagonal reduction both share. The keep test on the returned values is
    :func:`svt_projector`'s own; the range starts a margin below ``t²`` so that it decides.
    """
    if not threshold > 0:
        basis, scale, _ = svt_projector(gram_matrix, threshold, kind, rcond)
        return basis, scale
    eig, vectors = scipy.linalg.eigh(gram_matrix, driver="evr", check_finite=False,
                                     subset_by_value=(threshold**2 * (1 - 1e-6), np.inf))
    values = np.sqrt(np.maximum(eig, 0.0))
    smax = values.max(initial=0.0)  # the largest eigenvalue is in the range whenever any is
    shrunk = threshold_singular_values(values, threshold, kind)
    keep = (values > rcond * smax) & (shrunk > 0)
    return vectors[:, keep], shrunk[keep] / values[keep]


def low_rank_form(n: int, p: int) -> str:
    """Which exact form of the data every engine hands to :func:`svt_factors`.

    ``'rows'`` (the n × p matrix itself) when n < p — smaller than a p × p Gram, and
    exact where the Gram's null eigenvalues are not — else ``'gram'``. One rule for all
    engines: the two forms round differently.
    """
    return "rows" if n < p else "gram"


def svt_factors(form: str, matrix: np.ndarray, threshold: float,
                kind: str = "hard") -> tuple[np.ndarray, np.ndarray]:
    r"""Return ``(basis, scale)`` of the global SVT from either exact form of the data.

    Every engine calls this one function, so equal data give equal factors.

    Parameters
    ----------
    form : {'rows', 'gram'}
        ``'rows'``: ``matrix`` is :math:`M^T` (n × p, one row per galaxy), used when
        n < p: the n × n Gram :math:`M^T M = V S^2 V^T` is eigen-decomposed and
        :math:`U = M V S^{-1}`. ``'gram'``: ``matrix`` is :math:`G = M M^T` (p × p).
    matrix : ndarray
        The rows or the Gram, float64.
    threshold, kind
        As for :func:`svt_projector`.

    Notes
    -----
    BLAS threads follow :func:`galdecon.core.threads.blas_threads_for`, whichever engine
    calls, since thread counts change the rounding.
    """
    if form not in ("rows", "gram"):
        raise ValueError(f"form must be 'rows' or 'gram', got {form!r}")
    with blas_threads_for(matrix):
        if form == "gram":
            return kept_eigenpairs(matrix, threshold, kind)
        vectors, scale = kept_eigenpairs(smaller_gram(matrix), threshold, kind)
        basis = matrix.T @ vectors  # U S: columns M v_k = s_k u_k
        return basis / np.sqrt(np.sum(basis**2, axis=0)), scale


def nuclear_norm_of(form: str, matrix: np.ndarray) -> float:
    """Return the nuclear norm of ``M`` from either form of :func:`svt_factors`."""
    with blas_threads_for(matrix):
        return nuclear_norm_from_gram(smaller_gram(matrix) if form == "rows" else matrix)


def apply_svt(block: np.ndarray, basis: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Apply the SVT projector (from :func:`svt_projector`) to a block of stamps."""
    flat = block.reshape(block.shape[0], -1)
    coeffs = flat @ basis.astype(block.dtype, copy=False)
    coeffs *= scale.astype(block.dtype, copy=False)
    return (coeffs @ basis.T.astype(block.dtype, copy=False)).reshape(block.shape)


def svt(matrix: np.ndarray, threshold: float, kind: str = "hard") -> np.ndarray:
    """Singular-value threshold of a 2-D matrix by a thin SVD (reference implementation)."""
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    return (u * threshold_singular_values(s, threshold, kind)) @ vt
