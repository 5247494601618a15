r"""How good is a deconvolution when the truth is known: per-galaxy metrics and their spread.

Metrics, one value per galaxy (ALGORITHM.md §8):

``pixel_error``
    :math:`\|\hat X_i - X_i\|^2 / \|X_i\|^2`.
``pixel_error_window``
    The same after multiplying both by a centred Gaussian window (σ = 5 pixels), which
    discounts the noise far from the galaxy.
``ellipticity_error``
    :math:`\|e(X_i) - e(\hat X_i)\|_2` from unweighted moments over the stamp
    (:func:`galdecon.science.metrics.ellipticity`).
``ellipticity_error_window``
    The same from moments of the window-weighted images.
``ellipticity_error_hsm``
    The same from GalSim's adaptive moments (:func:`galsim.hsm.FindAdaptiveMom`), as
    distortions :math:`(I_{xx}-I_{yy}, 2I_{xy})/(I_{xx}+I_{yy})`. A measurement that fails on
    the truth or the estimate gives NaN for that galaxy; failures are counted and reported.
``psnr``
    :math:`20\log_{10}(\mathrm{range}(X_i)\sqrt p / \|X_i - \hat X_i\|_2)`.

Every ellipticity is in galdecon's convention (e1 > 0 elongated along rows, i.e. the
negative of GalSim's e1, whose x axis is the column). Aggregates: median, mean and the
16th/84th percentiles over the galaxies where the metric was measured (not NaN), the
number of failures, and ``median_all``, the median with every failure counted as the worst
value.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from galdecon.data import io

from galdecon.science import galsim_import, metrics
from galdecon.errors import InputError

log = logging.getLogger("galdecon")

WINDOW_SIGMA = 5.0
METRICS = ("pixel_error", "pixel_error_window", "ellipticity_error",
           "ellipticity_error_window", "ellipticity_error_hsm", "psnr")
STATISTICS = ("median", "mean", "p16", "p84", "median_all", "n_failed", "failure_fraction")


def adaptive_shapes(images) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive-moment distortions of each stamp (galdecon convention) and success flags.

    Returns
    -------
    shapes : ndarray, shape (n, 2)
        ``(e1, e2)``; NaN where the measurement failed.
    ok : ndarray of bool, shape (n,)
    """
    galsim = galsim_import.galsim("adaptive moments",
                                  "evaluate with hsm=False / --no-hsm")
    stack = np.asarray(images, dtype=np.float64)
    stack = stack[None] if stack.ndim == 2 else stack
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


def window_ellipticity(images, sigma: float = WINDOW_SIGMA) -> np.ndarray:
    """Ellipticity from the moments of the images times a centred Gaussian window."""
    stack = np.asarray(images, dtype=np.float64)
    stack = stack[None] if stack.ndim == 2 else stack
    return metrics.ellipticity(stack * metrics.gaussian_window(stack.shape[1:], sigma))


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


