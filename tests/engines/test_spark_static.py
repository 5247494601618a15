"""The Spark engine's static data: persisted once, never recomputed, recovered when lost.

Every map zips the state with the tiles' static data (images, PSFs); the static RDD is
made once per scatter and a Python worker reuses what it has unpickled. These tests count
the store reads that build the static data, and lose it on purpose.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from galdecon.core.problem import Settings
from galdecon.engines.local import LocalEngine
from galdecon.run.driver import Driver, _sparse_task
from spark_fixtures import EXAMPLE_DIR, CountingStack, relative_error, spark_or_skip

pytestmark = pytest.mark.spark
N = 40
SETTINGS = Settings(n_iter=8, tolerance=0.0, n_reweights=0)


@pytest.fixture(scope="module")
def stack():
    images = np.load(EXAMPLE_DIR / "example_image_stack.npy")[:N]
    psfs = np.load(EXAMPLE_DIR / "example_psfs.npy")[:N].astype(np.float64)
    return images, psfs


@pytest.fixture(scope="module")
def local_run(stack):
    images, psfs = stack
    engine = LocalEngine()
    engine.scatter({"images": images, "psfs": psfs, "primal": None}, N)
    driver = Driver(engine, SETTINGS, N, images.shape[1:], sync_every=4)
    driver.setup()
    driver.run()
    return engine.gather("primal"), engine.gather("dual")


def store_engine(session, stack, tmp_path):
    """A Spark engine scattered from a chunked store (4 tiles), and its read counter."""
    pytest.importorskip("zarr")
    from galdecon.data import chunked
    from galdecon.data.sources import StoreStack
    from galdecon.engines.spark.engine import SparkEngine

    images, psfs = stack
    chunked.write_store(tmp_path / "in.zarr", {"images": images, "psfs": psfs}, chunk=10)
    reads = session.sparkContext.accumulator(0)
    source = CountingStack(StoreStack.open(str(tmp_path / "in.zarr")), reads)
    engine = SparkEngine(spark=session, partitions=2, block_size=10)
    engine.scatter_source(source, N)
    assert len(engine.tile_bounds) == 4
    return engine, reads


def persisted(session) -> set:
    return set(session.sparkContext._jsc.getPersistentRDDs().keys())


def test_static_data_is_read_once_and_only_the_state_moves(spark_session, stack, tmp_path,
                                                          local_run):
    spark_or_skip()
    images, _ = stack
    engine, reads = store_engine(spark_session, stack, tmp_path)
    static_id = engine._static.id()
    assert reads.value == 4  # one read per tile; a fresh state needs none
    driver = Driver(engine, SETTINGS, N, images.shape[1:], sync_every=4)
    driver.setup()
    driver.run()
    primal, dual = engine.gather("primal"), engine.gather("dual")
    engine.reduce(lambda b: b.size, lambda a, b: a + b)
    # a dozen jobs later: the same static RDD, still persisted, never read again
    assert reads.value == 4 and engine._static.id() == static_id
    assert persisted(spark_session) >= {static_id, engine._state.rdd.id()}
    # what the state RDD holds: the state fields only, not the images or PSFs
    record = engine._state.rdd.first()
    assert "images" not in record and "psfs" not in record
    assert record["primal"].shape == (10, 41, 41)
    assert relative_error(primal, local_run[0]) <= 1e-10
    assert relative_error(dual, local_run[1]) <= 1e-10
    engine.close()
    assert static_id not in persisted(spark_session)


def test_lost_static_data_is_recovered_exactly(spark_session, stack, tmp_path, local_run):
    spark_or_skip()
    from galdecon.engines.spark import worker

    images, _ = stack
    engine, reads = store_engine(spark_session, stack, tmp_path)
    driver = Driver(engine, SETTINGS, N, images.shape[1:], sync_every=4)
    driver.setup()
    mask = np.zeros(4, dtype=bool)
    task = partial(_sparse_task, problem=driver.problem, n_iter=4, mask=mask)
    engine.map(task)
    # The JVM loses the static blocks and the Python workers forget what they cached.
    sc = spark_session.sparkContext
    level = engine._static.getStorageLevel()
    engine._static.unpersist(blocking=True)  # the blocks go, as when an executor dies ...
    engine._static.persist(level)  # ... but the RDD stays one to keep
    sc.parallelize(range(8), 8).foreach(
        lambda _: worker.STATIC.clear())
    engine.map(task)  # 8 iterations in all, as the local run
    assert reads.value == 8  # the static blocks were read again from the store, once each
    assert relative_error(engine.gather("primal"), local_run[0]) <= 1e-10
    assert relative_error(engine.gather("dual"), local_run[1]) <= 1e-10
    assert reads.value == 8  # and kept again
    engine.close()


def test_replaced_static_field_travels_with_the_state(spark_session, stack):
    spark_or_skip()
    from galdecon.engines.spark.engine import SparkEngine

    images, psfs = stack
    engine = SparkEngine(spark=spark_session, partitions=2, block_size=10)
    engine.scatter({"images": images, "psfs": psfs, "primal": None}, N)

    def halve(block):
        return block.evolve(images=block.images / 2), None

    engine.map(halve)
    engine.map(lambda block: (block.evolve(), None))  # the replaced images stay replaced
    np.testing.assert_array_equal(engine.gather("images"), images / 2)
    np.testing.assert_array_equal(engine.gather("psfs"), psfs)
    assert "images" in engine._state.rdd.first() and "psfs" not in engine._state.rdd.first()
    engine.close()


def test_storage_choice_keeps_the_heap_while_two_generations_fit():
    from galdecon.engines.spark.tiles import STATE_ARRAYS_PER_GALAXY, choose_storage, tiles_bytes

    per_galaxy = 2 * 1681 * 8 * STATE_ARRAYS_PER_GALAXY  # two generations, float64
    assert 2 * tiles_bytes(10_000, 1681) == 10_000 * per_galaxy
    assert choose_storage("auto", 10_000 * per_galaxy, 10_000 * per_galaxy) == "memory"
    assert choose_storage("auto", 10_001 * per_galaxy, 10_000 * per_galaxy) == "disk"
    assert choose_storage("memory", 10**6 * per_galaxy, 1) == "memory"
    assert choose_storage("disk", per_galaxy, 2**40) == "disk"


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_tiles_on_disk_give_the_same_run_as_in_the_heap(spark_session, stack, local_run,
                                                        tmp_path, storage):
    spark_or_skip()
    from galdecon.engines.spark.engine import SparkEngine
    from galdecon.errors import EngineError

    images, psfs = stack
    engine = SparkEngine(spark=spark_session, partitions=2, block_size=10, storage=storage)
    engine.scatter({"images": images, "psfs": psfs, "primal": None}, N)
    driver = Driver(engine, SETTINGS, N, images.shape[1:], sync_every=4)
    driver.setup()
    driver.run()
    level = engine._state.rdd.getStorageLevel()
    assert (level.useMemory, level.useDisk) == ((True, True) if storage == "memory"
                                                else (False, True))
    static_level = engine._static.getStorageLevel()
    assert static_level.useMemory == (storage == "memory")
    assert engine.facts()["storage"] == storage
    # bit for bit the local engine's run with the same steps
    np.testing.assert_array_equal(engine.gather("primal"), local_run[0])
    np.testing.assert_array_equal(engine.gather("dual"), local_run[1])
    engine.close()
    with pytest.raises(EngineError, match="option storage='ram'"):
        SparkEngine(spark=spark_session, storage="ram")


def test_auto_storage_of_a_store_run_fits_the_heap_for_a_small_stack(spark_session, stack,
                                                                     tmp_path):
    spark_or_skip()
    engine, _ = store_engine(spark_session, stack, tmp_path)
    assert engine.storage == "auto" and engine.facts()["storage"] == "memory"
    engine.close()
