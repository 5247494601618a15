"""Spark runs that are stopped, resumed, lose Python workers or lose a whole worker.

Resumed and recovered runs equal the uninterrupted run: bit for bit on the same engine
and layout, within 1e-12 across engines.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import psutil
import pytest

import galdecon
from galdecon.errors import EngineError, RunInterrupted
from galdecon.run import checkpoint
from galdecon.run.interrupt import StopRequest
from spark_fixtures import EXAMPLE_DIR, FailTimes, relative_error, spark_or_skip

pytestmark = pytest.mark.spark
# Synchronising every 4 iterations (not Spark's default 16) gives the faults more jobs to hit;
# every run below uses it, since the step boundaries change the rounding.
OPTIONS = {"n_iter": 24, "n_reweights": 1, "tolerance": 0.0, "wavelet": "linear",
           "sync_every": 4}


@pytest.fixture(scope="module")
def stack():
    images = np.load(EXAMPLE_DIR / "example_image_stack.npy")[:48]
    psfs = np.load(EXAMPLE_DIR / "example_psfs.npy")[:48]
    return images, psfs


@pytest.fixture(scope="module")
def spark_reference(spark_session, stack):
    return galdecon.deconvolve(*stack, engine="spark", partitions=3, **OPTIONS)


def python_workers() -> list[psutil.Process]:
    """The PySpark daemon and worker processes under this process."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "pyspark.daemon" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def test_stop_cancels_the_job_and_resume_is_bitwise(spark_session, stack, spark_reference,
                                                    tmp_path):
    stop = StopRequest()

    def progress(done, planned, cost):
        if done >= 16:  # ask while the next job is being submitted: it is cancelled
            threading.Timer(0.02, stop.request, args=(signal.SIGINT,)).start()

    with pytest.raises(RunInterrupted) as info:
        galdecon.deconvolve(*stack, engine="spark", partitions=3, progress=progress, stop=stop,
                            checkpoint=tmp_path / "ck", checkpoint_every=0, **OPTIONS)
    assert info.value.iteration >= 16 and checkpoint.load(tmp_path / "ck").meta["engine"] == \
        "spark"
    resumed = galdecon.deconvolve(*stack, engine="spark", partitions=3,
                                  resume=tmp_path / "ck", **OPTIONS)
    np.testing.assert_array_equal(resumed.primal, spark_reference.primal)
    np.testing.assert_array_equal(resumed.dual, spark_reference.dual)
    assert resumed.record["history"]["costs"] == spark_reference.record["history"]["costs"]
    # a Spark checkpoint resumed locally (other blocks: equal to rounding)
    local = galdecon.deconvolve(*stack, resume=tmp_path / "ck", **OPTIONS)
    assert relative_error(local.primal, spark_reference.primal) <= 1e-12
    assert relative_error(local.dual, spark_reference.dual) <= 1e-12


def test_killed_python_workers_are_replaced_with_identical_result(spark_session, stack,
                                                                  spark_reference):
    killed = []

    def kill_workers():
        for proc in python_workers():
            try:
                proc.kill()
                killed.append(proc.pid)
            except psutil.Error:
                pass

    def progress(done, planned, cost):
        if done in (8, 28):  # during the next job, twice
            threading.Timer(0.05, kill_workers).start()

    result = galdecon.deconvolve(*stack, engine="spark", partitions=3, progress=progress,
                                 **OPTIONS)
    assert killed, "no PySpark worker process was found to kill"
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                   for pid in killed)
    assert python_workers()  # Spark started new ones
    np.testing.assert_array_equal(result.primal, spark_reference.primal)
    np.testing.assert_array_equal(result.dual, spark_reference.dual)


def test_a_job_that_keeps_failing_restarts_from_the_checkpoint(spark_session, stack,
                                                               spark_reference, tmp_path,
                                                               monkeypatch):
    # Every attempt of one task dies (4 attempts: the job fails) once armed after the first
    # checkpoint; the run is restarted from that checkpoint and ends as if nothing happened.
    from galdecon.run import driver

    arm = tmp_path / "armed"
    monkeypatch.setattr(driver, "_sparse_task",
                        FailTimes(driver._sparse_task, str(arm), str(tmp_path / "deaths"),
                                  start=16, times=4))

    def progress(done, planned, cost):
        if done >= 12 and not arm.exists():
            arm.write_text("")

    result = galdecon.deconvolve(*stack, engine="spark", partitions=3, progress=progress,
                                 checkpoint=tmp_path / "ck", checkpoint_every=8, **OPTIONS)
    assert len(list((tmp_path / "deaths").iterdir())) == 4
    failures = result.record["reliability"]["engine_failures"]
    assert len(failures) == 1 and "Py4JJavaError" in failures[0]
    assert "failed 4 times" in failures[0]  # Spark's own account: the task's 4 attempts
    np.testing.assert_array_equal(result.primal, spark_reference.primal)
    np.testing.assert_array_equal(result.dual, spark_reference.dual)
    assert result.record["history"]["costs"] == spark_reference.record["history"]["costs"]

    # Failing for good: the error says where the state is and how to resume.
    arm.unlink()
    monkeypatch.setattr(driver, "_sparse_task",
                        FailTimes(driver._sparse_task.fn, str(arm), str(tmp_path / "more"),
                                  start=16, times=10**6))
    with pytest.raises(EngineError, match=r"failed after 1 restart\(s\).*the state after "
                                          r"\d+ iterations is saved in .*--resume"):
        galdecon.deconvolve(*stack, engine="spark", partitions=3, progress=progress,
                            checkpoint=tmp_path / "ck2", checkpoint_every=8,
                            recoveries=1, **OPTIONS)


