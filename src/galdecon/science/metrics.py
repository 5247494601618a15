r"""Quality of a deconvolution when the true images are known (ALGORITHM.md §8).

All functions take stacks ``(n, N0, N1)`` and return one value per galaxy; :func:`evaluate`
aggregates them.
"""

from __future__ import annotations

import numpy as np


def _stack(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[None] if a.ndim == 2 else a


def pixel_error(truth, estimate) -> np.ndarray:
    r"""Return :math:`\|\hat X_i - X_i\|^2 / \|X_i\|^2` per galaxy."""
    truth, estimate = _stack(truth), _stack(estimate)
    num = np.sum((estimate - truth) ** 2, axis=(1, 2))
    den = np.sum(truth**2, axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


def ellipticity(images) -> np.ndarray:
    r"""Return ``(e1, e2)`` per galaxy from unweighted moments over the stamp.

    With 0-based row ``k`` and column ``l``: :math:`m_0 = \sum Xk`, :math:`m_1 = \sum Xl`,
    :math:`m_2 = \sum X`, :math:`m_3 = \sum X(k^2+l^2)`, :math:`m_4 = \sum X(k^2-l^2)`,
    :math:`m_5 = \sum Xkl`, :math:`D = m_3 m_2 - m_0^2 - m_1^2`,
    :math:`e_1 = (m_4 m_2 - m_0^2 + m_1^2)/D`, :math:`e_2 = 2(m_5 m_2 - m_0 m_1)/D`.

    Examples
    --------
    >>> bar = np.zeros((9, 9)); bar[4, 2:7] = 1.0
    >>> ellipticity(bar).round(12).tolist()
    [[-1.0, 0.0]]
    """
    x = _stack(images)
    k = np.arange(x.shape[1], dtype=np.float64)[:, None]
    col = np.arange(x.shape[2], dtype=np.float64)[None, :]
    m0 = np.sum(x * k, axis=(1, 2))
    m1 = np.sum(x * col, axis=(1, 2))
    m2 = np.sum(x, axis=(1, 2))
    m3 = np.sum(x * (k**2 + col**2), axis=(1, 2))
    m4 = np.sum(x * (k**2 - col**2), axis=(1, 2))
    m5 = np.sum(x * k * col, axis=(1, 2))
    denom = m3 * m2 - m0**2 - m1**2
    with np.errstate(divide="ignore", invalid="ignore"):
        e1 = (m4 * m2 - m0**2 + m1**2) / denom
        e2 = 2.0 * (m5 * m2 - m0 * m1) / denom
    return np.stack([e1, e2], axis=1)


def ellipticity_error(truth, estimate) -> np.ndarray:
    r"""Return :math:`\|e(X_i) - e(\hat X_i)\|_2` per galaxy."""
    return np.linalg.norm(ellipticity(truth) - ellipticity(estimate), axis=1)


def psnr(truth, estimate) -> np.ndarray:
    r"""Return the PSNR per galaxy.

    :math:`20\log_{10}(\mathrm{range}(X_i)\sqrt{p} / \|X_i - \hat X_i\|_2)`.
    """
    truth, estimate = _stack(truth), _stack(estimate)
    p = truth.shape[1] * truth.shape[2]
    span = truth.max(axis=(1, 2)) - truth.min(axis=(1, 2))
    dist = np.sqrt(np.sum((truth - estimate) ** 2, axis=(1, 2)))
    with np.errstate(divide="ignore"):
        return 20.0 * np.log10(span * np.sqrt(p) / dist)


def gaussian_window(shape, sigma: float) -> np.ndarray:
    """A centred, peak-normalised 2-D Gaussian (the reference's ``--kernel`` window)."""
    k = np.arange(shape[0]) - shape[0] // 2
    col = np.arange(shape[1]) - shape[1] // 2
    return np.exp(-(k[:, None] ** 2 + col[None, :] ** 2) / (2.0 * sigma**2))


def evaluate(truth, estimate, kernel: float | None = None) -> dict:
    """Per-galaxy metrics and their median and mean.

    Parameters
    ----------
    truth, estimate : ndarray, shape (n, N0, N1)
    kernel : float, optional
        σ (pixels) of a Gaussian window applied to both before measuring.

    Returns
    -------
    dict
        ``{"per_galaxy": {...}, "median": {...}, "mean": {...}}`` for ``pixel_error``,
        ``ellipticity_error`` and ``psnr``.
    """
    truth, estimate = _stack(truth), _stack(estimate)
    if truth.shape != estimate.shape:
        raise ValueError(f"truth shape {truth.shape} != estimate shape {estimate.shape}")
    if kernel:
        window = gaussian_window(truth.shape[1:], kernel)
        truth, estimate = truth * window, estimate * window
    per = {
        "pixel_error": pixel_error(truth, estimate),
        "ellipticity_error": ellipticity_error(truth, estimate),
        "psnr": psnr(truth, estimate),
    }
    return {
        "per_galaxy": {k: v.tolist() for k, v in per.items()},
        "median": {k: float(np.nanmedian(v)) for k, v in per.items()},
        "mean": {k: float(np.nanmean(v)) for k, v in per.items()},
    }
