"""Time to a converged result: the default ``galdecon deconvolve``, where its time goes.

Runs the command in this process (``galdecon.cli.app.main``) on a stack and its PSFs —
every option at its default (sparse, starlet, up to 300 iterations per round, tolerance
1e-4, one reweighting, so two rounds each to convergence), local engine unless told — and
prints one table of where the wall time went:

``read``            reading and checking the inputs (``read_stacks``)
``set-up``          σ, β, the initial weights and state of every block (``Driver.setup``)
``operators``       building the blocks' operators in their first step (summed over the
                    engine's threads, divided by them: the wall time they add)
``iterations``      the engine steps, operators excluded (``History.iteration_seconds``)
``reweight``        the map between the two rounds
``gather``          primal and dual back to the caller (``LocalEngine.gather``)
``write arrays``    the primal and dual files; ``plots`` the cost curve and the gallery
``other``           the rest of the command (record, locks, the interpreter's imports)

To time the pieces it wraps those functions with a timer (nothing else changes). Data:
``galdecon simulate -n 10000 -o sim10k.npz`` then (``--images``) one of its noisy stacks.

Examples
--------
::

    python benchmarks/converged.py --data sim10k.npz --stack noisy_snr5
    python benchmarks/converged.py --data sim10k.npz --n-iter 8      # set-up and output only
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import galdecon.cli.deconvolve as cli_deconvolve
import galdecon.core.solver as solver
import galdecon.data.io as io
import galdecon.run.driver as driver
import galdecon.science.figures as figures
import galdecon.science.run_gallery as run_gallery
from galdecon.cli.app import main as galdecon_main
from galdecon.engines.local import LocalEngine

TIMES: dict[str, float] = {}
_lock = threading.Lock()


def _add(name: str, seconds: float) -> None:
    with _lock:
        TIMES[name] = TIMES.get(name, 0.0) + seconds


def _timed(owner, attribute: str, name: str, when=None, record=None) -> None:
    """Wrap ``owner.attribute`` so that its calls add to ``TIMES[name]`` (and, with
    ``record``, hand it each call's result)."""
    original = getattr(owner, attribute)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        if when is not None and not when(*args, **kwargs):
            return original(*args, **kwargs)
        t0 = time.perf_counter()
        try:
            out = original(*args, **kwargs)
        finally:
            _add(name, time.perf_counter() - t0)
        if record is not None:
            record(out)
        return out

    setattr(owner, attribute, wrapper)


def _builds(block, problem) -> bool:
    """Whether :func:`galdecon.core.solver.operators` will build (not reuse) operators."""
    s = problem.settings
    return block._ops.get("key") != (s.boundary, s.wavelet, s.n_scales, s.dtype, problem.shape)


def instrument() -> None:
    """Put the timers on the functions of the table."""
    _timed(cli_deconvolve, "read_stacks", "read")
    _timed(driver.Driver, "setup", "set-up")
    _timed(solver, "operators", "operators (thread-seconds)", when=_builds)
    _timed(driver, "reweight", "reweight (thread-seconds)")
    _timed(LocalEngine, "gather", "gather")
    _timed(io, "write_array", "write arrays")
    _timed(figures, "cost_curve", "plots")
    _timed(run_gallery, "run_gallery", "plots")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a galdecon simulate .npz")
    parser.add_argument("--stack", default="noisy_snr5", help="its noisy stack (default snr5)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--n-iter", type=int, default=None, help="cap on iterations per round")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--engine", default="local", choices=["local", "spark"])
    args = parser.parse_args(argv)

    with np.load(args.data) as data, tempfile.TemporaryDirectory() as tmp:
        images, psfs = Path(tmp, "images.npy"), Path(tmp, "psfs.npy")
        np.save(images, data[args.stack])
        np.save(psfs, data["psfs"])
        n = int(data["psfs"].shape[0])
        del data
        command = ["deconvolve", "-i", str(images), "-p", str(psfs), "-o", str(Path(tmp, "run")),
                   "-q", "--no-progress", "--engine", args.engine]
        command += ["--threads", str(args.threads)] if args.threads else []
        command += ["--n-iter", str(args.n_iter)] if args.n_iter else []
        command += ["--no-plots"] if args.no_plots else []
        instrument()
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        status = galdecon_main(command)
        total = time.perf_counter() - t0
        import json
        record = json.loads(Path(tmp, "run_run.json").read_text())
    if status:
        raise SystemExit(status)
    threads = record["engine"].get("threads", 1) if "engine" in record else 1
    steps = float(np.sum(record["timing"]["iteration_seconds"]))
    ops = TIMES.pop("operators (thread-seconds)", 0.0) / threads
    reweight = TIMES.pop("reweight (thread-seconds)", 0.0) / threads
    rows = {"read": TIMES.get("read", 0.0), "set-up": TIMES.get("set-up", 0.0),
            "operators": ops, "iterations": steps - ops, "reweight": reweight,
            "gather": TIMES.get("gather", 0.0), "write arrays": TIMES.get("write arrays", 0.0),
            "plots": TIMES.get("plots", 0.0)}
    rows["other"] = total - sum(rows.values())
    result = record["result"]
    print(f"# default `galdecon deconvolve`, n = {n}, {args.engine} engine, {threads} threads, "
          f"load average {load:.2f} at start, {os.getloadavg()[0]:.2f} at the end\n")
    print(f"iterations per round {result.get('iterations_per_round')}, converged "
          f"{result.get('converged_per_round')}, final cost {record['history']['costs'][-1]:.6g}, "
          f"median s/iter {record['timing']['median_iteration_s']:.4g}\n")
    print("| part | s | % |")
    print("|---|---:|---:|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.2f} | {100 * seconds / total:.1f} |")
    outside = total - rows["iterations"]
    print(f"| **total** | **{total:.2f}** | 100 |")
    print(f"\nbeyond the iterations: {outside:.2f} s (of which plots {rows['plots']:.2f} s, "
          f"read {rows['read']:.2f} s)")


if __name__ == "__main__":
    main()
