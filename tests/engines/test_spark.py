"""The Spark engine gives the local engine's numbers (ARCHITECTURE.md: engines agree).

Every test runs on one shared ``local[2,4]`` session (conftest.py); the cluster
test starts a standalone master and two workers on 127.0.0.1 and runs in a subprocess.
"""

from __future__ import annotations

import json
import operator
import pickle
import subprocess
import sys
import textwrap
from functools import partial

import numpy as np
import pytest

from galdecon.core.lowrank import low_rank_factors, nuclear_norm
from galdecon.core.noise import noise_sigma
from galdecon.core.operators.prox import svt
from galdecon.core.problem import Settings, mad_sigma
from galdecon.core.solver import operators, sparse_iterate
from galdecon.engines.local import LocalEngine
from galdecon.errors import EngineError
from galdecon.run.driver import _sparse_task
from spark_fixtures import (
    EXAMPLE_DIR,
    CountCalls,
    FailOnce,
    deconvolve,
    matching_local,
    relative_error,
    spark_or_skip,
)

pytestmark = pytest.mark.spark


@pytest.fixture(scope="session")
def example():
    """The bundled sf_deconvolve example: images and PSFs, (100, 41, 41) float64."""
    images = np.load(EXAMPLE_DIR / "example_image_stack.npy")
    psfs = np.load(EXAMPLE_DIR / "example_psfs.npy")
    return images, psfs


def spark_engine(session, **options):
    from galdecon.engines.spark.engine import SparkEngine

    return SparkEngine(spark=session, **options)


def assert_same_run(spark_run, local_run, tol=1e-10):
    x_s, y_s, h_s, _ = spark_run
    x_l, y_l, h_l, _ = local_run
    assert x_s.shape == x_l.shape and y_s.shape == y_l.shape
    assert relative_error(x_s, x_l) <= tol
    assert relative_error(y_s, y_l) <= tol
    assert h_s.iterations_per_round == h_l.iterations_per_round
    assert h_s.converged_per_round == h_l.converged_per_round
    assert h_s.cost_iterations == h_l.cost_iterations
    np.testing.assert_allclose(h_s.costs, h_l.costs, rtol=tol, atol=0)


# -- pure helpers (no Spark job) ---------------------------------------------------------
def test_block_pickle_round_trip_drops_operators_only(example):
    images, psfs = example
    settings = Settings(n_iter=3, tolerance=0.0)
    local = LocalEngine(threads=1)
    _, _, _, driver = deconvolve(local, images[:5], psfs[:5], settings)
    block = local.blocks[0]
    operators(block, driver.problem)
    assert block._ops  # cached operators are present before pickling
    copy = pickle.loads(pickle.dumps(block))
    assert copy._ops == {}
    for name in ("images", "psfs", "primal", "dual", "weights", "weights0"):
        np.testing.assert_array_equal(getattr(copy, name), getattr(block, name))
    assert copy.start == block.start and copy.size == block.size
    new_a, costs_a = sparse_iterate(block, driver.problem, 2)
    new_b, costs_b = sparse_iterate(copy, driver.problem, 2)
    np.testing.assert_array_equal(new_a.dual, new_b.dual)
    np.testing.assert_array_equal(costs_a, costs_b)


def test_order_keys_sort_like_floats():
    from galdecon.core.noise import key_values, order_keys

    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0, 1e3, 500), rng.normal(0, 1e-300, 20),
                             [0.0, -0.0, np.inf, -np.inf, 5e-324, -5e-324, 1.0, -1.0]])
    keys = order_keys(values)
    assert keys.dtype == np.uint64
    np.testing.assert_array_equal(values[np.argsort(keys, kind="stable")], np.sort(values))
    np.testing.assert_array_equal(key_values(keys).view(np.uint64), values.view(np.uint64))


def test_missing_pyspark_is_one_clear_error(monkeypatch):
    from galdecon.engines.spark import cluster as spark_cluster

    monkeypatch.setitem(sys.modules, "pyspark", None)
    with pytest.raises(EngineError, match=r"pip install 'galdecon\[spark\]'"):
        spark_cluster.require_spark()


