"""Figures: the cost curve of a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from galdecon.io import atomic_path


def cost_curve(record: dict, path: Path, title: str | None = None) -> Path:
    """Plot cost against iteration (log scale), marking reweighting rounds; write a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    history = record["history"]
    iterations = np.asarray(history["cost_iterations"])
    costs = np.asarray(history["costs"])
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
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
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