CLUSTER_SCRIPT = textwrap.dedent("""
    import json, sys, threading, time
    import numpy as np, psutil
    import galdecon
    from galdecon.engines.spark.cluster import start_session

    master, data_dir, scratch, victim, out = sys.argv[1:6]
    images = np.load(f"{data_dir}/example_image_stack.npy")[:64]
    psfs = np.load(f"{data_dir}/example_psfs.npy")[:64]
    options = dict(n_iter=24, n_reweights=1, tolerance=0.0, wavelet="linear", sync_every=4)
    spark = start_session(master, "galdecon-fault-test", scratch, driver_memory="1g")
    sc = spark.sparkContext
    status = sc._jsc.sc().getExecutorMemoryStatus
    deadline = time.monotonic() + 120
    while status().size() < 3 and time.monotonic() < deadline:  # driver + 2 executors
        time.sleep(0.5)
    before = status().size()
    reference = galdecon.deconvolve(images, psfs, engine="spark", partitions=4, **options)
    killed = []

    def kill_worker():  # the worker JVM, its executor and that executor's Python workers
        root = psutil.Process(int(victim))
        for proc in root.children(recursive=True) + [root]:
            try:
                proc.kill()
                killed.append(proc.pid)
            except psutil.Error:
                pass

    def progress(done, planned, cost):
        if done >= 12 and not killed:
            threading.Timer(0.05, kill_worker).start()

    result = galdecon.deconvolve(images, psfs, engine="spark", partitions=4,
                                 progress=progress, checkpoint=f"{scratch}/ck",
                                 checkpoint_every=8, **options)
    rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))
    json.dump({"x": rel(result.primal, reference.primal),
               "y": rel(result.dual, reference.dual),
               "costs": [result.record["history"]["costs"], reference.record["history"]["costs"]],
               "failures": result.record["reliability"]["engine_failures"],
               "killed": len(killed), "executors": [before, status().size()]}, open(out, "w"))
    spark.stop()
""")


@pytest.mark.cluster
def test_standalone_run_survives_losing_a_whole_worker(tmp_path, request):
    spark_or_skip()
    from galdecon.engines.spark.cluster import StandaloneCluster

    cluster = StandaloneCluster(n_workers=2, cores=1, memory="1g")
    request.addfinalizer(cluster.stop)
    cluster.start()
    victim = cluster.worker_processes()[1]
    script, out = tmp_path / "run.py", tmp_path / "out.json"
    script.write_text(CLUSTER_SCRIPT)
    (tmp_path / "scratch").mkdir()
    done = subprocess.run([sys.executable, str(script), cluster.url, str(EXAMPLE_DIR),
                           str(tmp_path / "scratch"), str(victim.pid), str(out)],
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["killed"] >= 2  # the worker JVM and its executor at least
    assert victim.poll() is not None
    assert result["executors"] == [3, 2]  # driver + 2 executors, then one executor lost
    assert result["x"] <= 1e-12 and result["y"] <= 1e-12
    assert result["costs"][0] == pytest.approx(result["costs"][1], rel=1e-12)
    # The lost executor held blocks whose lineage was cut (localCheckpoint): Spark cannot
    # recompute them ("Checkpoint block ... not found"), so the run restarted from its
    # last checkpoint, on the worker that is left.
    assert 1 <= len(result["failures"]) <= 2
    assert "not found" in result["failures"][0]


def test_cli_sigint_on_spark_checkpoints_and_resumes(tmp_path):
    # A real SIGINT to `galdecon deconvolve --engine spark` (whose SparkContext installs a
    # SIGINT handler of its own): it stops within seconds with a checkpoint; the resumed
    # run (here on the local engine) ends where the uninterrupted Spark run does.
    spark_or_skip()
    images, psfs = EXAMPLE_DIR / "example_image_stack.npy", EXAMPLE_DIR / "example_psfs.npy"
    common = ["-i", images, "-p", psfs, "--n-iter", 60, "--n-reweights", 1,
              "--convergence", 0, "--no-plots", "-q", "--sync-every", 4]
    spark = ["--engine", "spark", "--master", "local[2]", "--pn", 2]

    def cli(*args):
        return [sys.executable, "-m", "galdecon", "deconvolve", *map(str, args)]

    done = subprocess.run(cli(*common, *spark, "-o", tmp_path / "whole"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ck = tmp_path / "run_checkpoint"
    process = subprocess.Popen(cli(*common, *spark, "-o", tmp_path / "run",
                                   "--checkpoint-every", 8),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (ck / checkpoint.STATE_FILE).exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    t0 = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert time.monotonic() - t0 < 15
    assert process.returncode == 130, err[-2000:]
    assert f"--resume {ck}" in err
    assert not (tmp_path / "run_primal.npy").exists()
    done = subprocess.run(cli("--resume", ck, "--engine", "local"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for part in ("primal", "dual"):
        assert relative_error(np.load(tmp_path / f"run_{part}.npy"),
                              np.load(tmp_path / f"whole_{part}.npy")) <= 1e-12
