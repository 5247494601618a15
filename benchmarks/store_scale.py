"""Stacks bigger than the driver: the driver's peak memory against n, on Spark.

For each ``-n``, writes a chunked store of synthetic stamps 41 x 41 and PSFs (chunk by
chunk: the writing process never holds the stack), then in a fresh process runs
``galdecon.deconvolve`` on Spark with that store as input and a new store as output — the
workers read their blocks and write their chunks — and reports the peak resident memory
of the driver's Python process (VmHWM), the peak RSS of the JVM (sampled; in local mode
the JVM is also the executor holding the blocks) and of the Python workers, the median
seconds per iteration and the wall time. Runs synchronise as ``galdecon deconvolve`` does
by default (every 16 sparse iterations on Spark). With ``--pairs``, the same session then
alternates in-memory and store runs of the same stack (the median iteration of each; give
at least three synchronisations, so that the median is not the first, warm-up one).

    python benchmarks/store_scale.py -n 10000 100000                  # sparse, 8 iterations
    python benchmarks/store_scale.py -n 10000 --iterations 48 --pairs 3    # store / memory
    python benchmarks/store_scale.py -n 100000 --mode lowr --iterations 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RUN = r"""
import json, os, sys, threading, time
import numpy as np, psutil
import galdecon
from galdecon.data import chunked
from galdecon.engines.spark.cluster import start_session
from galdecon.data.sources import StoreStack

store, out, mode, iterations, master, memory, scratch, pairs, sync = sys.argv[1:10]
peaks = {"jvm": 0, "workers": 0}
running = True

def sample():
    me = psutil.Process()
    while running:
        jvm = workers = 0
        for child in me.children(recursive=True):
            try:
                rss = child.memory_info().rss
                if "java" in " ".join(child.cmdline()[:1]):
                    jvm += rss
                else:
                    workers += rss
            except psutil.Error:
                pass
        peaks["jvm"], peaks["workers"] = max(peaks["jvm"], jvm), max(peaks["workers"], workers)
        time.sleep(0.2)

threading.Thread(target=sample, daemon=True).start()
spark = start_session(master, "galdecon-store-scale", scratch, driver_memory=memory)
source = StoreStack.open(store)
options = dict(engine="spark", spark=spark, mode=mode, n_iter=int(iterations), n_reweights=0,
               tolerance=0.0, sync_every=int(sync) or None)

def store_run(k):
    t0 = time.perf_counter()
    result = galdecon.deconvolve(source, None, output=chunked.create_store(f"{out}.{k}"),
                                 **options)
    return result, time.perf_counter() - t0

result, wall = store_run(0)
running = False
status = open("/proc/self/status").read().split("\n")
hwm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM"))
row = {"driver_peak": hwm, "jvm_peak": peaks["jvm"], "workers_peak": peaks["workers"],
       "median_iteration_s": result.record["timing"]["median_iteration_s"],
       "setup_s": result.record["timing"]["setup_s"], "wall_s": wall,
       "sync_every": result.record["engine"].get("sync_every"),
       "partitions": result.record["engine"]["partitions"], "pairs": []}
if int(pairs):
    # The same stack in memory, in the same session: (in-memory, store) pairs, alternated.
    arrays = source.read(0, source.n)
    images, psfs = arrays["images"], arrays["psfs"]
    for k in range(int(pairs)):
        memory_s = galdecon.deconvolve(images, psfs, **options).record["timing"][
            "median_iteration_s"]
        store_s = store_run(k + 1)[0].record["timing"]["median_iteration_s"]
        row["pairs"].append({"memory_s": memory_s, "store_s": store_s})
spark.stop()
print(json.dumps(row))
"""


def write_input(path: Path, n: int, chunk: int) -> float:
    """Write ``n`` synthetic stamps and PSFs chunk by chunk; return the seconds taken."""
    from galdecon.data import chunked
    from spark_overhead import make_stack

    t0 = time.perf_counter()
    with chunked.create_store(path) as writer:
        writer.create_array("images", (n, 41, 41), np.float64, chunk)
        writer.create_array("psfs", (n, 41, 41), np.float64, chunk)
        for start, stop in writer.chunk_bounds("images"):
            images, psfs = make_stack(stop - start, 41, np.random.default_rng(start))
            writer.write_block("images", start, images)
            writer.write_block("psfs", start, psfs)
        writer.finalize()
    return time.perf_counter() - t0


def _print_pairs(row: dict) -> None:
    mem = [p["memory_s"] for p in row["pairs"]]
    store = [p["store_s"] for p in row["pairs"]]
    ratios = [b / a for a, b in zip(mem, store, strict=True)]
    row["store_over_memory"] = float(np.median(ratios))
    print(f"           in memory {np.median(mem):.3f} s/it, store {np.median(store):.3f} s/it "
          f"(median of {len(mem)} pairs): store / memory {row['store_over_memory']:.2f} "
          f"(pairs {', '.join(f'{r:.2f}' for r in ratios)})", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--n-images", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--mode", choices=("sparse", "lowr"), default="sparse")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="8g",
                        help="JVM heap (local mode: where the executor caches the blocks)")
    parser.add_argument("--dir", default=None, help="scratch directory (default: temp)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--sync", type=int, default=0,
                        help="sparse iterations per synchronisation (0: the driver's default)")
    parser.add_argument("--pairs", type=int, default=0,
                        help="also time (in-memory, store) pairs of runs on the same stack "
                             "in the same session; their medians and ratio")
    args = parser.parse_args(argv)

    rows = []
    for n in args.n_images:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            store = Path(tmp) / "in.zarr"
            write_s = write_input(store, n, args.chunk)
            (Path(tmp) / "spark").mkdir()
            done = subprocess.run(
                [sys.executable, "-c", RUN, str(store), str(Path(tmp) / "out.zarr"), args.mode,
                 str(args.iterations), args.master, args.driver_memory,
                 str(Path(tmp) / "spark"), str(args.pairs), str(args.sync)],
                capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(
                    Path(__file__).resolve().parent)))
            if done.returncode != 0:
                causes = [line for line in done.stderr.splitlines()
                          if "Error" in line or "Exception" in line][:20]
                print("\n".join(causes) + "\n...\n" + done.stderr[-2000:], file=sys.stderr)
                return 1
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row |= {"n": n, "write_input_s": write_s,
                    "stack_bytes": n * 41 * 41 * 8 * 2}
            rows.append(row)
            print(f"n={n:>7,}  driver peak {row['driver_peak'] / 2**20:7.0f} MiB  "
                  f"JVM peak {row['jvm_peak'] / 2**20:7.0f} MiB  workers peak "
                  f"{row['workers_peak'] / 2**20:7.0f} MiB  median iteration "
                  f"{row['median_iteration_s']:7.2f} s  set-up {row['setup_s']:6.1f} s  "
                  f"wall {row['wall_s']:6.1f} s  (input: {row['stack_bytes'] / 2**30:.2f} "
                  f"GiB, written in {write_s:.0f} s)", flush=True)
            if row["pairs"]:
                _print_pairs(row)
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(f"driver peak ratio n={b['n']:,} / n={a['n']:,}: "
              f"{b['driver_peak'] / a['driver_peak']:.2f} (n ratio {b['n'] / a['n']:.0f})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