def test_missing_java_is_one_clear_error(monkeypatch):
    spark_or_skip()
    from galdecon.engines.spark import cluster as spark_cluster

    monkeypatch.setattr(spark_cluster, "find_java", lambda: None)
    with pytest.raises(EngineError, match=r"Java 17\+") as info:
        spark_cluster.require_spark()
    assert "\n" not in str(info.value)


# -- layout, reductions, σ -----------------------------------------------------------------
@pytest.mark.parametrize("partitions", [1, 3, 7, 100, 150])
def test_partitions_hold_contiguous_slices_in_order(spark_session, example, partitions):
    from galdecon.engines.base import block_bounds

    images, psfs = example
    engine = spark_engine(spark_session, partitions=partitions)
    engine.scatter({"images": images, "psfs": psfs, "primal": None}, len(images))
    layout = engine.blocks().mapPartitionsWithIndex(
        lambda index, tiles: [(index, [(t.start, t.stop) for t in tiles])]).collect()
    expected = block_bounds(len(images), partitions)
    assert [index for index, _ in layout] == list(range(len(expected)))
    for (start, stop), (_, tiles) in zip(expected, layout, strict=True):
        assert tiles[0][0] == start and tiles[-1][1] == stop
        assert all(a[1] == b[0] for a, b in zip(tiles[:-1], tiles[1:], strict=True))  # contiguous
        assert all(stop_ - start_ <= 64 for start_, stop_ in tiles)
    assert engine.tile_bounds == [t for _, tiles in layout for t in tiles]
    np.testing.assert_array_equal(engine.gather("images"), images)
    assert engine.reduce(lambda b: [b.start], operator.add) == [
        t[0] for t in engine.tile_bounds]  # folded in galaxy order
    facts = engine.facts()
    assert facts["engine"] == "spark" and facts["master"] == "local[2,4]"
    assert facts["partitions"] == len(expected) and facts["default_parallelism"] == 2
    assert facts["spark_version"] == spark_session.version


@pytest.mark.parametrize("partitions", [1, 7])
def test_noise_sigma_is_exact_on_the_example(spark_session, example, partitions):
    images, psfs = example
    engine = spark_engine(spark_session, partitions=partitions)
    engine.scatter({"images": images, "psfs": psfs, "primal": None}, len(images))
    assert noise_sigma(engine) == mad_sigma(images)
    assert noise_sigma(engine) == pytest.approx(3.11699e-4, rel=1e-5)  # ALGORITHM.md §9


@pytest.mark.parametrize("collect_limit", [0, 40, 1 << 20])
@pytest.mark.parametrize("shape", [(13, 5, 5), (12, 5, 5)])  # odd and even pixel counts
def test_noise_sigma_is_exact_with_ties(spark_session, monkeypatch, shape, collect_limit):
    from galdecon.core import noise as noise_module

    # A small collect limit forces every histogram level (0: all four) to be used.
    monkeypatch.setattr(noise_module, "COLLECT_LIMIT", collect_limit)
    rng = np.random.default_rng(7)
    images = rng.integers(-3, 6, size=shape) * 0.25  # a few distinct values, zeros
    images[0, 0, :3] = [-0.0, 1e-300, -7.5]
    psfs = np.full((3, 3), 1 / 9)
    engine = spark_engine(spark_session, partitions=4, block_size=2)
    engine.scatter({"images": images, "psfs": psfs, "primal": None}, len(images))
    expected = mad_sigma(images)
    assert expected > 0
    assert noise_sigma(engine) == expected
    # A continuous case where the two middle values differ (even count).
    images = rng.normal(size=shape)
    engine.scatter({"images": images, "psfs": psfs, "primal": None}, len(images))
    assert noise_sigma(engine) == mad_sigma(images)


