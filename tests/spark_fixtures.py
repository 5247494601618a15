"""Helpers for the Spark engine tests (imported by test_spark.py, which holds the fixtures).

Workers cannot import this module, so it is registered with Spark's cloudpickle to travel
by value: :class:`FailOnce` is sent to the workers.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from galdecon.core.problem import Settings
from galdecon.engines.local import LocalEngine
from galdecon.run.driver import Driver

EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "sf_deconvolve_example"


def spark_or_skip():
    """Return the pyspark module, or skip the test with the reason."""
    pyspark = pytest.importorskip("pyspark", reason="pyspark is not installed "
                                  "(pip install 'galdecon[spark]')")
    from galdecon.engines.spark.cluster import find_java, java_major_version

    java = find_java()
    major = java_major_version(java) if java else None
    needed = 17 if int(pyspark.__version__.split(".")[0]) >= 4 else 8
    if major is None or major < needed:
        pytest.skip(f"Java {needed}+ is not installed (found: {major})")
    return pyspark


def deconvolve(engine, images, psfs, settings: Settings, sync_every: int = 1):
    """Scatter, set up and run; return (primal, dual, history, driver)."""
    engine.scatter({"images": images, "psfs": psfs, "primal": None}, len(images))
    driver = Driver(engine, settings, len(images), images.shape[1:], sync_every=sync_every)
    driver.setup()
    history = driver.run()
    return engine.gather("primal"), engine.gather("dual"), history, driver


def matching_local(spark_engine) -> LocalEngine:
    """A local engine whose blocks are exactly the Spark engine's tiles (after scatter).

    Low-rank iterates depend on the block layout at the 1e-10 level through the rounding of
    the batched products (between two local layouts as well), so equality to 1e-10 is
    tested against the same layout.
    """
    tiles = spark_engine.tile_bounds
    return LocalEngine(n_blocks=len(tiles))


def relative_error(a, b) -> float:
    """‖a − b‖ / ‖b‖."""
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


class FailOnce:
    """Wrap a block function so that its first call on one tile kills the Python worker.

    A marker file records that the failure happened; Spark must retry the task (in a
    fresh worker) and the run must end as if nothing had happened.
    """

    def __init__(self, fn, marker: str, start: int):
        self.fn, self.marker, self.start = fn, marker, start

    def __call__(self, block):
        if block.start == self.start and not os.path.exists(self.marker):
            with open(self.marker, "w") as handle:
                handle.write(str(os.getpid()))
            os._exit(17)  # no exception, no clean-up: the worker process simply dies
        return self.fn(block)


class FailTimes:
    """Wrap a block function: once ``arm`` exists, kill the worker on tile ``start``.

    Each death leaves a file in ``deaths``; after ``times`` deaths the function works
    again. Four deaths in a row exhaust the task's attempts and fail the job.
    """

    def __init__(self, fn, arm: str, deaths: str, start: int, times: int):
        self.fn, self.arm, self.deaths, self.start, self.times = fn, arm, deaths, start, times

    def __call__(self, block, **kwargs):
        if block.start == self.start and os.path.exists(self.arm):
            os.makedirs(self.deaths, exist_ok=True)
            if len(os.listdir(self.deaths)) < self.times:
                with open(os.path.join(self.deaths, f"{os.getpid()}-{time.time_ns()}"), "w"):
                    pass
                os._exit(17)
        return self.fn(block, **kwargs)


class CountCalls:
    """Wrap a block function and count its calls in a Spark accumulator."""

    def __init__(self, fn, counter):
        self.fn, self.counter = fn, counter

    def __call__(self, block):
        self.counter.add(1)
        return self.fn(block)


class CountingStack:
    """A store stack whose reads (on the workers) add to a Spark accumulator."""

    def __init__(self, stack, reads):
        self.stack, self.reads = stack, reads
        self.shape, self.n_chunks = stack.shape, stack.n_chunks
        self.primal, self.state = stack.primal, stack.state

    def bounds(self, n_blocks):
        return self.stack.bounds(n_blocks)

    def read(self, start, stop):
        self.reads.add(1)
        return self.stack.read(start, stop)


def _ship_by_value():
    # Spark workers cannot import this test module, so its classes travel by value.
    try:
        from pyspark import cloudpickle
    except ImportError:  # pragma: no cover - the tests skip without pyspark
        return
    cloudpickle.register_pickle_by_value(sys.modules[__name__])


_ship_by_value()
