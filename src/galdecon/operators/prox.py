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
    return flat.T @ flat


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