def test_tsqr_factors_match_local_and_numpy(spark_session):
    # n > p: partitions fold their tiles' rows into R factors (every 3p = 75 rows), the
    # driver merges the partitions' triangles. Before issue 14 these were p × p Grams,
    # tree-aggregated through Spark's shuffle (written to disk at every level).
    rng = np.random.default_rng(3)
    u = np.linalg.qr(rng.normal(size=(90, 25)))[0]
    v = np.linalg.qr(rng.normal(size=(25, 25)))[0]
    values = 10 * np.logspace(0, -9, 25)
    images = ((u * values) @ v.T).reshape(90, 5, 5)
    psfs = np.full((3, 3), 1 / 9)
    spark = spark_engine(spark_session, partitions=7, block_size=4)
    local = LocalEngine(threads=1)
    for engine in (spark, local):
        engine.scatter({"images": images, "psfs": psfs, "primal": None}, len(images))

    def getter(block):
        return block.images

    for engine in (spark, local):
        assert nuclear_norm(engine, getter) == pytest.approx(values.sum(), rel=1e-13)
    threshold = float(np.sqrt(values[3] * values[4]))  # keeps exactly four components
    rows = images.reshape(90, -1)
    for engine in (spark, local):
        for kind in ("hard", "soft"):
            basis, scale = low_rank_factors(engine, getter, threshold, kind)
            assert basis.shape == (25, 4)
            out = (basis * scale) @ basis.T
            ref = svt(rows, threshold, kind)
            assert np.linalg.norm(rows @ out - ref) <= 1e-12 * np.linalg.norm(ref)


# -- whole runs: Spark equals local ------------------------------------------------------
@pytest.mark.parametrize(("partitions", "sync"), [(1, 1), (3, 4), (7, 8), (100, 4)])
def test_sparse_equals_local(spark_session, example, partitions, sync):
    images, psfs = example
    settings = Settings(mode="sparse", n_iter=16, tolerance=0.0, n_reweights=0)
    engine = spark_engine(spark_session, partitions=partitions)
    spark_run = deconvolve(engine, images, psfs, settings, sync)
    assert_same_run(spark_run, deconvolve(matching_local(engine), images, psfs, settings, 1))
    assert_same_run(spark_run, deconvolve(LocalEngine(), images, psfs, settings, 1))
    assert spark_run[2].iterations_per_round == [16]


def test_convergence_stop_mid_step_is_replayed(spark_session, example):
    # With tolerance 0.13 the test fires at iteration 20 (ratios 0.129 at 20, 1.62 at 16),
    # inside the step 17..24 of K=8: the engine must roll back and replay 4 iterations.
    images, psfs = example
    settings = Settings(mode="sparse", n_iter=40, tolerance=0.13, n_reweights=1)
    engine = spark_engine(spark_session, partitions=3)
    spark_run = deconvolve(engine, images, psfs, settings, sync_every=8)
    local_run = deconvolve(matching_local(engine), images, psfs, settings, sync_every=1)
    assert_same_run(spark_run, local_run)
    assert spark_run[2].iterations_per_round[0] == 20
    assert spark_run[2].converged_per_round[0]
    assert spark_run[2].rollbacks >= 1


def test_reweighting_round_equals_local(spark_session, example):
    images, psfs = example
    settings = Settings(mode="sparse", n_iter=8, tolerance=0.0, n_reweights=1)
    engine = spark_engine(spark_session, partitions=7)
    spark_run = deconvolve(engine, images, psfs, settings, sync_every=4)
    assert_same_run(spark_run, deconvolve(matching_local(engine), images, psfs, settings))
    assert spark_run[2].iterations_per_round == [8, 8]
    assert engine.gather("weights").shape == (100, 3, 41, 41)  # per-pixel after reweighting


@pytest.mark.parametrize(("partitions", "kind"), [(1, "hard"), (3, "hard"), (7, "hard"),
                                               (100, "hard"), (3, "soft"), (7, "soft")])
