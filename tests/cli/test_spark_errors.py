"""Spark failures as a user sees them: fast, one line, traces only with -v (real Spark)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from galdecon.engines.spark.cluster import master_addresses
from spark_fixtures import EXAMPLE_DIR, spark_or_skip


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "galdecon", "deconvolve", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_master_urls_are_split_into_addresses():
    assert master_addresses("spark://127.0.0.1:7078") == [("127.0.0.1", 7078)]
    assert master_addresses("spark://a:1,b:2") == [("a", 1), ("b", 2)]
    assert master_addresses("spark://host") == [("host", 7077)]
    assert master_addresses("local[2]") == []


def test_an_unreachable_master_fails_at_once_in_one_line(tmp_path):
    spark_or_skip()
    t0 = time.monotonic()
    done = cli("-i", EXAMPLE_DIR / "example_image_stack.npy", "-p",
               EXAMPLE_DIR / "example_psfs.npy", "-o", tmp_path / "out", "--engine", "spark",
               "--master", "spark://127.0.0.1:1", "--no-plots")
    elapsed = time.monotonic() - t0
    assert done.returncode == 2 and elapsed < 15  # was 69 s and a 2.8 kB line of Java
    assert done.stderr.strip().splitlines() == [
        "galdecon: error: cannot reach the Spark master spark://127.0.0.1:1 (127.0.0.1:1: "
        "Connection refused); is it running? (or run locally: --master 'local[*]')"]
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def corrupt_store(tmp_path_factory):
    pytest.importorskip("zarr")
    from galdecon.data import chunked

    root = tmp_path_factory.mktemp("corrupt")
    images = np.load(EXAMPLE_DIR / "example_image_stack.npy")[:60]
    psfs = np.load(EXAMPLE_DIR / "example_psfs.npy")[:60]
    chunked.write_store(root / "in.zarr", {"images": images, "psfs": psfs}, chunk=15,
                        compression="none")
    victim = sorted(p for p in (root / "in.zarr" / "images").iterdir()
                    if p.name[0].isdigit())[2]
    data = bytearray(victim.read_bytes())
    data[100:108] = b"\xff" * 8
    victim.write_bytes(bytes(data))
    return root / "in.zarr"


def test_a_worker_error_is_one_line_and_its_trace_needs_verbose(corrupt_store, tmp_path):
    spark_or_skip()
    common = ["-i", corrupt_store, "--engine", "spark", "--master", "local[2]", "--no-plots"]
    quiet = cli(*common, "-o", tmp_path / "a")
    assert quiet.returncode == 2
    lines = [line for line in quiet.stderr.splitlines()
             if not line.startswith("WARNING: Using incubator modules")]  # the JVM's own
    errors = [line for line in lines if line.startswith("galdecon: error: ")]
    assert len(errors) == 1 and "array 'images' chunk 2 (galaxies 30 to 44) is corrupt" \
        in errors[0]
    assert "ERROR Executor" not in quiet.stderr and "PythonException" not in quiet.stderr
    # What may remain: PySpark's daemon prints a 4-line BrokenPipeError when the task it
    # serves is cancelled (it writes to its stderr directly, past any log setting).
    daemon = [line for line in lines if not line.startswith("galdecon: ")]
    assert len(daemon) <= 4 and all("pyspark" in line or "BrokenPipe" in line or
                                    "Traceback" in line for line in daemon), quiet.stderr
    verbose = cli(*common, "-o", tmp_path / "b", "-v")
    assert verbose.returncode == 2 and "Executor: Exception in task" in verbose.stderr
    assert not any(Path(tmp_path).iterdir())
