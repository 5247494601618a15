"""Deconvolution quality on simulated data with known truth: galdecon against baselines.

For every stack size n and SNR level this simulates (``galdecon.science.simulate``, field-varying
Euclid-like PSFs, seed fixed) or reuses a data set, runs

``sparse``    galdecon, sparse wavelet mode (defaults: 300 iterations + 1 reweighting)
``lowr``      galdecon, low-rank mode (defaults: 300 iterations)
``wiener``    Tikhonov/Wiener, λ from the noise level (galdecon.science.baselines.wiener)
``rl``        Richardson–Lucy at each iteration count of ``--rl-grid`` (one run,
              galdecon.science.baselines.richardson_lucy_path); every count is kept (``rl@K``)
              and ``rl`` is the best by median pixel error: an oracle choice, stated so
``observed``  no deconvolution: the observation as the image, HSM PSF-corrected shapes

and measures each with ``galdecon.science.evaluate`` (pixel error plain and windowed, ellipticity
error from unweighted, windowed and adaptive moments, PSNR). Results go to
``OUT/quality.json`` after every run (a rerun skips what is there, so a killed run
resumes), per-galaxy metrics to ``OUT/per_galaxy/*.csv``, tables to
``OUT/quality_tables.md`` and stdout, and figures (error vs SNR, an image gallery) to
``--figures``.

Examples
--------
::

    python benchmarks/quality.py                         # n = 100 and 1,000, all SNRs
    python benchmarks/quality.py --sizes 100 --snr 2 10 --n-iter 100   # a quick look
    python benchmarks/quality.py --full                  # adds n = 10,000
    python benchmarks/quality.py --sizes 1000 --noise sky --snr 1 3 10   # sky-limited noise
    python benchmarks/quality.py --report-only           # tables + figures from the JSON

The data are ``galdecon simulate``'s defaults (GalSim rendering, default population) unless
``--model discrete``; the noise is per galaxy unless ``--noise sky``. Runs of another model or
noise convention are keyed ``MODEL-NOISE/...`` in the JSON and get tables of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

import galdecon
from galdecon.data import io
from galdecon.science import baselines
from galdecon.science.dataset import snr_label
from galdecon.science.evaluate import adaptive_shapes, evaluate, write_csv
from galdecon.science.figures import pyplot, save

METHODS = ("sparse", "lowr", "wiener", "rl", "observed")
# not run by default: galdecon without the convergence test (always n_iter per round)
EXTRA_METHODS = ("sparse_fixed", "lowr_fixed")
LABELS = {"sparse": "galdecon sparse", "lowr": "galdecon low rank", "wiener": "Wiener/Tikhonov",
          "rl": "Richardson–Lucy, best of grid (oracle)", "observed": "no deconvolution",
          "sparse_fixed": "galdecon sparse, no early stop",
          "lowr_fixed": "galdecon low rank, no early stop"}
COLOURS = {"sparse": "C0", "lowr": "C3", "wiener": "C2", "rl": "C1", "observed": "0.4",
           "sparse_fixed": "C9", "lowr_fixed": "C6"}
TABLE_METRICS = ("pixel_error", "pixel_error_window", "ellipticity_error",
                 "ellipticity_error_window", "ellipticity_error_hsm", "psnr")
TITLES = {"pixel_error": "pixel error", "pixel_error_window": "pixel error, window σ=5 px",
          "ellipticity_error": "ellipticity error, unweighted moments",
          "ellipticity_error_window": "ellipticity error, window σ=5 px",
          "ellipticity_error_hsm": "ellipticity error, HSM adaptive moments",
          "psnr": "PSNR (dB)"}


DEFAULT_GROUP = ("galsim", "snr")


def group_of(args) -> tuple[str, str]:
    """The (model, noise convention) of the runs ``args`` asks for."""
    return args.model, args.noise


def group_prefix(group) -> str:
    return "" if tuple(group) == DEFAULT_GROUP else f"{group[0]}-{group[1]}/"


def dataset_for(n: int, args) -> dict:
    from galdecon.science.simulate import read_dataset, simulate, write_dataset

    tag = group_prefix(group_of(args)).replace("/", "_")
    path = args.out / f"sim_{tag}n{n}_seed{args.seed}.npz"
    if path.exists():
        data = read_dataset(path)
        if all(float(s) in data["noisy"] for s in args.snr):
            return data
    t0 = time.perf_counter()
    data = simulate(n, seed=args.seed, snr=args.snr, workers=args.workers, model=args.model,
                    noise=args.noise)
    write_dataset(path, data)
    print(f"simulated n={n} in {time.perf_counter() - t0:.1f} s -> {path}", flush=True)
    return data


def run_method(method: str, images, psfs, args) -> tuple[np.ndarray, dict]:
    """Return the estimate and facts about the run (time, iterations, shapes)."""
    t0 = time.perf_counter()
    facts: dict = {}
    if method in ("sparse", "lowr", "sparse_fixed", "lowr_fixed"):
        extra = {"tolerance": 0.0} if method.endswith("_fixed") else {}
        result = galdecon.deconvolve(images, psfs, mode=method.split("_")[0],
                                     n_iter=args.n_iter, **extra)
        estimate = result.primal
        res = result.record["result"]
        facts = {"iterations": res["iterations"], "converged": res["converged"],
                 "iterations_per_round": res["iterations_per_round"],
                 "noise_sigma": result.record["problem"]["noise_sigma"]}
    elif method == "wiener":
        estimate = baselines.wiener(images, psfs)
    elif method == "observed":
        estimate = baselines.observed(images)
        facts["shapes"] = baselines.psf_corrected_shapes(images, psfs)[0]
    else:
        raise ValueError(method)
    facts["seconds"] = time.perf_counter() - t0
    return estimate, facts


def measure(key, method, n, level, estimate, facts, ctx) -> dict:
    """Evaluate one estimate, store it under ``key`` (JSON and per-galaxy CSV), print it."""
    shapes = facts.pop("shapes", None)
    ev = evaluate(ctx["truth"], estimate, truth_shapes=ctx["truth_shapes"],
                  estimate_shapes=shapes)
    safe = key.replace("/", "_").replace("@", "_k")
    write_csv(ctx["out"] / "per_galaxy" / f"{safe}.csv", ev)
    model, noise = ctx["group"]
    record = {"n": n, "snr": float(level), "method": method, "model": model, "noise": noise,
              "summary": ev["summary"], "hsm": ev["hsm"], "facts": facts}
    s = ev["summary"]
    print(f"n={n:<6d} SNR={level:<4g} {method:<9s} {facts['seconds']:8.1f} s  "
          f"pix {s['pixel_error']['median']:.4f}  "
          f"e {s['ellipticity_error']['median']:.4f}  "
          f"e_hsm {s['ellipticity_error_hsm']['median']:.4f}  "
          f"it {facts.get('iterations', '-')}", flush=True)
    return record


def run_rl(prefix, n, level, images, psfs, ctx, results, args):
    """Richardson–Lucy at every count of ``--rl-grid``; ``rl`` is the best (oracle) one."""
    t0 = time.perf_counter()
    best = None
    for k, estimate in baselines.richardson_lucy_path(images, psfs, args.rl_grid):
        facts = {"iterations": k, "seconds": time.perf_counter() - t0}
        record = measure(f"{prefix}_rl@{k}", f"rl@{k}", n, level, estimate, facts, ctx)
        results["runs"][f"{prefix}_rl@{k}"] = record
        if best is None or record["summary"]["pixel_error"]["median"] < \
                best[0]["summary"]["pixel_error"]["median"]:
            best = (record, estimate)
    record, estimate = best
    grid = {str(k): results["runs"][f"{prefix}_rl@{k}"]["summary"]["pixel_error"]["median"]
            for k in args.rl_grid}
    results["runs"][f"{prefix}_rl"] = dict(record, method="rl", facts=dict(
        record["facts"], grid=grid, oracle="the grid's best median pixel error"))
    folder = ctx["out"] / "per_galaxy"
    safe = prefix.replace("/", "_")
    shutil.copyfile(folder / f"{safe}_rl_k{record['facts']['iterations']}.csv",
                    folder / f"{safe}_rl.csv")
    return estimate


def run(args) -> dict:
    results_path = args.out / "quality.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.setdefault("runs", {})
    results["setup"] = {"seed": args.seed, "n_iter": args.n_iter,
                        "rl_grid": list(args.rl_grid),
                        "machine": platform.platform(), "cpus": os.cpu_count(),
                        "galdecon": galdecon.__version__}
    (args.out / "per_galaxy").mkdir(exist_ok=True)
    group = group_of(args)
    for n in args.sizes:
        data = dataset_for(n, args)
        truth, psfs = data["truth"], data["psfs"]
        ctx = {"truth": truth, "truth_shapes": None, "out": args.out, "group": group}
        for level in args.snr:
            images = data["noisy"][float(level)]
            gallery = {}
            prefix = f"{group_prefix(group)}n{n}_snr{snr_label(level)}"
            for method in args.methods:
                key = f"{prefix}_{method}"
                if key in results["runs"] and not args.redo:
                    continue
                if ctx["truth_shapes"] is None:
                    ctx["truth_shapes"] = adaptive_shapes(truth)[0]
                if method == "rl":
                    estimate = run_rl(prefix, n, level, images, psfs, ctx, results, args)
                else:
                    estimate, facts = run_method(method, images, psfs, args)
                    results["runs"][key] = measure(key, method, n, level, estimate, facts,
                                                   ctx)
                io.write_json(results_path, results)
                gallery[method] = estimate[:args.gallery]
            if gallery and n == min(args.sizes) and group == DEFAULT_GROUP:
                path = args.out / f"gallery_n{n}_snr{snr_label(level)}.npz"
                old = dict(np.load(path)) if path.exists() else {}
                np.savez(path, **(old | gallery | {"truth": truth[:args.gallery],
                                                   "observed_image": images[:args.gallery]}))
    return results


# -- report -------------------------------------------------------------------------------

def group_runs(results: dict, group=DEFAULT_GROUP) -> list[dict]:
    """The runs of one (model, noise convention); records without them are the default's."""
    return [r for r in results["runs"].values()
            if (r.get("model", "galsim"), r.get("noise", "snr")) == tuple(group)]


