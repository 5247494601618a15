"""What a checkpoint costs: its size, the time to write and to read it, against an iteration.

Runs sparse mode (one reweighting, so the weights are full (n, J, N0, N1) arrays) on the
local engine for ``--iterations`` iterations per round with a checkpoint every
``--every`` iterations, and prints the median seconds per iteration, the median seconds
per checkpoint write, the checkpoint's size, the time :func:`galdecon.run.checkpoint.load`
plus ``arrays()`` take, and the overhead at the default interval (10 minutes).

    python benchmarks/checkpoint.py                 # n = 10,000 stamps 41 x 41
    python benchmarks/checkpoint.py -n 1000 --iterations 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import galdecon
from galdecon.run import checkpoint
from spark_overhead import make_stack


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--n-images", type=int, default=10_000)
    parser.add_argument("--iterations", type=int, default=32, help="per round (2 rounds)")
    parser.add_argument("--every", type=int, default=8)
    parser.add_argument("--dir", default=None, help="where checkpoints go (default: a temp dir)")
    args = parser.parse_args(argv)

    images, psfs = make_stack(args.n_images, 41, np.random.default_rng(0))
    writes = []
    real_write = checkpoint.Checkpointer.write

    def timed_write(self, driver):
        t0 = time.perf_counter()
        out = real_write(self, driver)
        writes.append((driver.position.round, time.perf_counter() - t0))
        return out

    checkpoint.Checkpointer.write = timed_write
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        ck = Path(tmp) / "ck"
        result = galdecon.deconvolve(images, psfs, n_iter=args.iterations, n_reweights=1,
                                     tolerance=0.0, checkpoint=ck, checkpoint_every=args.every)
        size = (ck / checkpoint.STATE_FILE).stat().st_size
        t0 = time.perf_counter()
        arrays = checkpoint.load(ck).arrays()
        load_s = time.perf_counter() - t0
        del arrays
    checkpoint.Checkpointer.write = real_write
    seconds = result.record["timing"]["iteration_seconds"]
    per_iteration = statistics.median(seconds)
    per_write = {r: statistics.median([s for rr, s in writes if rr == r]) for r in (0, 1)
                 if any(rr == r for rr, _ in writes)}
    last = per_write.get(1, per_write.get(0))
    print(f"n = {args.n_images:,} stamps 41 x 41, sparse, float64, local engine "
          f"({result.record['engine']['threads']} threads)")
    print(f"  median iteration            {per_iteration:8.3f} s")
    for r, s in per_write.items():
        label = "round 1 (weights (n, J))" if r == 0 else "round 2 (weights (n,J,N0,N1))"
        print(f"  median checkpoint write, {label:30s} {s:8.3f} s "
              f"= {s / per_iteration:5.1f} iterations")
    print(f"  checkpoint size (last)      {size / 2**20:8.1f} MiB")
    print(f"  load + read arrays          {load_s:8.3f} s")
    overhead = last / checkpoint.AUTO_SECONDS
    print(f"  overhead at the default interval ({checkpoint.AUTO_SECONDS:.0f} s): "
          f"{100 * overhead:.2f} %; every {args.every} iterations: "
          f"{100 * last / (args.every * per_iteration):.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
