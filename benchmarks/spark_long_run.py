"""Is a long Spark run flat? Time per iteration and memory over 1,000 iterations.

Runs sparse mode on Spark ``local[2]`` with K = 1 (one Spark job per iteration: the
hardest case for lineage and bookkeeping) for ``--iterations`` iterations and prints, per
stretch of 100 iterations, the median seconds per iteration and the resident memory of
the driver's Python process, of the JVM and of the Python workers (psutil). Flat columns
mean the lineage is cut, superseded states are released and nothing accumulates.

    python benchmarks/spark_long_run.py                     # n=1,000, 1,000 iterations
    python benchmarks/spark_long_run.py -n 200 --iterations 300 --partitions 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import psutil

from galdecon.core.problem import Settings
from galdecon.engines.spark.engine import SparkEngine
from galdecon.run.driver import Driver
from spark_overhead import make_stack


def memory_mib() -> dict:
    """RSS of this process, its JVM and its Python workers (all descendants), in MiB."""
    me = psutil.Process()
    totals = {"driver": me.memory_info().rss, "jvm": 0, "workers": 0}
    for child in me.children(recursive=True):
        try:
            name = " ".join(child.cmdline()[:1])
            rss = child.memory_info().rss
        except psutil.Error:
            continue
        totals["jvm" if "java" in name else "workers"] += rss
    return {k: v / 2**20 for k, v in totals.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--n-images", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--stretch", type=int, default=100, help="iterations per table row")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--sync", type=int, default=1)
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args(argv)

    images, psfs = make_stack(args.n_images, 41, np.random.default_rng(0))
    rows = []

    def progress(done, planned, cost):
        if done % args.stretch == 0:
            rows.append((done, time.perf_counter(), memory_mib()))

    with SparkEngine(master=args.master, partitions=args.partitions) as engine:
        engine.scatter({"images": images, "psfs": psfs, "primal": None}, len(images))
        settings = Settings(n_iter=args.iterations, tolerance=0.0, n_reweights=0)
        driver = Driver(engine, settings, len(images), images.shape[1:],
                        sync_every=args.sync, progress=progress)
        driver.setup()
        history = driver.run()
        facts = engine.facts()
    seconds = history.iteration_seconds
    print(f"n={args.n_images}, Spark {facts['spark_version']} {args.master}, "
          f"N={args.partitions}, K={args.sync}, {len(seconds)} iterations, lineage cut "
          f"every {facts['lineage_every']} maps\n")
    print("| iterations | median s/it | driver MiB | JVM MiB | workers MiB |")
    print("|---|---:|---:|---:|---:|")
    for done, _, mem in rows:
        stretch = seconds[done - args.stretch:done]
        print(f"| {done - args.stretch + 1}–{done} | {statistics.median(stretch):.4f} | "
              f"{mem['driver']:.0f} | {mem['jvm']:.0f} | {mem['workers']:.0f} |")
    first = statistics.median(seconds[:args.stretch])
    last = statistics.median(seconds[-args.stretch:])
    print(f"\nlast/first stretch median: {last / first:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