def rl_grid_table(runs: list[dict]) -> list[str]:
    """Richardson–Lucy's median pixel error at every iteration count (best in bold)."""
    grid = [r for r in runs if r["method"].startswith("rl@")]
    if not grid:
        return []
    levels = sorted({r["snr"] for r in grid})
    best = {(r["n"], r["snr"]): r["facts"]["iterations"] for r in runs if r["method"] == "rl"}
    index = {(r["n"], r["snr"], r["facts"]["iterations"]): r for r in grid}
    rows = ["### Richardson–Lucy pixel error (median) by iteration count (best in bold)\n",
            "| n | iterations | " + " | ".join(f"SNR {s:g}" for s in levels) + " |",
            "|---:|---:|" + "---:|" * len(levels)]
    for n, k in sorted({(r["n"], r["facts"]["iterations"]) for r in grid}):
        cells = []
        for level in levels:
            r = index.get((n, level, k))
            v = "–" if r is None else f"{r['summary']['pixel_error']['median']:.4f}"
            cells.append(f"**{v}**" if best.get((n, level)) == k else v)
        rows.append(f"| {n:,} | {k} | " + " | ".join(cells) + " |")
    return rows + [""]


def tables(results: dict, statistic: str = "median", group=DEFAULT_GROUP) -> str:
    runs = group_runs(results, group)
    if not runs:
        return ""
    sizes = sorted({r["n"] for r in runs})
    levels = sorted({r["snr"] for r in runs})
    methods = [m for m in METHODS + EXTRA_METHODS if any(r["method"] == m for r in runs)]
    index = {(r["n"], r["snr"], r["method"]): r for r in runs}

    def table(title: str, cell) -> list[str]:
        """One row per method and size that was run; ``cell(run)`` formats one run."""
        rows = [f"### {title}\n",
                "| method | n | " + " | ".join(f"SNR {s:g}" for s in levels) + " |",
                "|---|---:|" + "---:|" * len(levels)]
        for method in methods:
            for n in sizes:
                found = [index.get((n, s, method)) for s in levels]
                cells = ["–" if r is None else cell(r) for r in found]
                if set(cells) != {"–"}:  # a size this method was not run at
                    rows.append(f"| {LABELS[method]} | {n:,} | " + " | ".join(cells) + " |")
        return rows + [""]

    def metric_cell(metric):
        def cell(r):
            v = r["summary"].get(metric, {}).get(statistic)
            return "–" if v is None else f"{v:.2f}" if metric == "psnr" else f"{v:.3f}"
        return cell

    def time_cell(r):
        facts = r["facts"]
        shown = "iterations" in facts
        return f"{facts['seconds']:.1f}" + (f" ({facts['iterations']} it)" if shown else "")

    out = []
    for metric in TABLE_METRICS:
        out += table(f"{TITLES[metric]} ({statistic})", metric_cell(metric))
    out += table("HSM failures (galaxies where adaptive moments failed on the truth or the "
                 "estimate)", lambda r: str(r["hsm"]["failures"]) if r["hsm"] else "–")
    out += table("time (s) per run (Richardson–Lucy: the whole grid, best count shown)",
                 time_cell)
    out += rl_grid_table(runs)
    return "\n".join(out[:-1]) + "\n"