def test_low_rank_equals_local(spark_session, example, partitions, kind):
    # One map and one reduction per iteration (map_reduce): each partition folds its
    # tiles' TSQR factors, the driver merges the partitions'.
    images, psfs = example
    settings = Settings(mode="lowr", n_iter=12, tolerance=0.0, lowr_thresh_type=kind,
                        lowr_thresh_factor=1.0,  # the reference's λ, for §9's number
                        cost_window=1)  # and a cost every iteration, the first among them
    engine = spark_engine(spark_session, partitions=partitions)
    spark_run = deconvolve(engine, images, psfs, settings)
    assert_same_run(spark_run, deconvolve(matching_local(engine), images, psfs, settings))
    assert spark_run[2].costs[0] == pytest.approx(3.3515e3, rel=1e-4)  # ALGORITHM.md §9


def test_low_rank_default_cost_window_equals_local(spark_session, example):
    # the default window: the fused map returns the nuclear norm's factor only on the
    # iterations whose cost the test reads (every 10th)
    images, psfs = example
    settings = Settings(mode="lowr", n_iter=20, tolerance=0.0)
    engine = spark_engine(spark_session, partitions=3)
    spark_run = deconvolve(engine, images, psfs, settings)
    assert_same_run(spark_run, deconvolve(matching_local(engine), images, psfs, settings))
    assert spark_run[2].cost_iterations == [10, 20]


# -- state management, lineage, failures ---------------------------------------------------
def persisted_ids(session) -> set:
    return set(session.sparkContext._jsc.getPersistentRDDs().keys())


def test_snapshot_restore_release_and_unpersist(spark_session, example):
    images, psfs = example
    engine = spark_engine(spark_session, partitions=3)
    _, _, _, driver = deconvolve(engine, images[:12], psfs[:12],
                                 Settings(n_iter=2, tolerance=0.0, n_reweights=0))
    primal = engine.gather("primal")
    token = engine.snapshot()
    step = driver._sparse_step  # one real step through the engine
    step(3, np.ones(3, dtype=bool))
    moved = engine.gather("primal")
    assert not np.array_equal(moved, primal)
    assert token.rdd.id() in persisted_ids(spark_session)  # pinned while superseded
    engine.restore(token)
    np.testing.assert_array_equal(engine.gather("primal"), primal)
    superseded = engine.snapshot()
    step(3, np.ones(3, dtype=bool))
    engine.release(superseded)
    engine.release(token)
    assert superseded.rdd.id() not in persisted_ids(spark_session)
    np.testing.assert_array_equal(engine.gather("primal"), moved)  # replayed identically
    before = len(persisted_ids(spark_session))
    for _ in range(5):
        step(1, np.ones(1, dtype=bool))
    assert len(persisted_ids(spark_session)) == before  # one live state, nothing leaks


def test_map_computes_each_tile_once(spark_session, example):
    images, psfs = example
    engine = spark_engine(spark_session, partitions=3, block_size=20)
    _, _, _, driver = deconvolve(engine, images, psfs,
                                 Settings(n_iter=1, tolerance=0.0, n_reweights=0))
    n_tiles = len(engine.tile_bounds)
    assert n_tiles == 6
    calls = spark_session.sparkContext.accumulator(0)
    task = CountCalls(partial(_sparse_task, problem=driver.problem, n_iter=2,
                              mask=np.ones(2, dtype=bool)), calls)
    costs = engine.map(task)
    assert len(costs) == n_tiles and all(c.shape == (2,) for c in costs)
    engine.gather("primal")
    engine.gather("dual")
    engine.reduce(lambda b: b.size, operator.add)
    assert calls.value == n_tiles  # the map ran once per tile, later jobs read the cache


