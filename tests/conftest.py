"""Shared fixtures: the bundled sf_deconvolve example (100 stamps of 41×41 with their PSFs)."""

from pathlib import Path

import numpy as np
import pytest

EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "sf_deconvolve_example"


def _read_only(path):
    array = np.load(path)
    array.setflags(write=False)  # a test that writes into shared data fails loudly
    return array


@pytest.fixture(scope="session")
def example_images():
    """Observed stamps of the example, shape (100, 41, 41), float64, read-only."""
    return _read_only(EXAMPLE_DIR / "example_image_stack.npy")


@pytest.fixture(scope="session")
def example_psfs():
    """One PSF per example stamp, shape (100, 41, 41), float32 (as shipped), read-only."""
    return _read_only(EXAMPLE_DIR / "example_psfs.npy")


# Two cores; a task may fail three times and still be retried (the failure tests need it).
SPARK_TEST_MASTER = "local[2,4]"


@pytest.fixture(scope="session")
def spark_session(tmp_path_factory):
    """A classic SparkSession shared by every Spark test (the JVM starts once)."""
    from spark_fixtures import spark_or_skip

    spark_or_skip()
    from galdecon.engines.spark.cluster import start_session

    scratch = tmp_path_factory.mktemp("spark-local")
    spark = start_session(SPARK_TEST_MASTER, "galdecon-tests", str(scratch),
                          driver_memory="2g")
    yield spark
    spark.stop()