def figure_vs_snr(results: dict, path: Path, methods=METHODS, title: str | None = None,
                  group=DEFAULT_GROUP) -> None:
    runs = group_runs(results, group)
    sizes = sorted({r["n"] for r in runs})
    styles = ["--", "-", ":", "-."]
    metrics = ("pixel_error", "pixel_error_window", "ellipticity_error",
               "ellipticity_error_hsm")
    fig, axes = pyplot().subplots(2, 2, figsize=(10, 7.5), dpi=90, sharex=True)
    for ax, metric in zip(axes.ravel(), metrics, strict=True):
        for method in methods:
            for n, style in zip(sizes, styles, strict=False):
                pts = sorted((r["snr"], r["summary"][metric]["median"],
                              r["summary"][metric]["p16"], r["summary"][metric]["p84"])
                             for r in runs if r["method"] == method and r["n"] == n)
                if not pts:
                    continue
                snr, med, lo, hi = np.array(pts).T
                ax.plot(snr, med, style, color=COLOURS[method], marker="o", ms=3,
                        label=f"{LABELS[method]}, n={n:,}")
                if n == max(sizes) and method in ("sparse", "lowr"):
                    ax.fill_between(snr, lo, hi, color=COLOURS[method], alpha=0.12, lw=0)
        ax.set_title(TITLES[metric], fontsize=10)
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xticks([1, 2, 3, 5, 10], ["1", "2", "3", "5", "10"])
        ax.grid(alpha=0.3, which="both")
    for ax in axes[1]:
        ax.set_xlabel("SNR")
    for ax in axes[:, 0]:
        ax.set_ylabel("median over galaxies")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    # One legend column per method (matplotlib fills columns first: a method's sizes).
    columns = max(1, len({label.rsplit(", n=", 1)[0] for label in labels}))
    rows = -(-len(labels) // columns)
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=7.5,
               frameon=False)
    fig.suptitle(title or "galdecon vs baselines on simulated Euclid-like data "
                 "(band: 16-84 % of galaxies, largest n)", fontsize=10)
    fig.tight_layout(rect=(0, 0.02 + 0.025 * rows, 1, 0.97))
    save(fig, path, tight=False)


