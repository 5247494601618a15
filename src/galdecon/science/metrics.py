r"""Quality of a deconvolution when the true images are known (ALGORITHM.md §8).

The one place the metrics are computed: the per-galaxy values (:func:`per_galaxy`) and
their statistics (:func:`summarise`), for the run record (:func:`evaluate`) and for
``galdecon evaluate`` (:func:`galdecon.science.evaluate.evaluate`) alike.

Metrics, one value per galaxy:

``pixel_error``
    :math:`\|\hat X_i - X_i\|^2 / \|X_i\|^2`.
``pixel_error_window``
    The same after multiplying both by a centred Gaussian window (σ = 5 pixels), which
    discounts the noise far from the galaxy.
``ellipticity_error``
    :math:`\|e(X_i) - e(\hat X_i)\|_2` from unweighted moments over the stamp
    (:func:`ellipticity`).
``ellipticity_error_window``
    The same from moments of the window-weighted images.
``ellipticity_error_hsm``
    The same from GalSim's adaptive moments (:func:`galsim.hsm.FindAdaptiveMom`), as
    distortions :math:`(I_{xx}-I_{yy}, 2I_{xy})/(I_{xx}+I_{yy})`. A measurement that fails on
    the truth or the estimate gives NaN for that galaxy; failures are counted and reported.
``psnr``
    :math:`20\log_{10}(\mathrm{range}(X_i)\sqrt p / \|X_i - \hat X_i\|_2)`.

Every ellipticity is in galdecon's convention (e1 > 0 elongated along rows, i.e. the
negative of GalSim's e1, whose x axis is the column). The functions take stacks
``(n, N0, N1)`` (or one image) and return one value per galaxy.
"""

from __future__ import annotations

import logging

import numpy as np

from galdecon.errors import InputError
from galdecon.science import galsim_import

log = logging.getLogger("galdecon")

WINDOW_SIGMA = 5.0
METRICS = ("pixel_error", "pixel_error_window", "ellipticity_error",
           "ellipticity_error_window", "ellipticity_error_hsm", "psnr")


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


def window_ellipticity(images, sigma: float = WINDOW_SIGMA) -> np.ndarray:
    """Ellipticity from the moments of the images times a centred Gaussian window."""
    stack = _stack(images)
    return ellipticity(stack * gaussian_window(stack.shape[1:], sigma))


