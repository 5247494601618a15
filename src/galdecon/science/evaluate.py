"""``galdecon evaluate``: every metric against the truth, its statistics, and the outputs.

The metrics and statistics are those of :mod:`galdecon.science.metrics` (listed there),
the same functions that measure the run record: here with the window metrics and,
when GalSim is there, adaptive moments. Aggregates: median, mean and the 16th/84th
percentiles over the galaxies where the metric was measured (not NaN), the number of
failures, and ``median_all``, the median with every failure counted as the worst value.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np  # noqa: F401 - the Examples use it

from galdecon.data import io
from galdecon.science import metrics

# re-exported: the names ``galdecon evaluate``'s users (and the benchmarks) take from here
from galdecon.science.metrics import (
    METRICS,
    WINDOW_SIGMA,
    adaptive_shapes,
    summarise,
    window_ellipticity,
)

__all__ = ["METRICS", "STATISTICS", "WINDOW_SIGMA", "adaptive_shapes", "evaluate",
           "format_summary", "format_table", "summarise", "window_ellipticity", "write_csv",
           "write_json"]

STATISTICS = ("median", "mean", "p16", "p84", "median_all", "n_failed", "failure_fraction")


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
    truth, estimate = metrics.paired_stacks(truth, estimate)
    per, hsm_info = metrics.per_galaxy(truth, estimate, window=window, hsm=hsm,
                                       estimate_shapes=estimate_shapes,
                                       truth_shapes=truth_shapes)
    return {"per_galaxy": {k: v.tolist() for k, v in per.items()},
            "summary": metrics.summarise_all(per),
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