def figure_gallery(npz: Path, path: Path, count: int) -> None:
    data = np.load(npz)
    columns = [("observed_image", "observed")] + [
        (m, LABELS[m]) for m in ("sparse", "lowr", "wiener", "rl") if m in data] + [
        ("truth", "truth"), ("residual", "sparse − truth")]
    count = min(count, len(data["truth"]))
    fig, axes = pyplot().subplots(count, len(columns), figsize=(1.6 * len(columns), 1.6 * count),
                                  dpi=80)
    axes = np.atleast_2d(axes)
    for i in range(count):
        truth = data["truth"][i]
        vmax = truth.max()
        for j, (key, title) in enumerate(columns):
            image = data["sparse"][i] - truth if key == "residual" else data[key][i]
            lim = (-vmax / 4, vmax / 4) if key == "residual" else (-0.1 * vmax, vmax)
            axes[i, j].imshow(image[8:33, 8:33], cmap="RdBu_r" if key == "residual" else
                              "viridis", vmin=lim[0], vmax=lim[1], interpolation="nearest")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(title, fontsize=7.5)
    fig.suptitle(f"{npz.stem.replace('gallery_', '').replace('_', ', ')} "
                 "(central 25×25 pixels; residual scale ±¼ of the peak)", fontsize=8)
    save(fig, path)


