"""Time per iteration: the local engine against Spark ``local[2]``, over partitions and K.

n random galaxy stamps (positive elliptical blobs plus noise, convolved by normalised
elliptical Gaussian PSFs of random widths), 41×41 by default, all in one SparkSession.

Every row is ``--repeats`` pairs of runs, the local engine then Spark back to back (so each
ratio compares runs made under similar load on a shared machine); the table shows the
medians of the local times, of the Spark times and of the pairs' ratios. Sparse mode: a
pair for every synchronisation interval K and partition count N; a run is one warm-up sync
followed by ``--syncs`` timed syncs, timed by the median seconds per iteration over them.

Low rank (one synchronisation per iteration: one map and one TSQR reduction): a pair for
every N, one warm-up iteration then ``--lowr-iterations`` timed ones. With
``--store-n``, a run on Spark reading a chunked store of that many stamps (written first,
chunk by chunk) is timed too and compared with the n-stamp Spark and local times.

    python benchmarks/spark_overhead.py                      # n=10,000, N∈{2,4,8,32}, K∈{1,4,16}
    python benchmarks/spark_overhead.py -n 1000 --partitions 2 4 --sync 1 4 --syncs 2
    python benchmarks/spark_overhead.py --modes lowr --partitions 1 2 4 --store-n 100000 \
        --driver-memory 16g
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.fft as sfft

from galdecon.bench.suite import iteration_stats, timed_run, timing_settings
from galdecon.data.sources import StoreStack
from galdecon.engines.local import LocalEngine
from galdecon.engines.spark.engine import SparkEngine
from galdecon.run.driver import Driver


def make_stack(n: int, size: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Random PSF-like kernels and blurred positive blobs with Gaussian noise."""
    grid = np.arange(size) - size // 2
    yy, xx = np.meshgrid(grid, grid, indexing="ij")

    def gaussians(width, ratio, angle, dx, dy):
        # Elliptical Gaussians, one per row of the parameter vectors, shape (n, size, size).
        width, ratio, angle, dx, dy = (np.asarray(a)[:, None, None]
                                       for a in (width, ratio, angle, dx, dy))
        x, y = xx - dx, yy - dy
        u = x * np.cos(angle) + y * np.sin(angle)
        v = -x * np.sin(angle) + y * np.cos(angle)
        return np.exp(-0.5 * ((u / width) ** 2 + (v / (width * ratio)) ** 2))

    centred = np.zeros(n)
    psfs = gaussians(rng.uniform(1.0, 2.5, n), rng.uniform(0.6, 1.0, n),
                     rng.uniform(0, np.pi, n), centred, centred)
    psfs /= psfs.sum(axis=(1, 2), keepdims=True)
    galaxies = rng.uniform(0.5, 2.0, (n, 1, 1)) * gaussians(
        rng.uniform(1.5, 5.0, n), rng.uniform(0.3, 1.0, n), rng.uniform(0, np.pi, n),
        rng.normal(0, 1.5, n), rng.normal(0, 1.5, n))
    kernel = np.roll(psfs, (-(size // 2), -(size // 2)), axis=(1, 2))
    blurred = sfft.irfft2(sfft.rfft2(galaxies) * sfft.rfft2(kernel), s=(size, size))
    images = blurred + rng.normal(0.0, 0.01, blurred.shape)
    return images, psfs


def seconds_per_iteration(engine, images, psfs, sync: int, syncs: int) -> float:
    """Median seconds per iteration over ``syncs`` timed syncs after one warm-up sync."""
    run = timed_run(engine, images, psfs, timing_settings("sparse", (syncs + 1) * sync), sync)
    return iteration_stats(run, warm_up=sync)["median_s"]


def lowr_seconds(engine, images, psfs, iterations: int) -> float:
    """Median seconds per low-rank iteration over ``iterations`` after one warm-up."""
    run = timed_run(engine, images, psfs, timing_settings("lowr", iterations + 1), 1)
    return iteration_stats(run, warm_up=1)["median_s"]


def store_lowr_seconds(spark, n: int, size: int, iterations: int, partitions, block_size,
                       chunk: int, directory) -> tuple[float, int]:
    """Median seconds per low-rank iteration of a Spark run on a chunked store of n stamps."""
    from store_scale import write_input

    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        store = Path(tmp) / "in.zarr"
        write_input(store, n, chunk)
        source = StoreStack.open(str(store))
        with SparkEngine(spark=spark, partitions=partitions, block_size=block_size) as engine:
            engine.scatter_source(source, n)
            driver = Driver(engine, timing_settings("lowr", iterations + 1), n, (size, size))
            driver.setup()
            seconds = driver.run().iteration_seconds[1:]
            return statistics.median(seconds), engine.n_partitions


def paired(args, label, local_fn, spark_fn) -> tuple[float, float, float]:
    """``args.repeats`` pairs of (local, Spark) runs; the medians of each and of the ratios.

    Each pair runs back to back, so that its ratio compares runs made under similar load
    on a shared machine.
    """
    pairs = []
    for _ in range(args.repeats):
        local, spark = local_fn(), spark_fn()
        pairs.append((local, spark))
        print(f"  {label}: local {local:.3f}, spark {spark:.3f} s/it "
              f"(ratio {spark / local:.2f})", flush=True)
    return (statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs),
            statistics.median(p[1] / p[0] for p in pairs))


def sparse_table(args, session_engine, local_engine, images, psfs) -> None:
    rows = {}
    for sync in args.sync:
        for parts in args.partitions:
            def spark_run(parts=parts, sync=sync):
                with SparkEngine(spark=session_engine.spark, partitions=parts,
                                 block_size=args.block_size or None) as engine:
                    return seconds_per_iteration(engine, images, psfs, sync, args.syncs)

            rows[parts, sync] = paired(
                args, f"sparse N={parts} K={sync}",
                lambda sync=sync: seconds_per_iteration(local_engine, images, psfs, sync,
                                                        args.syncs), spark_run)
    print(f"\nsparse, n={args.n_images}, medians of {args.repeats} paired runs\n"
          "| N  | K  | local s/it | spark s/it | ratio (median of pairs) |\n"
          "|---:|---:|---:|---:|---:|")
    for (parts, sync), (local, spark, ratio) in rows.items():
        print(f"| {parts} | {sync} | {local:.3f} | {spark:.3f} | {ratio:.2f} |")
    print(flush=True)


def lowr_table(args, session_engine, local_engine, images, psfs) -> None:
    iterations = args.lowr_iterations
    rows = {}
    for parts in args.partitions:
        def spark_run(parts=parts):
            with SparkEngine(spark=session_engine.spark, partitions=parts,
                             block_size=args.block_size or None) as engine:
                return lowr_seconds(engine, images, psfs, iterations)

        rows[parts] = paired(args, f"low rank N={parts}",
                             lambda: lowr_seconds(local_engine, images, psfs, iterations),
                             spark_run)
    print(f"\nlow rank, n={args.n_images}, medians of {args.repeats} paired runs\n"
          "| N  | local s/it | spark s/it | ratio (median of pairs) |\n|---:|---:|---:|---:|")
    for parts, (local, spark, ratio) in rows.items():
        print(f"| {parts} | {local:.3f} | {spark:.3f} | {ratio:.2f} |")
    if args.store_n:
        best = min(rows, key=lambda key: rows[key][1])
        seconds, parts = store_lowr_seconds(session_engine.spark, args.store_n, args.size,
                                            iterations, args.store_partitions,
                                            args.block_size or None, args.chunk, args.dir)
        print(f"store run n={args.store_n} (Spark, N={parts}): {seconds:.3f} s/it, "
              f"{seconds / rows[best][1]:.2f}x the n={args.n_images} Spark time "
              f"(N={best}), {seconds / rows[best][0]:.2f}x the local time", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--n-images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=41, help="stamp size (odd)")
    parser.add_argument("--modes", nargs="+", choices=("sparse", "lowr"),
                        default=["sparse", "lowr"])
    parser.add_argument("--partitions", type=int, nargs="+", default=[2, 4, 8, 32])
    parser.add_argument("--sync", type=int, nargs="+", default=[1, 4, 16],
                        help="iterations per synchronisation K (sparse)")
    parser.add_argument("--syncs", type=int, default=3, help="timed syncs per run (sparse)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="paired (local, Spark) runs per row; the table gives medians")
    parser.add_argument("--lowr-iterations", type=int, default=3,
                        help="timed low-rank iterations per run")
    parser.add_argument("--store-n", type=int, default=0,
                        help="also time low rank on Spark from a chunked store of this many "
                             "stamps (0: not)")
    parser.add_argument("--store-partitions", type=int, default=None,
                        help="partitions of the store run (default: the engine's)")
    parser.add_argument("--chunk", type=int, default=1000, help="galaxies per store chunk")
    parser.add_argument("--dir", default=None, help="where the store is written (temp)")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="6g")
    parser.add_argument("--block-size", type=int, default=64,
                        help="galaxies per tile inside a Spark partition (0: one tile)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    images, psfs = make_stack(args.n_images, args.size, np.random.default_rng(args.seed))
    print(f"n={args.n_images} stamps {args.size}x{args.size}, modes {' '.join(args.modes)}; "
          f"seconds per iteration (median)", flush=True)

    t0 = time.perf_counter()
    session_engine = SparkEngine(master=args.master, driver_memory=args.driver_memory)
    print(f"  Spark session started in {time.perf_counter() - t0:.1f} s "
          f"({session_engine.facts()['spark_version']})", flush=True)
    local_engine = LocalEngine()
    try:
        if "sparse" in args.modes:
            sparse_table(args, session_engine, local_engine, images, psfs)
        if "lowr" in args.modes:
            lowr_table(args, session_engine, local_engine, images, psfs)
    finally:
        session_engine.close()
        local_engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
