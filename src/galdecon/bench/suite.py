r"""The paper's evaluation (Panousopoulou et al. 2017, §IV) for galdecon, on this machine.

Three figures as in the paper, from one run on one simulated data set:

- **Fig. 2** — time per iteration (mean, std, median) against the number of partitions N,
  for the local engine (the paper's "standalone", N = 1) and Spark, for each sync interval
  K; sparse and low rank.
- **Fig. 3** — disk used by Spark (its local dirs: shuffle, spill, block-manager disk
  blocks, checkpoints) and the memory of the driver, the JVM(s) and the Python workers,
  sampled over time; per worker on a standalone cluster.
- **Fig. 4** — the cost against elapsed time for a full run (150 iterations) of the local
  engine and of Spark.

and what the paper lacked: the speed-up over the same maths written as the reference code
writes it (:mod:`galdecon.bench.reference_loop`, one FFT convolution call per galaxy and filter),
measured in the same run on a subset, and the machine facts next to every number.

Everything measured goes to ``OUT/bench.json`` (and a flat ``OUT/bench.csv``), the
figures to ``OUT/fig*.png`` and a markdown summary to ``OUT/summary.md``.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from galdecon.bench.sampling import Sampler
from galdecon.core.problem import Settings
from galdecon.engines.local import LocalEngine
from galdecon.errors import InputError
from galdecon.run.driver import Driver
from galdecon.version import __version__

log = logging.getLogger("galdecon")


@dataclass
class BenchConfig:
    """What ``galdecon bench`` measures (the CLI's options)."""

    n: int = 10_000
    snr: float = 5.0
    seed: int = 2017
    data: str | None = None
    master: str = "local[2]"
    partitions: tuple = (2, 4, 8, 32)
    syncs: tuple = (1, 16)
    modes: tuple = ("sparse", "lowr")
    timing_iterations: int = 32
    lowr_timing_iterations: int = 8
    iterations: int = 150
    loop_subset: int = 200
    loop_iterations: int = 3
    cluster: bool = False
    cluster_workers: int = 2
    sample_seconds: float = 0.5
    driver_memory: str = "6g"
    extra: dict = field(default_factory=dict)


# -- data and facts -----------------------------------------------------------------------
def load_data(config: BenchConfig, out: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Noisy stamps and per-object PSFs: from ``config.data`` or simulated (and kept)."""
    from galdecon.science.dataset import read_dataset

    path = Path(config.data) if config.data else out / f"sim_n{config.n}_seed{config.seed}.npz"
    if path.exists():
        dataset = read_dataset(path)
    else:
        from galdecon.science.simulate import simulate, write_dataset

        t0 = time.perf_counter()
        dataset = simulate(config.n, seed=config.seed, snr=[config.snr])
        write_dataset(path, dataset)
        log.info("simulated %d galaxies in %.1f s", config.n, time.perf_counter() - t0)
    if float(config.snr) not in dataset["noisy"]:
        raise InputError(f"{path}: no noisy stack at SNR {config.snr:g}; it has "
                            f"{sorted(dataset['noisy'])}")
    images, psfs = dataset["noisy"][float(config.snr)], dataset["psfs"]
    n = min(config.n, len(images)) if config.data else len(images)
    return images[:n], psfs[:n], {"path": str(path), "n": n, "snr": config.snr}


def machine_facts() -> dict:
    """Cores, memory, load and versions, recorded beside every measurement."""
    import numpy
    import psutil
    import scipy

    facts = {"platform": platform.platform(), "machine": platform.machine(),
             "cpus": os.cpu_count(), "memory_gib": psutil.virtual_memory().total / 2**30,
             "load_average": os.getloadavg(), "python": platform.python_version(),
             "galdecon": __version__, "numpy": numpy.__version__, "scipy": scipy.__version__}
    try:
        import pyspark

        from galdecon.engines.spark.cluster import find_java, java_major_version

        facts["pyspark"] = pyspark.__version__
        java = find_java()
        facts["java"] = java_major_version(java) if java else None
    except ImportError:
        facts["pyspark"] = None
    return facts


# -- timed runs -------------------------------------------------------------------------------
def timed_run(engine, images, psfs, settings: Settings, sync_every: int) -> dict:
    """Scatter, set up and run; the times per iteration and the cost history."""
    t0 = time.perf_counter()
    engine.scatter({"images": images, "psfs": psfs, "primal": None}, len(images))
    t_scatter = time.perf_counter() - t0
    driver = Driver(engine, settings, len(images), images.shape[1:], sync_every=sync_every)
    driver.setup()
    history = driver.run()
    primal = engine.gather("primal")
    total = time.perf_counter() - t0
    # low rank synchronises every iteration, whatever sync_every says
    step = driver.sync_every if settings.mode == "sparse" else 1
    return {"scatter_s": t_scatter, "setup_s": driver.setup_seconds, "total_s": total,
            "sync_every": step, "iteration_seconds": history.iteration_seconds,
            "cost_iterations": history.cost_iterations, "costs": history.costs,
            "primal_norm": float(np.linalg.norm(primal))}


def iteration_stats(run: dict, warm_up: int) -> dict:
    """Mean, std and median seconds per iteration after the first ``warm_up`` iterations."""
    # One value per sync: the iterations of one sync share its time.
    values = run["iteration_seconds"][warm_up::run["sync_every"]]
    return {"mean_s": float(np.mean(values)), "std_s": float(np.std(values)),
            "median_s": float(statistics.median(values)), "syncs_timed": len(values)}


def timing_settings(mode: str, iterations: int) -> Settings:
    """Settings of a timed run: exactly ``iterations`` iterations, no reweighting."""
    return Settings(mode=mode, n_iter=iterations, tolerance=0.0, n_reweights=0)


# -- the reference-style loop ---------------------------------------------------------------
def reference_loop_speed(images, psfs, iterations: int, local_seconds: float,
                         n_local: int) -> dict:
    """Time the per-galaxy loop on a subset; compare per galaxy with the local engine."""
    from galdecon.bench.reference_loop import ReferenceLoop
    from galdecon.core.operators.wavelet import atrous_filters

    settings = Settings(n_iter=1)
    engine = LocalEngine()
    engine.scatter({"images": images, "psfs": psfs, "primal": None}, len(images))
    driver = Driver(engine, settings, len(images), images.shape[1:])
    problem = driver.setup()
    weights = engine.gather("weights")
    engine.close()
    filters = atrous_filters(images.shape[1:], settings.n_scales, settings.wavelet)
    loop = ReferenceLoop(images, psfs, filters, weights, problem.tau, problem.sigma,
                         settings.relax)
    primal = np.ones_like(images, dtype=np.float64)
    dual = np.ones((len(images), settings.n_bands) + images.shape[1:])
    seconds = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        primal, dual, _ = loop.iterate(primal, dual)
        seconds.append(time.perf_counter() - t0)
    per_galaxy_loop = statistics.median(seconds) / len(images)
    per_galaxy_local = local_seconds / n_local
    return {"subset": len(images), "iterations": iterations, "seconds": seconds,
            "per_galaxy_loop_s": per_galaxy_loop, "per_galaxy_local_s": per_galaxy_local,
            "loop_s_per_iteration_at_n": per_galaxy_loop * n_local,
            "speedup": per_galaxy_loop / per_galaxy_local}


# -- the whole benchmark ------------------------------------------------------------------------
def run_bench(config: BenchConfig, out: Path, say=print) -> dict:
    """Run every measurement; write bench.json, bench.csv, the figures and summary.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images, psfs, data_facts = load_data(config, out)
    n = len(images)
    result = {"config": asdict(config), "data": data_facts, "machine": machine_facts(),
              "fig2": [], "fig3": [], "fig4": [], "loop": None}
    say(f"galdecon bench: n={n}, SNR {config.snr:g}, master {config.master}, "
        f"partitions {list(config.partitions)}, K {list(config.syncs)}")

    def fig2_row(engine_name, mode, partitions, sync, run, warm_up):
        row = {"engine": engine_name, "mode": mode, "partitions": partitions, "sync": sync,
               **iteration_stats(run, warm_up), "setup_s": run["setup_s"],
               "scatter_s": run["scatter_s"]}
        result["fig2"].append(row)
        say(f"  {engine_name:<6s} {mode:<6s} N={partitions:<4d} K={sync:<3d} "
            f"{row['median_s']:.3f} s/it (mean {row['mean_s']:.3f} ± {row['std_s']:.3f})")
        return row

    # Fig. 2, the standalone point: the local engine.
    local = LocalEngine()
    for mode in config.modes:
        for sync in (config.syncs if mode == "sparse" else (1,)):
            timed = config.timing_iterations if mode == "sparse" else \
                config.lowr_timing_iterations
            run = timed_run(local, images, psfs, timing_settings(mode, timed + sync), sync)
            fig2_row("local", mode, 1, sync, run, sync)
    # Fig. 4, standalone: a full run.
    full = timed_run(local, images, psfs, timing_settings("sparse", config.iterations),
                     None)
    result["fig4"].append({"engine": "local", **_curve(full)})
    say(f"  local  sparse {config.iterations} iterations: {full['total_s']:.1f} s")
    local.close()

    spark_result = _spark_parts(config, images, psfs, result, fig2_row, say)
    result["spark"] = spark_result

    local_sparse = [r for r in result["fig2"] if r["engine"] == "local"
                    and r["mode"] == "sparse"]
    if config.loop_subset and local_sparse:
        best_local = min(r["median_s"] for r in local_sparse)
        subset = min(config.loop_subset, n)
        result["loop"] = reference_loop_speed(images[:subset], psfs[:subset],
                                              config.loop_iterations, best_local, n)
        say(f"  per-galaxy loop (reference style): {result['loop']['per_galaxy_loop_s'] * 1e3:.2f}"
            f" ms per galaxy per iteration, {result['loop']['speedup']:.0f}x the local engine")
    if local_sparse:
        from galdecon.bench.floor import floor_estimate

        best_local = min(r["median_s"] for r in local_sparse)
        result["floor"] = floor_estimate(n, os.cpu_count() or 1, best_local,
                                         size=images.shape[1])
        say(f"  floor of a sparse iteration here: {result['floor']['floor_s']:.3f} s; the "
            f"local engine takes {best_local:.3f} s "
            f"({100 * result['floor']['fraction_of_floor']:.0f}% of the way there)")
    from galdecon.bench.report import write_outputs

    write_outputs(result, out)
    return result


def _curve(run: dict) -> dict:
    elapsed = run["scatter_s"] + run["setup_s"] + np.cumsum(run["iteration_seconds"])
    at = [int(i) - 1 for i in run["cost_iterations"]]
    return {"total_s": run["total_s"], "setup_s": run["setup_s"], "scatter_s": run["scatter_s"],
            "sync": run["sync_every"], "elapsed_s": [float(elapsed[i]) for i in at],
            "costs": run["costs"], "iterations": len(run["iteration_seconds"])}


def _spark_parts(config, images, psfs, result, fig2_row, say) -> dict | None:
    """The Spark rows of Figs. 2-4 (timed runs per mode, K and N, then a full run).

    Returns the session's facts, or None when Spark is not available.
    """
    try:
        from galdecon.engines.spark.cluster import StandaloneCluster, require_spark
        from galdecon.engines.spark.engine import SparkEngine

        require_spark()
    except Exception as exc:  # noqa: BLE001 - the local parts stand on their own
        say(f"  Spark parts skipped: {exc}")
        return None
    cluster = None
    scratch = tempfile.mkdtemp(prefix="galdecon-bench-")
    try:
        master = config.master
        if config.cluster:
            cluster = StandaloneCluster(n_workers=config.cluster_workers, cores=1,
                                        memory="2g").start()
            master = cluster.url
        t0 = time.perf_counter()
        session_engine = SparkEngine(master=master, driver_memory=config.driver_memory,
                                     local_dir=scratch)
        session_seconds = time.perf_counter() - t0
        spark = session_engine.spark
        groups = _sample_groups(spark, cluster)
        say(f"  Spark {spark.version} session on {master} in {session_seconds:.1f} s")
        best = None
        for mode in config.modes:
            for sync in (config.syncs if mode == "sparse" else (1,)):
                timed = config.timing_iterations if mode == "sparse" else \
                    config.lowr_timing_iterations
                for parts in config.partitions:
                    with Sampler(groups, config.sample_seconds) as sampler, \
                            SparkEngine(spark=spark, partitions=parts) as engine:
                        run = timed_run(engine, images, psfs,
                                        timing_settings(mode, timed + sync), sync)
                    fig2_row("spark", mode, parts, sync, run, sync)
                    result["fig3"].append({"mode": mode, "partitions": parts, "sync": sync,
                                           "samples": sampler.samples})
                    row = result["fig2"][-1]
                    if mode == "sparse" and (best is None or row["median_s"] < best["median_s"]):
                        best = row
        if best is not None:
            _spark_full_run(spark, groups, best, config, images, psfs, result,
                            session_seconds, say)
        facts = session_engine.facts() | {"session_start_s": session_seconds}
        session_engine.close()
        return facts
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def _sample_groups(spark, cluster) -> dict:
    """The process groups to sample: the driver, and each worker of a standalone cluster."""
    local_dir = spark.sparkContext.getConf().get("spark.local.dir")
    groups = {"driver": ([local_dir], [os.getpid()])}
    if cluster is not None:
        for index, process in enumerate(cluster.worker_processes()):
            groups[f"worker{index}"] = ([os.path.join(cluster.worker_dir(index), "local")],
                                        [process.pid])
    return groups


def _spark_full_run(spark, groups, best, config, images, psfs, result, session_seconds,
                    say) -> None:
    """Fig. 4 on Spark: a full sparse run with the fastest partitions and sync interval."""
    from galdecon.engines.spark.engine import SparkEngine

    with Sampler(groups, config.sample_seconds) as sampler, \
            SparkEngine(spark=spark, partitions=best["partitions"]) as engine:
        full = timed_run(engine, images, psfs,
                         timing_settings("sparse", config.iterations), best["sync"])
    curve = _curve(full)
    curve |= {"engine": "spark", "partitions": best["partitions"],
              "end_to_end_s": session_seconds + full["total_s"]}
    result["fig4"].append(curve)
    result["fig3"].append({"mode": "sparse", "partitions": best["partitions"],
                           "sync": best["sync"], "full_run": True,
                           "samples": sampler.samples})
    say(f"  spark  sparse {config.iterations} iterations (N={best['partitions']}, "
        f"K={best['sync']}): {full['total_s']:.1f} s, end to end with the session "
        f"start {curve['end_to_end_s']:.1f} s")