def report(args) -> None:
    results = json.loads((args.out / "quality.json").read_text())
    groups = sorted({(r.get("model", "galsim"), r.get("noise", "snr"))
                     for r in results["runs"].values()}, key=lambda g: g != DEFAULT_GROUP)
    text = ""
    for group in groups:
        text += (f"## model {group[0]}, noise {group[1]}\n\n" + tables(results, group=group)
                 + "\n")
    (args.out / "quality_tables.md").write_text(text)
    print(text)
    args.figures.mkdir(parents=True, exist_ok=True)
    figure_vs_snr(results, args.figures / "quality_vs_snr.png")
    for group in groups[1:]:
        figure_vs_snr(results, args.figures / f"quality_vs_snr_{group[0]}_{group[1]}.png",
                      title=f"model {group[0]}, noise {group[1]} (band: 16-84 % of "
                      "galaxies, largest n)", group=group)
    if any(r["method"] in EXTRA_METHODS for r in results["runs"].values()):
        figure_vs_snr(results, args.figures / "quality_early_stop.png",
                      ("sparse", "lowr") + EXTRA_METHODS,
                      "galdecon with its convergence test (default) and without (always "
                      "n_iter iterations per round)")
    for npz in sorted(args.out.glob("gallery_*.npz")):
        level = npz.stem.rsplit("snr", 1)[1]
        if not args.gallery_snr or float(level) in args.gallery_snr:
            figure_gallery(npz, args.figures / f"{npz.stem}.png", args.gallery)
    print(f"figures in {args.figures}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--full", action="store_true", help="add n = 10,000")
    parser.add_argument("--snr", type=float, nargs="+", default=[1, 2, 3, 5, 10])
    parser.add_argument("--methods", nargs="+", choices=METHODS + EXTRA_METHODS,
                        default=list(METHODS))
    parser.add_argument("--seed", type=int, default=2017)
    parser.add_argument("--n-iter", type=int, default=300,
                        help="galdecon iterations per run and per reweighting (default 300)")
    parser.add_argument("--rl-grid", type=int, nargs="+", default=list(baselines.RL_GRID),
                        help="Richardson–Lucy iteration counts (the best is reported)")
    parser.add_argument("--model", choices=("galsim", "discrete"), default="galsim",
                        help="how the observations are rendered (galdecon simulate --model)")
    parser.add_argument("--noise", choices=("snr", "sky"), default="snr",
                        help="noise convention (galdecon simulate --noise)")
    parser.add_argument("--workers", type=int, default=None, help="simulation processes")
    parser.add_argument("--out", type=Path, default=Path("results/quality"))
    parser.add_argument("--figures", type=Path, default=Path("docs/figures"))
    parser.add_argument("--gallery", type=int, default=4, help="galaxies in the gallery")
    parser.add_argument("--gallery-snr", type=float, nargs="*", default=[2, 10])
    parser.add_argument("--redo", action="store_true", help="rerun what quality.json holds")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.full and 10000 not in args.sizes:
        args.sizes.append(10000)
    args.sizes.sort()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        run(args)
    report(args)


if __name__ == "__main__":
    main()
