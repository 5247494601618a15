"""Where a low-rank iteration's time goes on the local engine, and what exactness costs.

For each n and threshold type this runs the public pieces (``LocalEngine`` + ``Driver``,
``Settings(mode="lowr", tolerance=0, n_reweights=0)``) twice — with the default cost
window (a cost every 10th iteration) and with the reference's (a cost every iteration) —
and wraps, with a timer, the functions an iteration spends its time in:

``TSQR``        the blocks' Householder QRs (``galdecon.core.tsqr.qr_r``; thread-seconds,
                summed over the engine's threads) and the merges of their triangles
``SVT``         the threshold's factors from the final R (``svt_factors``: the subspace
                iteration where it applies, else the full SVD), on the driver
``nuclear``     the nuclear norm of the relaxed primal (all singular values of its R), on
                the driver, only on the iterations whose cost the test reads
``s/it``        mean wall seconds per iteration over whole cost windows after a warm-up
                step (``History.iteration_seconds``)

and, as the method not taken, the Gram route in the same run: the smaller Gram of rows of
the same shape (``syrk``) and its leading eigenpairs, as many as the SVT kept — what the
threshold cost before it was made exact (the Gram squares the condition number,
ALGORITHM.md §6).

Data: ``benchmarks/iteration.py``'s synthetic stack (elliptical Gaussian PSFs, exponential
blobs, SNR 10–50), 41×41 stamps.

    python benchmarks/lowrank_step.py --sizes 10000 --iters 20
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import scipy.linalg
from scipy.linalg import blas

import galdecon.core.tsqr as tsqr
import galdecon.run.driver as driver_module
from converged import TIMES, _timed
from galdecon.core.problem import COST_WINDOWS, Settings
from galdecon.engines.local import default_threads
from iteration import _driver, make_stack, window_means

KEPT: list[int] = []


def instrument() -> None:
    _timed(tsqr, "qr_r", "tsqr")
    _timed(tsqr, "merge_r", "tsqr")
    _timed(driver_module, "svt_factors", "svt", record=lambda out: KEPT.append(out[1].size))
    _timed(driver_module, "nuclear_norm_of", "nuclear")


def run(images, psfs, kind: str, window: int, iters: int) -> dict:
    """One run of warm-up + ``iters`` iterations (a multiple of ``window``)."""
    settings = Settings(mode="lowr", lowr_thresh_type=kind, cost_window=window,
                        tolerance=0.0, n_reweights=0, n_iter=iters + 1)
    engine, driver = _driver(images, psfs, settings, None, None)
    driver.setup()
    TIMES.clear()
    KEPT.clear()
    history = driver.run()
    engine.close()
    windows = window_means(history.iteration_seconds[1:], window)
    return {"s_it": float(np.median(windows)),
            "pieces": {k: v / (iters + 1) for k, v in TIMES.items()},  # warm-up included
            "kept": int(np.median(KEPT)) if KEPT else 0}


def gram_alternative(images, kept: int, threads: int) -> float:
    """Seconds of the Gram route for rows of this shape: the smaller Gram (a syrk per
    thread's share of the rows, summed) and its ``kept`` leading eigenpairs."""
    rows = images.reshape(len(images), -1)
    t0 = time.perf_counter()
    if rows.shape[0] < rows.shape[1]:
        gram = blas.dsyrk(1.0, rows, trans=0, lower=1)
    else:
        gram = sum(blas.dsyrk(1.0, h, trans=1, lower=1) for h in np.array_split(rows, threads))
    m = gram.shape[0]
    scipy.linalg.eigh(gram, lower=True, driver="evr", check_finite=False,
                      subset_by_index=(max(0, m - max(kept, 1)), m - 1))
    return time.perf_counter() - t0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--kinds", nargs="+", default=["soft", "hard"],
                        choices=["soft", "hard"])
    parser.add_argument("--iters", type=int, default=20,
                        help="timed iterations (rounded up to whole cost windows)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    instrument()
    threads = default_threads()
    print(f"# low-rank iteration, local engine, {threads} threads, load average "
          f"{os.getloadavg()[0]:.2f} at start\n")
    print("| n | threshold | cost window | s/it | TSQR thread-s/it | SVT s/it | nuclear s/it "
          "| kept (median) | Gram route s/it |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        images, psfs = make_stack(n, args.seed)
        for kind in args.kinds:
            for window in (COST_WINDOWS["lowr"], 1):
                iters = -(-args.iters // window) * window
                out = run(images, psfs, kind, window, iters)
                per = out["pieces"]
                gram = gram_alternative(images, out["kept"], threads)
                print(f"| {n} | {kind} | {window} | {out['s_it']:.3f} | {per.get('tsqr', 0):.3f} "
                      f"| {per.get('svt', 0):.3f} | {per.get('nuclear', 0):.3f} "
                      f"| {out['kept']} | {gram:.3f} |", flush=True)
    print(f"\nLoad average {os.getloadavg()[0]:.2f} at the end. Gram route: syrk of the "
          "rows + eigh of as many leading pairs as the SVT kept.")


if __name__ == "__main__":
    main()