def evaluate(truth, estimate, *, window: float = WINDOW_SIGMA, hsm: bool = True,
             estimate_shapes=None, truth_shapes=None) -> dict:
    r"""Per-galaxy metrics of an estimate against the truth, and their aggregates.

    Parameters
    ----------
    truth, estimate : array_like, shape (n, N0, N1) or (N0, N1)
        True and estimated stamps.
    window : float
        σ (pixels) of the Gaussian window of the ``*_window`` metrics.
    hsm : bool
        Measure adaptive moments (needs GalSim); without, ``ellipticity_error_hsm`` is
        absent.
    estimate_shapes : ndarray, shape (n, 2), optional
        Adaptive-moment shapes to use for the estimate instead of measuring its images
        (e.g. PSF-corrected shapes of the observations); NaN marks a failure.
    truth_shapes : ndarray, shape (n, 2), optional
        The same for the truth (saves measuring it again for every method).

    Returns
    -------
    dict
        ``per_galaxy`` (metric → list), ``summary`` (metric → statistics, see
        :func:`summarise`), ``hsm`` (failure counts) and ``settings``.

    Examples
    --------
    >>> k, l = np.mgrid[:21, :21] - 10.0
    >>> truth = np.exp(-(k**2 + l**2) / 8.0)
    >>> out = evaluate(truth, 1.1 * truth, hsm=False)
    >>> round(out["summary"]["pixel_error"]["median"], 6)
    0.01
    """
    truth = np.asarray(truth, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    truth = truth[None] if truth.ndim == 2 else truth
    estimate = estimate[None] if estimate.ndim == 2 else estimate
    if truth.shape != estimate.shape:
        raise InputError(f"truth shape {truth.shape} != estimate shape {estimate.shape}")
    w = metrics.gaussian_window(truth.shape[1:], window)
    per = {
        "pixel_error": metrics.pixel_error(truth, estimate),
        "pixel_error_window": metrics.pixel_error(truth * w, estimate * w),
        "ellipticity_error": metrics.ellipticity_error(truth, estimate),
        "ellipticity_error_window": np.linalg.norm(
            window_ellipticity(truth, window) - window_ellipticity(estimate, window), axis=1),
        "psnr": metrics.psnr(truth, estimate),
    }
    hsm_info = None
    if hsm or estimate_shapes is not None:
        e_true = truth_shapes if truth_shapes is not None else adaptive_shapes(truth)[0]
        e_est = estimate_shapes if estimate_shapes is not None else adaptive_shapes(estimate)[0]
        e_true, e_est = np.asarray(e_true, float), np.asarray(e_est, float)
        per["ellipticity_error_hsm"] = np.linalg.norm(e_true - e_est, axis=1)
        bad_t = ~np.isfinite(e_true).all(axis=1)
        bad_e = ~np.isfinite(e_est).all(axis=1)
        hsm_info = {"failures": int(np.sum(bad_t | bad_e)),
                    "failure_fraction": float(np.mean(bad_t | bad_e)),
                    "truth_failures": int(bad_t.sum()), "estimate_failures": int(bad_e.sum()),
                    "estimate_shapes": "given" if estimate_shapes is not None else "measured"}
    per = {k: per[k] for k in METRICS if k in per}
    return {"per_galaxy": {k: v.tolist() for k, v in per.items()},
            "summary": {k: summarise(v, higher_is_better=k == "psnr") for k, v in per.items()},
            "hsm": hsm_info, "settings": {"window_sigma": window, "n_galaxies": len(truth)}}


# -- output ------------------------------------------------------------------------------

def write_json(path, evaluation: dict) -> Path:
    """Write an evaluation (or a dict of them) as JSON, atomically."""
    return io.write_json(Path(path), evaluation)


def write_csv(path, evaluation: dict) -> Path:
    """Write the per-galaxy metrics as CSV (one row per galaxy), atomically."""
    path = Path(path)
    per = evaluation["per_galaxy"]
    names = list(per)
    with io.atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index"] + names)
        for i, row in enumerate(zip(*(per[k] for k in names), strict=True)):
            writer.writerow([i] + [repr(float(v)) for v in row])
    return path


def format_table(evaluations: dict, statistic: str = "median") -> str:
    """A plain-text table: one row per labelled evaluation, one column per metric."""
    metric_names = [m for m in METRICS
                    if any(m in ev["summary"] for ev in evaluations.values())]
    short = {"pixel_error": "pix err", "pixel_error_window": "pix err(w)",
             "ellipticity_error": "e err", "ellipticity_error_window": "e err(w)",
             "ellipticity_error_hsm": "e err(HSM)", "psnr": "PSNR dB"}
    width = max([len("method")] + [len(str(label)) for label in evaluations])
    lines = [f"{'method':<{width}}  " + "  ".join(f"{short[m]:>11}" for m in metric_names)
             + "  HSM fail"]
    for label, ev in evaluations.items():
        cells = []
        for m in metric_names:
            stats = ev["summary"].get(m)
            cells.append(f"{stats[statistic]:>11.4g}" if stats else f"{'-':>11}")
        fails = ev.get("hsm")
        tail = f"{fails['failures']:>5d} ({100 * fails['failure_fraction']:.1f}%)" if fails \
            else "    -"
        lines.append(f"{str(label):<{width}}  " + "  ".join(cells) + "  " + tail)
    return "\n".join(lines)


def format_summary(evaluation: dict) -> str:
    """A plain-text table of one evaluation: one row per metric, one column per statistic."""
    lines = [f"{'metric':<26}{'median':>11}{'mean':>11}{'p16':>11}{'p84':>11}  failed"]
    for name, stats in evaluation["summary"].items():
        cells = "".join(f"{stats[k]:>11.4g}" for k in ("median", "mean", "p16", "p84"))
        lines.append(f"{name:<26}{cells}  {stats['n_failed']}/{stats['n']}")
    if evaluation.get("hsm"):
        h = evaluation["hsm"]
        lines.append(f"HSM failures: {h['failures']} of {evaluation['settings']['n_galaxies']} "
                     f"({100 * h['failure_fraction']:.1f}%; truth {h['truth_failures']}, "
                     f"estimate {h['estimate_failures']})")
    return "\n".join(lines)
