"""The benchmark figures of ``galdecon bench`` (the paper's Figs. 2–4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from galdecon.science.figures import pyplot, save


def bench_figures(result: dict, out: Path) -> list[Path]:
    """The three figures of ``galdecon bench`` (the paper's Figs. 2–4) as PNG files."""
    out = Path(out)
    written = [_time_per_iteration(result, out / "fig2_time_per_iteration.png")]
    if result["fig3"]:
        written.append(_disk_memory(result, out / "fig3_disk_memory.png"))
    written.append(_cost_vs_time(result, out / "fig4_cost_vs_time.png"))
    return written


def _time_per_iteration(result: dict, path: Path) -> Path:
    """Fig. 2: time per iteration against partitions, the local engine at N = 1."""
    n = result["data"]["n"]
    modes = sorted({r["mode"] for r in result["fig2"]}, key=["sparse", "lowr"].index)
    fig, axes = pyplot().subplots(1, len(modes), figsize=(5.2 * len(modes), 4.0), dpi=110,
                                   squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        rows = [r for r in result["fig2"] if r["mode"] == mode]
        for index, sync in enumerate(sorted({r["sync"] for r in rows})):
            points = sorted((r for r in rows if r["sync"] == sync),
                            key=lambda r: r["partitions"])  # local (N = 1) first
            ax.errorbar([r["partitions"] for r in points], [r["mean_s"] for r in points],
                        yerr=[r["std_s"] for r in points], marker="o", capsize=3,
                        color=f"C{index}", label=f"K = {sync}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("partitions per RDD, N (N = 1: local engine)")
        ax.set_ylabel("time per iteration (s), mean ± std")
        ax.set_title(f"{mode}, n = {n:,}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    return save(fig, path)


def _disk_memory(result: dict, path: Path) -> Path:
    """Fig. 3: disk and memory over time, every Spark run, every group (driver/worker)."""
    fig, (disk_ax, mem_ax) = pyplot().subplots(1, 2, figsize=(10.4, 4.0), dpi=110)
    for index, run in enumerate(result["fig3"]):
        groups = [g for g in run["samples"][0] if g != "t"]
        label = f"{run['mode']} N={run['partitions']} K={run['sync']}" + (
            " full run" if run.get("full_run") else "")
        times = [s["t"] for s in run["samples"]]
        for g_index, group in enumerate(groups):
            style = ["-", "--", ":", "-."][g_index % 4]
            tag = label if len(groups) == 1 else f"{label} {group}"
            disk_ax.plot(times, [s[group]["disk_mib"] for s in run["samples"]], style,
                         color=f"C{index % 10}", label=tag)
            mem_ax.plot(times, [s[group]["jvm_rss_mib"] + s[group]["python_rss_mib"]
                                for s in run["samples"]], style, color=f"C{index % 10}")
    disk_ax.set_ylabel("Spark local dirs on disk (MiB)")
    mem_ax.set_ylabel("resident memory, JVM + Python (MiB)")
    for ax in (disk_ax, mem_ax):
        ax.set_xlabel("time since the run started (s)")
        ax.grid(True, alpha=0.3)
    disk_ax.legend(fontsize=6)
    fig.suptitle(f"disk and memory during the Spark runs, n = {result['data']['n']:,}")
    return save(fig, path)


def _cost_vs_time(result: dict, path: Path) -> Path:
    """Fig. 4: the cost against elapsed time of the full runs."""
    fig, ax = pyplot().subplots(figsize=(6.4, 4.0), dpi=110)
    for index, curve in enumerate(result["fig4"]):
        label = curve["engine"] if curve["engine"] == "local" else \
            f"spark N={curve['partitions']} K={curve['sync']}"
        ax.plot(np.asarray(curve["elapsed_s"]) / 60, curve["costs"], color=f"C{index}",
                label=label)
    ax.set_yscale("log")
    ax.set_xlabel("elapsed time (min), set-up included")
    ax.set_ylabel("cost C(X)")
    ax.set_title(f"sparse, {result['config']['iterations']} iterations, "
                 f"n = {result['data']['n']:,}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return save(fig, path)
