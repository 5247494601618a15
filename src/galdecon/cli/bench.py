"""``galdecon bench``: the paper's evaluation on this machine (see :mod:`galdecon.bench.suite`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from galdecon.bench.suite import BenchConfig
from galdecon.cli.options import add_verbosity, aliases, new_parser, positive_float, positive_int
from galdecon.data import io
from galdecon.errors import InputError

OUTPUTS = ("bench.json", "bench.csv", "summary.md", "fig2_time_per_iteration.png",
           "fig3_disk_memory.png", "fig4_cost_vs_time.png")


def add_bench_parser(sub) -> argparse.ArgumentParser:
    """Define ``galdecon bench`` and its options."""
    d = BenchConfig()
    p = new_parser(
        sub, "bench", "time per iteration vs partitions, disk and memory, cost vs time",
        "The evaluation of Panousopoulou et al. (2017) for galdecon: time per iteration "
        "against partitions (local engine and Spark, for each sync interval K; sparse and "
        "low rank), Spark's disk and the memory of driver, JVM and Python workers over "
        "time, the cost against elapsed time for full runs, and the speed-up over a "
        "per-galaxy loop in the style of the reference code. Writes OUT/bench.json, "
        "bench.csv, summary.md and three figures.")
    p.add_argument(*aliases("-o", "--output"), required=True, metavar="OUT",
                   help="directory for the results (made if missing)")
    p.add_argument("--overwrite", action="store_true", help="replace existing results")
    p.add_argument("--report-only", action="store_true",
                   help="redo the figures, CSV and summary from OUT/bench.json")
    data = p.add_argument_group("data")
    data.add_argument("-n", "--n-galaxies", type=positive_int, default=d.n,
                      help="galaxies to simulate (per-object PSFs), or to take from --data")
    data.add_argument("--data", default=None, metavar="DATASET.npz",
                      help="a data set from galdecon simulate instead of simulating")
    data.add_argument("--snr", type=positive_float, default=d.snr,
                      help="which noisy stack to deconvolve")
    data.add_argument(*aliases("-r", "--seed"), type=int, default=d.seed)
    runs = p.add_argument_group("runs")
    runs.add_argument("--master", default=d.master, help="Spark master for the Spark runs")
    runs.add_argument("--cluster", action="store_true",
                      help="start a standalone master and workers on 127.0.0.1 instead")
    runs.add_argument(*aliases("--cluster-workers"), type=positive_int,
                      default=d.cluster_workers)
    runs.add_argument("--partitions", "--pn", type=positive_int, nargs="+",
                      default=list(d.partitions), metavar="N")
    runs.add_argument("--sync", type=positive_int, nargs="+", default=list(d.syncs),
                      metavar="K", help="iterations per synchronisation (sparse)")
    runs.add_argument("--modes", nargs="+", choices=("sparse", "lowr"),
                      default=list(d.modes))
    runs.add_argument(*aliases("--timing-iterations"), type=positive_int,
                      default=d.timing_iterations,
                      help="timed sparse iterations per configuration (after one sync)")
    runs.add_argument(*aliases("--lowr-timing-iterations"), type=positive_int,
                      default=d.lowr_timing_iterations)
    runs.add_argument("--iterations", type=positive_int, default=d.iterations,
                      help="iterations of the full runs (cost against time)")
    runs.add_argument(*aliases("--loop-subset"), type=int, default=d.loop_subset,
                      help="galaxies for the per-galaxy loop (0: skip it)")
    runs.add_argument(*aliases("--loop-iterations"), type=positive_int,
                      default=d.loop_iterations)
    runs.add_argument(*aliases("--sample-seconds"), type=positive_float,
                      default=d.sample_seconds, help="disk and memory sampling interval")
    runs.add_argument(*aliases("--driver-memory"), default=d.driver_memory)
    add_verbosity(p)
    return p


def run_bench_command(args) -> int:
    """``galdecon bench``: measure and write."""
    from galdecon.bench.report import rewrite_report
    from galdecon.bench.suite import run_bench

    out = Path(args.output)
    if args.report_only:
        rewrite_report(out)
        if not args.quiet:
            print((out / "summary.md").read_text())
        return 0
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --output expects a directory")
    if args.data and not Path(args.data).is_file():
        raise InputError(f"{args.data}: file not found")
    out.mkdir(parents=True, exist_ok=True)
    io.check_outputs({name: out / name for name in OUTPUTS},
                     [args.data] if args.data else [], args.overwrite)
    config = BenchConfig(n=args.n_galaxies, snr=args.snr, seed=args.seed, data=args.data,
                         master=args.master, partitions=tuple(args.partitions),
                         syncs=tuple(args.sync), modes=tuple(args.modes),
                         timing_iterations=args.timing_iterations,
                         lowr_timing_iterations=args.lowr_timing_iterations,
                         iterations=args.iterations, loop_subset=args.loop_subset,
                         loop_iterations=args.loop_iterations, cluster=args.cluster,
                         cluster_workers=args.cluster_workers,
                         sample_seconds=args.sample_seconds,
                         driver_memory=args.driver_memory)
    say = (lambda *a, **k: None) if args.quiet else (lambda text: print(text, flush=True))
    run_bench(config, out, say=say)
    if not args.quiet:
        print((out / "summary.md").read_text())
        print(f"results in {out}")
    return 0