def adaptive_shapes(images) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive-moment distortions of each stamp (galdecon convention) and success flags.

    Returns
    -------
    shapes : ndarray, shape (n, 2)
        ``(e1, e2)``; NaN where the measurement failed.
    ok : ndarray of bool, shape (n,)
    """
    galsim = galsim_import.galsim("adaptive moments", "evaluate with hsm=False / --no-hsm")
    stack = _stack(images)
    shapes = np.full((stack.shape[0], 2), np.nan)
    ok = np.zeros(stack.shape[0], dtype=bool)
    for i, stamp in enumerate(stack):
        try:
            moments = galsim.hsm.FindAdaptiveMom(galsim.Image(np.ascontiguousarray(stamp)),
                                                 strict=False)
        except galsim.GalSimError as exc:  # e.g. a stamp of zeros
            log.debug("adaptive moments of stamp %d failed: %s", i, exc)
            continue
        if moments.moments_status == 0:
            shape = moments.observed_shape
            shapes[i] = (-shape.e1, shape.e2)
            ok[i] = True
    return shapes, ok


def paired_stacks(truth, estimate) -> tuple[np.ndarray, np.ndarray]:
    """Truth and estimate as float64 stacks of one shape (:class:`InputError` otherwise)."""
    truth, estimate = _stack(truth), _stack(estimate)
    if truth.shape != estimate.shape:
        raise InputError(f"truth shape {truth.shape} != estimate shape {estimate.shape}")
    return truth, estimate


def per_galaxy(truth, estimate, *, window: float | None = WINDOW_SIGMA, hsm: bool = False,
               estimate_shapes=None, truth_shapes=None) -> tuple[dict, dict | None]:
    """Every metric of each galaxy (see the module's list), in the order of :data:`METRICS`.

    Parameters
    ----------
    truth, estimate : array_like, shape (n, N0, N1) or (N0, N1)
    window : float or None
        σ (pixels) of the window of the ``*_window`` metrics; None leaves them out.
    hsm : bool
        Measure adaptive moments (needs GalSim) for ``ellipticity_error_hsm``.
    estimate_shapes, truth_shapes : ndarray, shape (n, 2), optional
        Adaptive-moment shapes to use instead of measuring the images (NaN: a failure);
        ``estimate_shapes`` alone also asks for ``ellipticity_error_hsm``.

    Returns
    -------
    per : dict
        Metric name → ndarray (n,).
    hsm_failures : dict or None
        Failure counts of the adaptive moments, None when they were not measured.
    """
    truth, estimate = paired_stacks(truth, estimate)
    per = {"pixel_error": pixel_error(truth, estimate),
           "ellipticity_error": ellipticity_error(truth, estimate),
           "psnr": psnr(truth, estimate)}
    if window is not None:
        w = gaussian_window(truth.shape[1:], window)
        per["pixel_error_window"] = pixel_error(truth * w, estimate * w)
        per["ellipticity_error_window"] = np.linalg.norm(
            window_ellipticity(truth, window) - window_ellipticity(estimate, window), axis=1)
    failures = None
    if hsm or estimate_shapes is not None:
        e_true = truth_shapes if truth_shapes is not None else adaptive_shapes(truth)[0]
        e_est = estimate_shapes if estimate_shapes is not None else adaptive_shapes(estimate)[0]
        e_true, e_est = np.asarray(e_true, float), np.asarray(e_est, float)
        per["ellipticity_error_hsm"] = np.linalg.norm(e_true - e_est, axis=1)
        bad_t = ~np.isfinite(e_true).all(axis=1)
        bad_e = ~np.isfinite(e_est).all(axis=1)
        failures = {"failures": int(np.sum(bad_t | bad_e)),
                    "failure_fraction": float(np.mean(bad_t | bad_e)),
                    "truth_failures": int(bad_t.sum()), "estimate_failures": int(bad_e.sum()),
                    "estimate_shapes": "given" if estimate_shapes is not None else "measured"}
    return {k: per[k] for k in METRICS if k in per}, failures


def summarise(values, higher_is_better: bool = False) -> dict:
    """Median, mean, 16th/84th percentiles over the measured values; failures (NaN) counted.

    ``median_all`` is the median with every failure counted as the worst possible value
    (+inf, or -inf when higher is better), so failures cannot flatter it.
    """
    values = np.asarray(values, dtype=np.float64)
    failed = np.isnan(values)
    good = values[~failed]
    n_failed = int(failed.sum())
    if good.size:
        with np.errstate(invalid="ignore"):  # a perfect estimate has PSNR = inf
            stats = {"median": float(np.median(good)), "mean": float(np.mean(good)),
                     "p16": float(np.percentile(good, 16)),
                     "p84": float(np.percentile(good, 84))}
    else:
        stats = dict.fromkeys(("median", "mean", "p16", "p84"), float("nan"))
    worst = np.where(failed, -np.inf if higher_is_better else np.inf, values)
    median_all = float(np.median(worst)) if values.size else float("nan")
    return stats | {"median_all": median_all, "n": int(values.size), "n_failed": n_failed,
                    "failure_fraction": n_failed / values.size if values.size else 0.0}


def summarise_all(per: dict) -> dict:
    """:func:`summarise` of each metric of :func:`per_galaxy` (PSNR: higher is better)."""
    return {k: summarise(v, higher_is_better=k == "psnr") for k, v in per.items()}


def evaluate(truth, estimate, kernel: float | None = None) -> dict:
    """The run record's metrics: per galaxy, their statistics, median and mean.

    Parameters
    ----------
    truth, estimate : ndarray, shape (n, N0, N1)
    kernel : float, optional
        σ (pixels) of a Gaussian window applied to both before measuring.

    Returns
    -------
    dict
        ``{"per_galaxy": {...}, "summary": {...}, "median": {...}, "mean": {...}}`` for
        ``pixel_error``, ``ellipticity_error`` and ``psnr``; ``summary`` holds every
        statistic of :func:`summarise`, ``median`` and ``mean`` two of them.

    Examples
    --------
    >>> k, l = np.mgrid[:21, :21] - 10.0
    >>> truth = np.exp(-(k**2 + l**2) / 8.0)
    >>> round(evaluate(truth, 1.1 * truth)["median"]["pixel_error"], 6)
    0.01
    """
    truth, estimate = paired_stacks(truth, estimate)
    if kernel:
        window = gaussian_window(truth.shape[1:], kernel)
        truth, estimate = truth * window, estimate * window
    per, _ = per_galaxy(truth, estimate, window=None)
    summary = summarise_all(per)
    return {"per_galaxy": {k: v.tolist() for k, v in per.items()}, "summary": summary,
            "median": {k: s["median"] for k, s in summary.items()},
            "mean": {k: s["mean"] for k, s in summary.items()}}
