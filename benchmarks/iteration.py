"""Time per Condat–Vũ iteration of the local engine, and its peak memory, versus n.

For every stack size n, mode (``sparse``, ``lowr``) and dtype (``float64``, ``float32``)
this builds a random but deterministic stack of 41×41 stamps, runs the public pieces
(``LocalEngine`` + ``Driver`` with ``Settings(mode, n_iter, tolerance=0, n_reweights=0)``)
and reports:

``s/iter``
    Median end-to-end wall time of one iteration as the driver sees it
    (``History.iteration_seconds``: the time of each engine step divided by its
    iterations, the cost computed as by default: every iteration for sparse, every 10th
    for low rank, whose time is the mean over whole windows), after a warm-up step that
    also builds the per-block operators.
``µs/galaxy``
    ``s/iter / n`` — constant when the time grows linearly in n.
``vs first``
    ``(s/iter / n)`` divided by the same ratio at the smallest n measured.
``floor s`` / ``÷ floor``
    Sparse only: the floor of :mod:`galdecon.bench.floor` (the iteration's matrix
    products at this machine's single-thread rate, in the same dtype, spread over the
    engine's threads), measured just before the case, and ``s/iter`` over it; ``CPU ÷
    floor`` is ``CPU s/iter`` over the floor's CPU time (floor × threads), the ratio a
    busy machine distorts least (time the process waits for a core is not counted).
``state MiB`` / ``peak MiB``
    ``tracemalloc`` current size after set-up (what the blocks hold) and peak during a
    separate short run (set-up + warm-up + a few iterations), both relative to the moment
    before the engine is built, so the input stack itself is excluded. tracemalloc sees
    every numpy array allocation (numpy reports them to it) but not the FFT library's
    internal scratch, which is a few stamps. The timing run is made without tracemalloc.

Data: per galaxy a normalised elliptical 2-D Gaussian PSF (width 1–2.5 px, ellipticity
0–0.3, random angle); the true image an elliptical exponential blob (scale 1.5–4 px,
ellipticity 0–0.6, sub-pixel offset, flux 0.5–2); the observed stamp the periodic
PSF convolution plus Gaussian noise with σ_i = std(H x_i) / SNR_i, SNR_i in 10–50.

Examples
--------
::

    python benchmarks/iteration.py --quick
    python benchmarks/iteration.py --sizes 100 1000 10000 --modes sparse --dtypes float64
    python benchmarks/iteration.py --max-lowr-n 1000      # skip lowr at n = 10,000
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time
import tracemalloc

import numpy as np

from galdecon.bench.floor import floor_estimate, measure
from galdecon.core.operators import Convolution
from galdecon.core.problem import Settings
from galdecon.engines import LocalEngine
from galdecon.engines.local import default_threads
from galdecon.run.driver import Driver

SHAPE = (41, 41)
MiB = 2.0**20


def _elliptical_radius2(n: int, rng: np.random.Generator, width, ellipticity, offset):
    """Squared elliptical radius (in units of the width) on the stamp grid, shape (n, N0, N1)."""
    n0, n1 = SHAPE
    rows = np.arange(n0, dtype=np.float64) - n0 // 2
    cols = np.arange(n1, dtype=np.float64) - n1 // 2
    width = rng.uniform(*width, n)
    ell = rng.uniform(*ellipticity, n)
    angle = rng.uniform(0.0, np.pi, n)
    shift = rng.uniform(-offset, offset, (2, n)) if offset else np.zeros((2, n))
    dr = rows[None, :, None] - shift[0][:, None, None]
    dc = cols[None, None, :] - shift[1][:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = cos * dr + sin * dc
    v = -sin * dr + cos * dc
    major = (width * np.sqrt(1.0 + ell))[:, None, None]
    minor = (width * np.sqrt(1.0 - ell))[:, None, None]
    return (u / major) ** 2 + (v / minor) ** 2


def make_stack(n: int, seed: int = 0, chunk: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, psfs)``, each (n, 41, 41) float64, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    images = np.empty((n,) + SHAPE)
    psfs = np.empty((n,) + SHAPE)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        psf = np.exp(-0.5 * _elliptical_radius2(m, rng, (1.0, 2.5), (0.0, 0.3), 0.0))
        psf /= psf.sum(axis=(1, 2), keepdims=True)
        galaxy = np.exp(-np.sqrt(_elliptical_radius2(m, rng, (1.5, 4.0), (0.0, 0.6), 1.0)))
        galaxy *= (rng.uniform(0.5, 2.0, m) / galaxy.sum(axis=(1, 2)))[:, None, None]
        clean = Convolution(psf, SHAPE).op(galaxy)
        noise_sd = clean.std(axis=(1, 2)) / rng.uniform(10.0, 50.0, m)
        noise = rng.standard_normal((m,) + SHAPE) * noise_sd[:, None, None]
        images[start:start + m] = clean + noise
        psfs[start:start + m] = psf
    return images, psfs


def _driver(images, psfs, settings, threads, block_size, progress=None):
    engine = LocalEngine(threads=threads, block_size=block_size)
    engine.scatter({"images": images, "psfs": psfs}, len(images))
    return engine, Driver(engine, settings, len(images), SHAPE, progress=progress)


def window_means(seconds, window: int) -> np.ndarray:
    """Mean seconds per iteration over each whole window of ``window`` iterations."""
    seconds = np.asarray(seconds)
    return seconds[: len(seconds) // window * window].reshape(-1, window).mean(axis=1)


def time_iterations(images, psfs, mode, dtype, iters, threads=None, block_size=None):
    """Time the iterations of one run.

    Returns the median wall seconds per iteration after one warm-up step (from
    ``History.iteration_seconds``), the per-step samples, and the median process CPU
    seconds per iteration (all threads; taken between the driver's progress calls, so it
    includes the driver's own work per step).
    """
    settings = Settings(mode=mode, dtype=dtype, tolerance=0.0, n_reweights=0)
    # The driver's default step: sparse runs 4·cost_window iterations per engine map; low
    # rank one, timed in whole cost windows (their mean: one iteration in w has the cost).
    step = 4 * settings.cost_window if mode == "sparse" else 1
    window = 1 if mode == "sparse" else settings.cost_window
    steps = max(1, -(-iters // (step * window))) * window
    settings = settings.replace(n_iter=step * (steps + 1))
    marks = []
    engine, driver = _driver(images, psfs, settings, threads, block_size,
                             progress=lambda done, planned, cost: marks.append(
                                 (done, time.process_time())))
    assert mode != "sparse" or driver.sync_every == step
    driver.setup()
    history = driver.run()
    engine.close()
    per_step = window_means(history.iteration_seconds[::step][1:], window)  # per engine step
    cpu = [(t1 - t0) / (d1 - d0) for (d0, t0), (d1, t1)
           in zip(marks[1:], marks[2:], strict=False)]
    return float(np.median(per_step)), per_step, float(np.median(cpu)) if cpu else np.nan


def memory(images, psfs, mode, dtype, threads=None, block_size=None):
    """Return (state MiB after set-up, peak MiB over set-up and a short run)."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    settings = Settings(mode=mode, dtype=dtype, n_iter=8 if mode == "sparse" else 2,
                        tolerance=0.0, n_reweights=0)
    engine, driver = _driver(images, psfs, settings, threads, block_size)
    driver.setup()
    state = tracemalloc.get_traced_memory()[0] - base
    driver.run()
    peak = tracemalloc.get_traced_memory()[1] - base
    engine.close()
    tracemalloc.stop()
    return state / MiB, peak / MiB


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--modes", nargs="+", default=["sparse", "lowr"],
                        choices=["sparse", "lowr"])
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32"],
                        choices=["float64", "float32"])
    parser.add_argument("--iters", type=int, default=20,
                        help="timed iterations per case after warm-up (default 20)")
    parser.add_argument("--quick", action="store_true",
                        help="n = 100 and 1,000, 8 timed iterations")
    parser.add_argument("--max-lowr-n", type=int, default=None,
                        help="skip lowr for n above this (lowr at n = 10,000 takes seconds "
                             "per iteration)")
    parser.add_argument("--threads", type=int, default=None, help="LocalEngine threads")
    parser.add_argument("--block-size", type=int, default=None, help="LocalEngine block size")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc pass")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.iters = [s for s in args.sizes if s <= 1000] or [100], 8

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"# Condat iteration, local engine — {platform.processor() or platform.machine()}, "
          f"{cores} cores, numpy {np.__version__}, threads={args.threads or 'default'}, "
          f"block_size={args.block_size or 'default'}, {args.iters} timed iterations, "
          f"load average {os.getloadavg()[0]:.2f} at start\n")
    print("| mode | dtype | n | s/iter (median) | min | max | µs/galaxy | vs first "
          "| CPU s/iter | floor s | ÷ floor | CPU ÷ floor | state MiB | peak MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode in args.modes:
        for dtype in args.dtypes:
            first = None
            for n in sorted(args.sizes):
                if mode == "lowr" and args.max_lowr_n is not None and n > args.max_lowr_n:
                    print(f"| {mode} | {dtype} | {n} | skipped | | | | | | | | | | |", flush=True)
                    continue
                images, psfs = make_stack(n, args.seed)
                gc.collect()
                threads = args.threads or default_threads()
                floor = (floor_estimate(n, threads, rates=measure(dtype=dtype))["floor_s"]
                         if mode == "sparse" else float("nan"))
                median, samples, cpu = time_iterations(images, psfs, mode, dtype, args.iters,
                                                       args.threads, args.block_size)
                per_galaxy = median / n
                first = first or per_galaxy
                if args.no_memory:
                    state = peak = float("nan")
                else:
                    state, peak = memory(images, psfs, mode, dtype, args.threads,
                                         args.block_size)
                print(f"| {mode} | {dtype} | {n} | {median:.4g} | {min(samples):.4g} "
                      f"| {max(samples):.4g} | {per_galaxy * 1e6:.1f} "
                      f"| {per_galaxy / first:.2f} | {cpu:.4g} | {floor:.4g} "
                      f"| {median / floor:.2f} | {cpu / (floor * threads):.2f} "
                      f"| {state:.0f} | {peak:.0f} |",
                      flush=True)
                del images, psfs
    print("\ns/iter: wall time per iteration (History.iteration_seconds), cost evaluated as "
          "by default (sparse every iteration; low rank every 10th, the mean of windows); "
          "CPU s/iter: process CPU time (all threads) per iteration; "
          "state/peak: tracemalloc (numpy allocations) above the input stack. "
          f"Load average {os.getloadavg()[0]:.2f} at the end.")


if __name__ == "__main__":
    main()
