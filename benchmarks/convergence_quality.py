"""Error against iterations: does galdecon's convergence test stop near the best iterate?

For each stack size n, SNR and mode this runs galdecon once on ``benchmarks/quality.py``'s
data (the same cached ``results/quality/sim_n{n}_seed{seed}.npz``, simulated if missing)
and records the iterate at every synchronisation: the median pixel error, plain and
windowed, at every one, and the HSM (adaptive-moment) ellipticity error at the
iterations of ``--hsm-every``. The convergence test of the default run is replayed on the
recorded costs (it is a pure function of them: ``galdecon.core.solver.ConvergenceTest``),
so one run shows where the default stops and what later or earlier iterates give.

``sparse``  round 1 (before the reweighting) stops where the default's test stops
            (tolerance 1e-4), then the test is switched off and round 2 runs
            ``--max-iter`` iterations: the iterate at the replayed round-2 stop is the
            default run's result, bit for bit.
``lowr``    one round with the test off for ``--max-iter`` iterations; the iterate at the
            replayed stop (the default cost window, 10) is the default run's result, bit
            for bit; the reference's window-1 stops are replayed too.

Results go to ``OUT/convergence.json`` (resumable: a rerun skips what is there) and the
figure to ``--figures``/quality_vs_iterations.png.

Examples
--------
::

    python benchmarks/convergence_quality.py --sizes 100 --snr 1 3 10
    python benchmarks/convergence_quality.py --sizes 1000 --snr 1 3 10 --modes lowr
    python benchmarks/convergence_quality.py --report-only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from galdecon.core.problem import COST_WINDOWS, Settings
from galdecon.core.solver import ConvergenceTest
from galdecon.data import io
from galdecon.run.execute import execute
from galdecon.run.inputs import read_inputs
from galdecon.run.options import resolve_options
from galdecon.run.plan import plan_run
from galdecon.science.dataset import snr_label
from galdecon.science.evaluate import adaptive_shapes, evaluate
from galdecon.science.figures import pyplot, save
from galdecon.science.metrics import WINDOW_SIGMA, gaussian_window, pixel_error
from quality import dataset_for  # the same cached data set as quality.py's

DEFAULT_TOLERANCE = Settings().tolerance
COLOURS = {1.0: "C3", 2.0: "C1", 3.0: "C2", 5.0: "C4", 10.0: "C0"}


class Recorder:
    """Called after every synchronisation: measures the iterate the blocks hold."""

    def __init__(self, truth, truth_shapes, hsm_every: int, mode: str):
        self.truth = truth
        self.truth_shapes = truth_shapes
        self.window = gaussian_window(truth.shape[1:], WINDOW_SIGMA)
        self.hsm_every = hsm_every
        self.mode = mode
        self.rows: list[dict] = []
        self.seconds = 0.0

    def __call__(self, driver) -> None:
        t0 = time.perf_counter()
        pos = driver.position
        if self.mode == "sparse" and pos.round == 0 and pos.converged:
            driver.test.tolerance = 0.0  # round 2 runs on; its stop is replayed
        x = driver.engine.gather("primal")
        row = {"iteration": pos.done_total, "round": pos.round,
               "pixel_error": float(np.median(pixel_error(self.truth, x))),
               "pixel_error_window": float(np.median(pixel_error(self.truth * self.window,
                                                                 x * self.window)))}
        if pos.done_total % self.hsm_every == 0:
            ev = evaluate(self.truth, x, truth_shapes=self.truth_shapes)
            row["ellipticity_error_hsm"] = ev["summary"]["ellipticity_error_hsm"]["median"]
            row["hsm_failures"] = ev["hsm"]["failures"]
        self.rows.append(row)
        self.seconds += time.perf_counter() - t0


def replay(costs, tolerance: float, rounds: int, window: int = 1) -> list[int]:
    """Iterations (1-based, cumulative) at which the test with ``tolerance`` fires.

    ``costs`` holds one cost per iteration (recorded with cost window 1); a test of a
    longer ``window`` reads every window-th of them, as it would have been computed. The
    test's state carries over from one round to the next, as in the driver.
    """
    test = ConvergenceTest(tolerance, window)
    stops = []
    for i, cost in enumerate(costs):
        if test.update(cost):
            stops.append(i + 1)
            if len(stops) == rounds:
                break
    return stops


def trace(images, psfs, truth, truth_shapes, mode: str, args) -> dict:
    """One recorded run (see the module docstring) and where the default test stops."""
    # a cost every iteration (cost window 1), so that any window's test can be replayed
    options = {"mode": mode, "n_iter": args.max_iter, "cost_window": 1,
               "tolerance": DEFAULT_TOLERANCE if mode == "sparse" else 0.0}
    settings, engine_options = resolve_options(None, options)
    inputs = read_inputs(images, psfs, None, None, settings.dtype, None, None)
    plan = plan_run(inputs, settings, "local", engine_options)
    recorder = Recorder(truth, truth_shapes, args.hsm_every, mode)
    plan = dataclasses.replace(plan, checkpointer=recorder)
    t0 = time.perf_counter()
    try:
        execution = execute(plan, inputs)
    finally:
        plan.engine.close()
    history = execution.history
    costs = history.costs
    # one cost an iteration (cost window 1), counted from 1
    assert list(history.cost_iterations) == list(range(1, len(costs) + 1))
    rounds = 2 if mode == "sparse" else 1
    window = COST_WINDOWS[mode]  # the default run's; "stops_window1": the reference's
    stops = {f"{tol:g}": replay(costs, tol, rounds, window) for tol in args.tolerances}
    reference = {f"{tol:g}": replay(costs, tol, rounds) for tol in args.tolerances}
    return {"mode": mode, "rows": recorder.rows, "costs": costs,
            "iterations_per_round": history.iterations_per_round, "stops": stops,
            "cost_window": window, "stops_window1": reference,
            "seconds": time.perf_counter() - t0 - recorder.seconds,
            "measure_seconds": recorder.seconds}


def at(rows, iteration):
    """The recorded row at ``iteration`` (or the last one before it)."""
    before = [r for r in rows if r["iteration"] <= iteration]
    return before[-1] if before else None


def run(args) -> dict:
    path = args.out / "convergence.json"
    results = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    # quality.py's data set of the default model and noise convention, simulated if missing
    data_args = argparse.Namespace(out=args.data, seed=args.seed, snr=args.snr, workers=None,
                                   model="galsim", noise="snr")
    for n in args.sizes:
        data = dataset_for(n, data_args)
        truth_shapes = None
        for level in args.snr:
            for mode in args.modes:
                key = f"n{n}_snr{snr_label(level)}_{mode}"
                if key in results["runs"]:
                    continue
                if truth_shapes is None:
                    truth_shapes = adaptive_shapes(data["truth"])[0]
                out = trace(data["noisy"][float(level)], data["psfs"], data["truth"],
                            truth_shapes, mode, args)
                out |= {"n": n, "snr": float(level), "seed": args.seed}
                results["runs"][key] = out
                io.write_json(path, results)
                print(summary_line(out), flush=True)
    return results


def summary_line(out: dict) -> str:
    rows = out["rows"]
    best = min(rows, key=lambda r: r["pixel_error"])
    stop = out["stops"][f"{DEFAULT_TOLERANCE:g}"]
    default = at(rows, stop[-1]) if len(stop) == (2 if out["mode"] == "sparse" else 1) \
        else rows[-1]
    return (f"n={out['n']:<6d} SNR={out['snr']:<4g} {out['mode']:<6s} "
            f"default stop {stop} pix {default['pixel_error']:.4f} | best it "
            f"{best['iteration']} pix {best['pixel_error']:.4f} | last it "
            f"{rows[-1]['iteration']} pix {rows[-1]['pixel_error']:.4f} "
            f"({out['seconds']:.0f} s)")


def figure(results: dict, path: Path) -> None:
    runs = list(results["runs"].values())
    panels = sorted({(r["mode"], r["n"]) for r in runs}, key=lambda p: (p[0] != "sparse", p[1]))
    fig, axes = pyplot().subplots(2, len(panels), figsize=(3.6 * len(panels), 6.4), dpi=90,
                                  squeeze=False)
    for j, (mode, n) in enumerate(panels):
        for r in sorted((r for r in runs if r["mode"] == mode and r["n"] == n),
                        key=lambda r: r["snr"]):
            rows = r["rows"]
            colour = COLOURS.get(r["snr"], "k")
            it = [x["iteration"] for x in rows]
            axes[0, j].plot(it, [x["pixel_error"] for x in rows], color=colour,
                            label=f"SNR {r['snr']:g}")
            hsm = [(x["iteration"], x["ellipticity_error_hsm"]) for x in rows
                   if "ellipticity_error_hsm" in x]
            if hsm:
                axes[1, j].plot(*np.array(hsm).T, color=colour, marker=".", ms=3)
            stop = r["stops"][f"{DEFAULT_TOLERANCE:g}"]
            for k, s in enumerate(stop):
                row = at(rows, s)
                marker = "o" if k == len(stop) - 1 else "|"
                axes[0, j].plot(s, row["pixel_error"], marker, color=colour, mfc="none",
                                ms=8 if marker == "o" else 14)
                hsm_row = at([x for x in rows if "ellipticity_error_hsm" in x], s)
                if marker == "o" and hsm_row is not None:
                    axes[1, j].plot(s, hsm_row["ellipticity_error_hsm"], "o", color=colour,
                                    mfc="none", ms=8)
        axes[0, j].set_title(f"{mode}, n = {n:,}", fontsize=10)
        axes[0, j].set_ylim(0.005, 0.2)  # the first iterates (from ones) are off the scale
        axes[1, j].set_xlabel("iteration (both rounds in sparse)")
        for ax in axes[:, j]:
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel("median pixel error")
    axes[1, 0].set_ylabel("median HSM ellipticity error")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("error against iterations; o: where the default test (1e-4) stops, "
                 "|: its round-1 stop (sparse reweights there)", fontsize=9)
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--snr", type=float, nargs="+", default=[1, 3, 10])
    parser.add_argument("--modes", nargs="+", choices=("sparse", "lowr"),
                        default=["sparse", "lowr"])
    parser.add_argument("--seed", type=int, default=2017)
    parser.add_argument("--max-iter", type=int, default=500,
                        help="iterations of the round that runs with the test off")
    parser.add_argument("--hsm-every", type=int, default=20,
                        help="measure HSM shapes every this many iterations")
    parser.add_argument("--tolerances", type=float, nargs="+",
                        default=[1e-4, 3e-5, 1e-5, 3e-6])
    parser.add_argument("--data", type=Path, default=Path("results/quality"))
    parser.add_argument("--out", type=Path, default=Path("results/quality"))
    parser.add_argument("--figures", type=Path, default=Path("docs/figures"))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = run(args) if not args.report_only else json.loads(
        (args.out / "convergence.json").read_text())
    for r in results["runs"].values():
        print(summary_line(r))
    args.figures.mkdir(parents=True, exist_ok=True)
    figure(results, args.figures / "quality_vs_iterations.png")


if __name__ == "__main__":
    main()
