"""Figures of a run: the cost curve (and the PNG writing other figures share)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from galdecon.data.io import atomic_path


def pyplot():
    """Matplotlib's pyplot on the non-interactive Agg backend (figures go to files)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, tight: bool = True) -> Path:
    """Write ``fig`` as a PNG atomically and close it (``tight``: apply tight_layout first)."""
    path = Path(path)
    if tight:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    pyplot().close(fig)
    return path


def cost_curve(record: dict, path: Path, title: str | None = None) -> Path:
    """Plot cost against iteration (log scale), marking reweighting rounds; write a PNG."""
    history = record["history"]
    iterations = np.asarray(history["cost_iterations"])
    costs = np.asarray(history["costs"])
    fig, ax = pyplot().subplots(figsize=(6.4, 4.0), dpi=110)
    positive = costs > 0
    ax.plot(iterations[positive], costs[positive], lw=1.5, color="C0")
    ax.set_yscale("log")
    edge = 0
    for index, count in enumerate(history["iterations_per_round"][:-1]):
        edge += count
        ax.axvline(edge + 0.5, color="0.6", ls="--", lw=1,
                   label="reweighting" if index == 0 else None)
    ax.set_xlabel("iteration")
    ax.set_ylabel("cost")
    settings = record["settings"]
    ax.set_title(title or f"galdecon {settings['mode']} · n = {record['data']['n_images']}")
    ax.grid(True, which="both", alpha=0.3)
    if len(history["iterations_per_round"]) > 1:
        ax.legend()
    return save(fig, path)