def test_three_hundred_maps_keep_lineage_short(spark_session, example):
    images, psfs = example
    engine = spark_engine(spark_session, partitions=2, lineage_every=20)
    settings = Settings(n_iter=300, tolerance=0.0, n_reweights=0, cost_window=4)
    _, _, history, _ = deconvolve(engine, images[:4], psfs[:4], settings, sync_every=1)
    assert history.iterations_per_round == [300]
    assert np.all(np.isfinite(history.costs)) and len(history.costs) == 75
    lineage = engine._state.rdd.toDebugString().decode()
    assert lineage.count("PythonRDD") <= 2 * 20  # cut every 20 maps, not 300 deep
    local = deconvolve(LocalEngine(n_blocks=2), images[:4], psfs[:4], settings)
    assert relative_error(engine.gather("primal"), local[0]) <= 1e-10


def test_task_failure_is_retried_with_identical_result(spark_session, example, tmp_path):
    from galdecon.engines.spark.engine import SparkEngine

    class FlakyEngine(SparkEngine):
        """Kills the Python worker in the 4th map (mid-run), on the tile of galaxy 40."""

        maps = 0

        def map(self, fn):
            self.maps += 1
            if self.maps == 4:
                fn = FailOnce(fn, str(tmp_path / "failed"), start=40)
            return super().map(fn)

    images, psfs = example
    settings = Settings(n_iter=12, tolerance=0.0, n_reweights=0)
    flaky = FlakyEngine(spark=spark_session, partitions=5)
    flaky_run = deconvolve(flaky, images, psfs, settings, sync_every=4)
    assert (tmp_path / "failed").exists()  # the failure did happen
    steady_run = deconvolve(spark_engine(spark_session, partitions=5), images, psfs,
                            settings, sync_every=4)
    np.testing.assert_array_equal(flaky_run[0], steady_run[0])
    np.testing.assert_array_equal(flaky_run[1], steady_run[1])
    assert flaky_run[2].costs == steady_run[2].costs


# -- a real standalone cluster -------------------------------------------------------------
CLUSTER_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from galdecon.run.driver import Driver
    from galdecon.engines.local import LocalEngine
    from galdecon.engines.spark.engine import SparkEngine
    from galdecon.core.problem import Settings

    master, data_dir, out, store_dir = sys.argv[1:5]
    images = np.load(f"{data_dir}/example_image_stack.npy")
    psfs = np.load(f"{data_dir}/example_psfs.npy")
    settings = Settings(mode="sparse", n_iter=8, tolerance=0.0, n_reweights=0)
    results = {}
    with SparkEngine(master=master, partitions=4, driver_memory="1g",
                     app_name="galdecon-cluster-test") as spark:
        status = spark._sc._jsc.sc().getExecutorMemoryStatus
        deadline = time.monotonic() + 120
        while status().size() < 3 and time.monotonic() < deadline:  # driver + 2 executors
            time.sleep(0.5)
        for name, engine in (("spark", spark), ("local", LocalEngine(n_blocks=4))):
            engine.scatter({"images": images, "psfs": psfs, "primal": None}, len(images))
            driver = Driver(engine, settings, len(images), images.shape[1:], sync_every=4)
            driver.setup()
            history = driver.run()
            results[name] = (engine.gather("primal"), engine.gather("dual"), history.costs)
        facts = spark.facts()
        executors = status().size()
        # the same run on chunked stores: the executors read and write the chunks
        store = None
        if store_dir != "-":
            import galdecon
            from galdecon.data import chunked
            from galdecon.data.sources import StoreStack

            chunked.write_store(f"{store_dir}/in.zarr", {"images": images, "psfs": psfs},
                                chunk=25)
            run = galdecon.deconvolve(StoreStack.open(f"{store_dir}/in.zarr"), None,
                                      engine="spark", spark=spark.spark, partitions=4,
                                      sync_every=4, n_iter=8, tolerance=0.0, n_reweights=0,
                                      output=chunked.create_store(f"{store_dir}/out.zarr"))
            xz = run.store.read("primal")
            store = float(np.linalg.norm(xz - results["local"][0])
                          / np.linalg.norm(results["local"][0]))
    (xs, ys, cs), (xl, yl, cl) = results["spark"], results["local"]
    json.dump({"x": float(np.linalg.norm(xs - xl) / np.linalg.norm(xl)),
               "y": float(np.linalg.norm(ys - yl) / np.linalg.norm(yl)),
               "costs": [cs, cl], "facts": facts, "executors": executors, "store": store},
              open(out, "w"))
