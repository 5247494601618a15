"""Runs on chunked stores: workers read their blocks and write their chunks; same numbers.

Local engine: bit for bit the in-memory run. Spark: the in-memory Spark run to 1e-12,
with the driver process never reading a pixel of the stack (its reader is instrumented)
and never allocating more than a small fraction of it (tracemalloc).
"""

from __future__ import annotations

import signal
import threading
import tracemalloc

import numpy as np
import pytest

import galdecon
from galdecon.cli.app import main
from galdecon.data import chunked
from galdecon.data.sources import StoreStack
from galdecon.errors import InputError, RunInterrupted
from galdecon.run import checkpoint
from galdecon.run.interrupt import StopRequest
from spark_fixtures import EXAMPLE_DIR, relative_error

pytest.importorskip("zarr", reason="zarr is not installed (pip install 'galdecon[chunked]')")
OPTIONS = {"n_iter": 12, "n_reweights": 1, "tolerance": 0.0, "wavelet": "linear",
           "sync_every": 4}


@pytest.fixture(scope="module")
def example():
    images = np.load(EXAMPLE_DIR / "example_image_stack.npy")[:60]
    psfs = np.load(EXAMPLE_DIR / "example_psfs.npy")[:60]
    return images, psfs


@pytest.fixture(scope="module")
def stores(example, tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    images, psfs = example
    chunked.write_store(root / "in.zarr", {"images": images, "psfs": psfs}, chunk=15)
    return root


@pytest.fixture(scope="module")
def in_memory(example):
    return galdecon.deconvolve(*example, **OPTIONS)


def test_local_store_run_is_bitwise_the_in_memory_run(stores, in_memory, tmp_path):
    source = StoreStack.open(stores / "in.zarr")
    assert (source.n, source.shape, source.chunk, source.n_chunks) == (60, (41, 41), 15, 4)
    result = galdecon.deconvolve(source, None, output=chunked.create_store(tmp_path / "o.zarr"),
                                 **OPTIONS)
    assert result.primal is None and result.dual is None
    store = chunked.open_store(tmp_path / "o.zarr")
    assert store.names == ("primal", "dual") and store.chunk("dual") == 15
    np.testing.assert_array_equal(store.read("primal"), in_memory.primal)
    np.testing.assert_array_equal(store.read("dual"), in_memory.dual)
    assert result.record["history"]["costs"] == in_memory.record["history"]["costs"]
    assert result.record["outputs_store"] == str(tmp_path / "o.zarr")


def test_store_shapes_are_checked_from_the_manifests(stores, example, tmp_path):
    images, psfs = example
    chunked.write_store(tmp_path / "few.zarr", {"psfs": psfs[:50]}, chunk=10)
    with pytest.raises(InputError, match=r"50 PSFs for 60 images"):
        StoreStack.open(stores / "in.zarr", tmp_path / "few.zarr")
    with pytest.raises(InputError, match=r"holds no array 'truth'"):
        StoreStack.open(f"{stores / 'in.zarr'}[truth]")
    bad = images.copy()
    bad[37, 3, 3] = np.nan
    chunked.write_store(tmp_path / "nan.zarr", {"images": bad, "psfs": psfs}, chunk=15)
    with pytest.raises(InputError, match=r"nan.zarr\[images\]: image 37 contains NaN"):
        galdecon.deconvolve(StoreStack.open(tmp_path / "nan.zarr"), None, **OPTIONS)
    dark = psfs.copy()
    dark[41] = 0.0
    chunked.write_store(tmp_path / "dark.zarr", {"images": images, "psfs": dark}, chunk=15)
    with pytest.raises(InputError, match=r"dark.zarr\[psfs\]: PSF 41 is all zeros"):
        galdecon.deconvolve(StoreStack.open(tmp_path / "dark.zarr"), None, **OPTIONS)


def counting_reads(monkeypatch) -> list:
    """Instrument this process's store reader: every read is listed (workers are apart)."""
    reads = []
    real_read = chunked.Store.read

    def counted(self, name, start=None, stop=None, verify=True):
        reads.append((name, start, stop))
        return real_read(self, name, start, stop, verify)

    monkeypatch.setattr(chunked.Store, "read", counted)
    return reads


def test_spark_store_run_equals_the_in_memory_run(spark_session, stores, in_memory, tmp_path,
                                                  monkeypatch):
    reads = counting_reads(monkeypatch)
    result = galdecon.deconvolve(StoreStack.open(stores / "in.zarr"), None, engine="spark",
                                 partitions=4, output=chunked.create_store(tmp_path / "o.zarr"),
                                 **OPTIONS)
    assert reads == []  # not a pixel was read by the driver
    monkeypatch.undo()
    out = chunked.open_store(tmp_path / "o.zarr")
    assert relative_error(out.read("primal"), in_memory.primal) <= 1e-12
    assert relative_error(out.read("dual"), in_memory.dual) <= 1e-12
    np.testing.assert_allclose(result.record["history"]["costs"],
                               in_memory.record["history"]["costs"], rtol=1e-12)
    assert result.record["engine"]["partitions"] == 4


def test_spark_driver_never_holds_the_stack(spark_session, example, tmp_path, monkeypatch):
    # 2,400 stamps: images 32 MB, sparse state (primal, dual, weights) ~240 MB.
    images, psfs = (np.concatenate([a] * 40) for a in example)
    chunked.write_store(tmp_path / "big.zarr", {"images": images, "psfs": psfs}, chunk=300)
    state_bytes = images.nbytes * (1 + 1 + 3 + 3)
    del images, psfs
    reads = counting_reads(monkeypatch)
    source = StoreStack.open(tmp_path / "big.zarr")
    tracemalloc.start()
    try:
        result = galdecon.deconvolve(source, None, engine="spark", partitions=4,
                                     output=chunked.create_store(tmp_path / "o.zarr"),
                                     checkpoint=tmp_path / "ck", checkpoint_every=4,
                                     n_iter=4, n_reweights=1, tolerance=0.0, sync_every=4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reads == []
    assert result.record["reliability"]["checkpoints"]["writes"] == 2
    assert peak < 0.02 * state_bytes, peak  # checkpoints and outputs included


def test_spark_reports_a_corrupt_chunk_by_name(spark_session, example, tmp_path):
    chunked.write_store(tmp_path / "in.zarr", {"images": example[0], "psfs": example[1]},
                        chunk=15, compression="none")
    files = sorted(p for p in (tmp_path / "in.zarr" / "images").iterdir()
                   if p.name[0].isdigit())
    victim = files[2]  # chunk 2: galaxies 30-44
    data = bytearray(victim.read_bytes())
    data[100:108] = b"\xff" * 8
    victim.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"array 'images'.*chunk 2 .*galax.*30"):
        galdecon.deconvolve(StoreStack.open(tmp_path / "in.zarr"), None, engine="spark",
                            partitions=4, **OPTIONS)


def test_spark_store_run_checkpoints_on_the_workers_and_resumes(spark_session, stores,
                                                                tmp_path):
    source = StoreStack.open(stores / "in.zarr")
    whole = galdecon.deconvolve(source, None, engine="spark", partitions=4,
                                output=chunked.create_store(tmp_path / "whole.zarr"),
                                **OPTIONS)
    stop = StopRequest()

    def progress(done, planned, cost):
        if done >= 16:
            threading.Timer(0.01, stop.request, args=(signal.SIGTERM,)).start()

    writer = chunked.create_store(tmp_path / "run.zarr")
    with pytest.raises(RunInterrupted), writer:
        galdecon.deconvolve(source, None, engine="spark", partitions=4, progress=progress,
                            stop=stop, output=writer, checkpoint=tmp_path / "ck",
                            checkpoint_every=0, **OPTIONS)
    assert not (tmp_path / "run.zarr").exists()  # aborted: nothing under the final name
    saved = checkpoint.load(tmp_path / "ck")
    assert saved.chunked and saved.iteration >= 16
    assert chunked.open_store(tmp_path / "ck" / checkpoint.STATE_STORE).names == (
        "primal", "dual", "weights", "weights0")
    resumed = galdecon.deconvolve(source, None, engine="spark", partitions=4,
                                  resume=tmp_path / "ck",
                                  output=chunked.create_store(tmp_path / "run.zarr"), **OPTIONS)
    for name in ("primal", "dual"):
        np.testing.assert_array_equal(resumed.store.read(name), whole.store.read(name))
    assert resumed.record["history"]["costs"] == whole.record["history"]["costs"]


def test_cli_store_in_store_out_equals_npy_run(stores, tmp_path, capsys):
    images, psfs = EXAMPLE_DIR / "example_image_stack.npy", EXAMPLE_DIR / "example_psfs.npy"
    assert main(["convert", str(images), str(tmp_path / "img.zarr"), "--chunk", "30",
                 "-q"]) == 0
    assert main(["convert", str(psfs), str(tmp_path / "psf.zarr"), "--array", "psfs",
                 "--chunk", "30", "-q"]) == 0
    common = ["--n-iter", "8", "--no-plots", "-q"]
    assert main(["deconvolve", "-i", str(tmp_path / "img.zarr"), "-p",
                 str(tmp_path / "psf.zarr"), "-o", str(tmp_path / "s"), *common]) == 0
    assert main(["deconvolve", "-i", str(images), "-p", str(psfs), "-o", str(tmp_path / "m"),
                 *common]) == 0
    out = chunked.open_store(tmp_path / "s.zarr")
    np.testing.assert_array_equal(out.read("primal"), np.load(tmp_path / "m_primal.npy"))
    np.testing.assert_array_equal(out.read("dual"), np.load(tmp_path / "m_dual.npy"))
    assert out.provenance["command"] == "galdecon deconvolve"
    # the existing output store is refused, and -c is not supported with a store input
    assert main(["deconvolve", "-i", str(tmp_path / "img.zarr"), "-p",
                 str(tmp_path / "psf.zarr"), "-o", str(tmp_path / "s"), *common]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["deconvolve", "-i", str(tmp_path / "img.zarr"), "-p",
                 str(tmp_path / "psf.zarr"), "-c", str(images), "-o", str(tmp_path / "t"),
                 *common]) == 2
    assert "-c/--clean-data is not supported with stores" in capsys.readouterr().err