""")


@pytest.mark.cluster
def test_standalone_cluster_equals_local(tmp_path, request):
    spark_or_skip()
    from galdecon.engines.spark.cluster import StandaloneCluster

    cluster = StandaloneCluster(n_workers=2, cores=1, memory="1g")
    request.addfinalizer(cluster.stop)  # master and workers stop even if the test fails
    cluster.start()
    script, out = tmp_path / "run.py", tmp_path / "out.json"
    script.write_text(CLUSTER_SCRIPT)
    try:
        import zarr  # noqa: F401 - the chunked extra
        store_dir = tmp_path
    except ImportError:
        store_dir = "-"
    done = subprocess.run([sys.executable, str(script), cluster.url, str(EXAMPLE_DIR),
                           str(out), str(store_dir)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    if store_dir != "-":  # chunked stores read and written by the two executors
        assert result["store"] <= 1e-10
    assert result["facts"]["master"] == cluster.url
    assert result["executors"] == 3  # the driver and one executor per worker
    assert result["x"] <= 1e-10 and result["y"] <= 1e-10
    np.testing.assert_allclose(result["costs"][0], result["costs"][1], rtol=1e-10)
    processes = list(cluster.processes)
    cluster.stop()
    assert all(p.poll() is not None for p in processes)


# -- the command line and the API on Spark ---------------------------------------------------
def test_cli_and_api_on_spark_equal_local(spark_session, example, tmp_path, capsys):
    import galdecon
    from galdecon.cli.app import main

    images_path = EXAMPLE_DIR / "example_image_stack.npy"
    psfs_path = EXAMPLE_DIR / "example_psfs.npy"
    common = ["deconvolve", "-i", images_path, "-p", psfs_path, "--n-iter", 8,
              "--n-reweights", 1, "--no-plots", "-q"]
    # The CLI joins the session that is running (and leaves it running).
    assert main([str(a) for a in common + ["-o", tmp_path / "s", "--engine", "spark",
                                           "--pn", 3, "--sync-every", 4]]) == 0
    assert main([str(a) for a in common + ["-o", tmp_path / "l"]]) == 0
    assert spark_session.sparkContext._jsc is not None
    assert relative_error(np.load(tmp_path / "s_primal.npy"),
                          np.load(tmp_path / "l_primal.npy")) <= 1e-10
    assert relative_error(np.load(tmp_path / "s_dual.npy"),
                          np.load(tmp_path / "l_dual.npy")) <= 1e-10
    spark_record = json.loads((tmp_path / "s_run.json").read_text())
    local_record = json.loads((tmp_path / "l_run.json").read_text())
    engine = spark_record["engine"]
    assert engine["engine"] == "spark" and engine["partitions"] == 3
    assert engine["sync_every"] == 4 and engine["spark_version"] == spark_session.version
    assert spark_record["result"]["iterations_per_round"] == [8, 8]
    assert (spark_record["result"]["iterations_per_round"]
            == local_record["result"]["iterations_per_round"])
    np.testing.assert_allclose(spark_record["history"]["costs"],
                               local_record["history"]["costs"], rtol=1e-10)
    # The API takes a session as it is.
    images, psfs = example
    on_spark = galdecon.deconvolve(images, psfs, engine="spark", spark=spark_session,
                                   partitions=7, n_iter=8, n_reweights=0)
    local = galdecon.deconvolve(images, psfs, n_iter=8, n_reweights=0)
    assert relative_error(on_spark.primal, local.primal) <= 1e-10
    assert on_spark.record["engine"]["partitions"] == 7
    assert on_spark.record["engine"]["sync_every"] == 16  # Spark's default: 4 x 4 x window
    assert local.record["engine"]["sync_every"] == 4
