"""Chunked stack stores: round trips, block reads, checksums, atomicity, convert, simulate."""

import hashlib
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("zarr")

from galdecon.cli import app as cli  # noqa: E402
from galdecon.data import chunked, io
from galdecon.data.streaming import NpyReader  # noqa: E402
from galdecon.errors import ConfigError, EngineError, InputError, OutputError  # noqa: E402


def run_cli(*argv):
    """The ``galdecon`` command, in process."""
    return cli.main([str(a) for a in argv])


def _stack(n=95, shape=(9, 7), dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, *shape)) * 100).astype(dtype)


def _siblings(path: Path):
    """What sits beside ``path`` under its name or a temporary variant of it."""
    return sorted(p.name for p in path.parent.iterdir() if path.name in p.name)


@pytest.fixture
def store_path(tmp_path):
    """A store of 95 galaxies in chunks of 10 (the last one short), uncompressed."""
    images = _stack()
    url = tmp_path / "s.zarr"
    chunked.write_store(url, {"images": images, "truth": images * 2}, chunk=10,
                        compression="none")
    return url, images


# -- round trips -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["<f8", ">f4", "<i2", "|u1"])
def test_npy_store_npy_round_trip_is_bit_identical(tmp_path, capsys, dtype):
    images = _stack(n=57, dtype=np.dtype(dtype))
    np.save(tmp_path / "in.npy", images)
    assert run_cli("convert", tmp_path / "in.npy", tmp_path / "s.zarr", "--chunk", 20) == 0
    assert "3 chunks" in capsys.readouterr().out
    assert run_cli("convert", tmp_path / "s.zarr", tmp_path / "out.npy") == 0
    back = np.load(tmp_path / "out.npy")
    assert back.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(back, images)
    assert back.tobytes() == images.astype(back.dtype).tobytes()

    manifest = json.loads((tmp_path / "s.zarr" / chunked.MANIFEST).read_text())
    spec = manifest["arrays"]["images"]
    assert spec["shape"] == [57, 9, 7] and spec["chunk"] == 20 and manifest["n_galaxies"] == 57
    little = np.dtype(dtype).newbyteorder("<")
    expected = [hashlib.sha256(images[a:a + 20].astype(little).tobytes()).hexdigest()
                for a in (0, 20, 40)]
    assert spec["sha256"] == expected
    prov = manifest["provenance"]
    assert prov["sources"] == [{"path": str(tmp_path / "in.npy"),
                                "sha256": io.sha256(tmp_path / "in.npy")}]
    assert prov["command"].startswith("galdecon convert") and prov["galdecon_version"]
    assert prov["created"].endswith("+00:00")


def test_fits_store_fits_round_trip_is_bit_identical(tmp_path):
    from astropy.io import fits

    images = _stack(n=33, dtype=np.float32)
    psf = _stack(n=1, shape=(5, 5))[0]
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(images, name="SCI"),
                  fits.ImageHDU(psf, name="PSF")]).writeto(tmp_path / "in.fits")
    assert run_cli("convert", f"{tmp_path / 'in.fits'}[SCI]", tmp_path / "i.zarr",
                   "--chunk", 8) == 0
    assert run_cli("convert", f"{tmp_path / 'in.fits'}[PSF]", tmp_path / "p.zarr",
                   "--array", "psfs") == 0
    assert run_cli("convert", tmp_path / "i.zarr", tmp_path / "out.fits") == 0
    assert run_cli("convert", tmp_path / "p.zarr", tmp_path / "psf.fits", "--array",
                   "psfs") == 0
    with fits.open(tmp_path / "out.fits") as hdul:
        assert hdul[0].data.dtype == np.dtype(">f4")
        np.testing.assert_array_equal(hdul[0].data, images)
        assert hdul[0].data.tobytes() == images.astype(">f4").tobytes()
    np.testing.assert_array_equal(fits.getdata(tmp_path / "psf.fits"), psf)
    store = chunked.open_store(tmp_path / "p.zarr")
    assert not store.per_galaxy("psfs") and store.n_galaxies is None
    assert store.chunk_bounds("psfs") == [(0, 5)]


def test_simulated_npz_converts_into_one_store_with_all_its_arrays(tmp_path):
    from galdecon.science.dataset import write_dataset

    n = 12
    cat = np.zeros(n, dtype=[("index", "i8"), ("hlr", "f8"), ("snr", "f8", (2,))])
    cat["index"], cat["hlr"] = np.arange(n), np.linspace(0.1, 0.3, n)
    meta = {"format": "galdecon-simulation", "version": 1, "n": n, "snr": [2.0, 10.0]}
    data = {"truth": _stack(n), "psfs": _stack(n, seed=1), "clean": _stack(n, seed=2),
            "snr": np.array([2.0, 10.0]), "sigma": np.ones((n, 2)), "catalogue": cat,
            "noisy": {2.0: _stack(n, seed=3), 10.0: _stack(n, seed=4)}, "meta": meta}
    write_dataset(tmp_path / "sim.npz", data)
    assert run_cli("convert", tmp_path / "sim.npz", tmp_path / "sim.zarr", "--chunk", 5) == 0
    store = chunked.open_store(tmp_path / "sim.zarr")
    assert set(store.names) == {"truth", "psfs", "clean", "sigma", "catalogue",
                                "noisy_snr2", "noisy_snr10", "sigma_snr2", "sigma_snr10"}
    for key in ("truth", "psfs", "clean", "sigma", "catalogue"):
        np.testing.assert_array_equal(store.read(key), data[key])
    np.testing.assert_array_equal(store.read("noisy_snr10"), data["noisy"][10.0])
    assert store.dtype("catalogue") == cat.dtype
    np.testing.assert_array_equal(store.read("catalogue", 3, 8), cat[3:8])
    assert store.provenance["run"] == meta
    # and back out, one array at a time
    assert run_cli("convert", tmp_path / "sim.zarr", tmp_path / "cat.npy", "--array",
                   "catalogue") == 0
    np.testing.assert_array_equal(np.load(tmp_path / "cat.npy"), cat)
    assert run_cli("convert", f"{tmp_path / 'sim.zarr'}[clean]", tmp_path / "clean.fits") == 0
    from astropy.io import fits

    np.testing.assert_array_equal(fits.getdata(tmp_path / "clean.fits"), data["clean"])
    assert run_cli("convert", tmp_path / "sim.zarr", tmp_path / "x.npy") == 2  # no images
    assert run_cli("convert", f"{tmp_path / 'sim.zarr'}[clean]", tmp_path / "y.npy",
                   "--array", "truth") == 2


# -- reading blocks ----------------------------------------------------------------------

def test_block_reads_equal_slices_of_the_whole(store_path):
    url, images = store_path
    store = chunked.open_store(url)
    assert store.chunk_bounds("images")[-1] == (90, 95) and len(store.chunk_bounds("images")) == 10
    rng = np.random.default_rng(5)
    for _ in range(40):
        start, stop = sorted(int(v) for v in rng.integers(0, 96, size=2))
        np.testing.assert_array_equal(store.read("images", start, stop), images[start:stop])
        np.testing.assert_array_equal(store.read("truth", start, stop, verify=False),
                                      images[start:stop] * 2)
    np.testing.assert_array_equal(store.read("images"), images)
    assert store.read("images", 7, 7).shape == (0, 9, 7)
    with pytest.raises(ConfigError, match=r"\[90, 96\)"):
        store.read("images", 90, 96)
    with pytest.raises(InputError, match="no array 'primal'.*images, truth"):
        store.read("primal")
    # blocks cover the galaxies in order, on chunk boundaries while there are enough chunks
    for n_blocks in (1, 3, 7, 10, 11, 50, 200):
        blocks = store.block_bounds(n_blocks)
        assert blocks[0][0] == 0 and blocks[-1][1] == 95
        assert all(a < b for a, b in blocks)
        assert all(b == c for (_, b), (c, _) in zip(blocks, blocks[1:], strict=False))
        assert len(blocks) == min(n_blocks, 95)
        if n_blocks <= 10:
            assert all(a % 10 == 0 for a, _ in blocks)
    # a Store pickles without its data (for workers) and reads the same afterwards
    copy = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(copy.read("images", 13, 31), images[13:31])


def _chunk_file(url: Path, name: str, index: int) -> Path:
    return url / name / f"{index}.0.0"


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_a_corrupted_chunk_is_named(tmp_path, compression):
    images = _stack()
    url = tmp_path / "c.zarr"
    chunked.write_store(url, {"images": images}, chunk=10, compression=compression)
    path = _chunk_file(url, "images", 2)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 8] = bytes(b ^ 0xFF for b in raw[len(raw) // 2:
                                                                       len(raw) // 2 + 8])
    path.write_bytes(bytes(raw))
    store = chunked.open_store(url)
    np.testing.assert_array_equal(store.read("images", 0, 20), images[:20])  # untouched
    with pytest.raises(InputError, match=r"array 'images' chunk 2 \(galaxies 20 to 29\) is "
                                         r"(corrupt|unreadable)"):
        store.read("images", 15, 25)
    assert run_cli("convert", url, tmp_path / "out.npy") == 2
    assert not (tmp_path / "out.npy").exists()


def test_a_deleted_chunk_is_named(store_path):
    url, images = store_path
    _chunk_file(url, "truth", 9).unlink()
    store = chunked.open_store(url)
    np.testing.assert_array_equal(store.read("truth", 0, 90), images[:90] * 2)
    with pytest.raises(InputError, match=r"array 'truth' chunk 9 \(galaxies 90 to 94\) is "
                                         r"missing"):
        store.read("truth", 85, 95)


def test_a_store_without_a_valid_manifest_is_refused(store_path, tmp_path):
    url, _ = store_path
    manifest = url / chunked.MANIFEST
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2])
    with pytest.raises(InputError, match=rf"{url}: galdecon.json is not valid JSON"):
        chunked.open_store(url)
    spec = json.loads(text)
    spec["arrays"]["images"]["sha256"].pop()
    manifest.write_text(json.dumps(spec))
    with pytest.raises(InputError, match="malformed: array 'images': expected 10 SHA-256"):
        chunked.open_store(url)
    manifest.unlink()
    with pytest.raises(InputError, match=rf"{url}: no galdecon.json manifest.*incomplete"):
        chunked.open_store(url)
    assert run_cli("convert", url, tmp_path / "out.npy") == 2
    with pytest.raises(InputError, match="store not found"):
        chunked.open_store(tmp_path / "nothing.zarr")


def test_a_file_url_works_like_a_plain_path(tmp_path):
    images = _stack(n=30)
    np.save(tmp_path / "in.npy", images)
    url = (tmp_path / "u.zarr").as_uri()
    assert url.startswith("file:///")
    assert run_cli("convert", tmp_path / "in.npy", url, "--chunk", 7) == 0
    assert (tmp_path / "u.zarr" / chunked.MANIFEST).is_file()
    by_path, by_url = chunked.open_store(tmp_path / "u.zarr"), chunked.open_store(url)
    assert by_path.manifest == by_url.manifest
    np.testing.assert_array_equal(by_url.read("images", 5, 23), images[5:23])
    assert run_cli("convert", url, tmp_path / "out.npy") == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), images)
    assert chunked.is_store(url) and chunked.is_store(tmp_path / "u.zarr")
    assert not chunked.is_store(tmp_path / "in.npy") and chunked.is_store("s3://b/x")


def test_a_remote_url_is_written_in_place_and_complete_only_with_its_manifest(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    url = f"memory://galdecon-test/{tmp_path.name}/r.zarr"
    images = _stack(n=30)
    try:
        writer = chunked.create_store(url)
        writer.create_array("images", images.shape, images.dtype, chunk=8)
        writer.write_block("images", 0, images[:16])
        with pytest.raises(InputError, match="no galdecon.json manifest"):
            chunked.open_store(url)  # written in place, but incomplete
        writer.write_block("images", 16, images[16:])
        store = writer.finalize()
        np.testing.assert_array_equal(store.read("images", 3, 29), images[3:29])
        with pytest.raises(OutputError, match="exists"):
            chunked.create_store(url)
        chunked.write_store(url, {"images": images[:5]}, overwrite=True)
        assert chunked.open_store(url).shape("images") == (5, 9, 7)
        memory.rm(f"/galdecon-test/{tmp_path.name}/r.zarr/images/0.0.0")
        with pytest.raises(InputError, match=r"chunk 0 \(galaxies 0 to 4\) is missing"):
            chunked.open_store(url).read("images")
        failed = f"memory://galdecon-test/{tmp_path.name}/f.zarr"
        with pytest.raises(OSError, match="disk gone"):
            chunked.write_store(failed, {"images": FailingSource(images, 20)}, chunk=8)
        assert not memory.exists(f"/galdecon-test/{tmp_path.name}/f.zarr")
    finally:
        if memory.exists(f"/galdecon-test/{tmp_path.name}"):
            memory.rm(f"/galdecon-test/{tmp_path.name}", recursive=True)


# -- writing: overwrite, atomicity, workers ----------------------------------------------

def test_overwrite_replaces_only_stores_and_only_when_asked(store_path, tmp_path, capsys):
    url, images = store_path
    np.save(tmp_path / "new.npy", images[:4])
    assert run_cli("convert", tmp_path / "new.npy", url) == 2
    assert f"{url}: exists; pass --overwrite" in capsys.readouterr().err
    assert chunked.open_store(url).shape("images") == (95, 9, 7)
    assert run_cli("convert", tmp_path / "new.npy", url, "--overwrite") == 0
    assert chunked.open_store(url).names == ("images",)
    assert chunked.open_store(url).shape("images") == (4, 9, 7)
    assert _siblings(url) == ["s.zarr"]
    (tmp_path / "mine.zarr").mkdir()
    (tmp_path / "mine.zarr" / "notes.txt").write_text("precious")
    assert run_cli("convert", tmp_path / "new.npy", tmp_path / "mine.zarr", "--overwrite") == 2
    assert "is not a galdecon store" in capsys.readouterr().err
    assert (tmp_path / "mine.zarr" / "notes.txt").read_text() == "precious"
    assert run_cli("convert", url, url) == 2  # never onto the input
    assert run_cli("convert", tmp_path / "new.npy", tmp_path / "x.npz") == 2
    assert run_cli("convert", tmp_path / "new.npy", tmp_path / "no" / "x.zarr") == 2
    assert "does not exist" in capsys.readouterr().err


class FailingSource:
    """An array whose later slices raise (a read error half way through)."""

    def __init__(self, array, fail_from):
        self.array, self.fail_from = array, fail_from
        self.shape, self.dtype = array.shape, array.dtype

    def __getitem__(self, rows):
        if rows.stop > self.fail_from:
            raise OSError("disk gone")
        return self.array[rows]


def test_a_failure_mid_write_leaves_nothing_under_the_final_name(store_path, tmp_path):
    url, images = store_path
    new = tmp_path / "new.zarr"
    with pytest.raises(OSError, match="disk gone"):
        chunked.write_store(new, {"images": FailingSource(images, 50)}, chunk=10)
    assert _siblings(new) == []
    # with overwrite, the old store is untouched until the new one is complete
    with pytest.raises(OSError, match="disk gone"):
        chunked.write_store(url, {"images": FailingSource(images, 50)}, chunk=10,
                            overwrite=True)
    assert _siblings(url) == ["s.zarr"]
    np.testing.assert_array_equal(chunked.open_store(url).read("images"), images)
    # the command line: an npy whose data stop short fails on a later chunk
    np.save(tmp_path / "cut.npy", images)
    data = (tmp_path / "cut.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-images[0].nbytes * 3])
    assert run_cli("convert", tmp_path / "cut.npy", tmp_path / "cut.zarr", "--chunk", 10) == 2
    assert _siblings(tmp_path / "cut.zarr") == []
    assert run_cli("convert", url, tmp_path / "o.npy") == 0
    _chunk_file(url, "images", 6).unlink()
    assert run_cli("convert", url, tmp_path / "o.npy", "--overwrite") == 2
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), images)  # the old file stays
    assert _siblings(tmp_path / "o.npy") == ["o.npy"]


def test_blocks_written_by_other_processes_are_merged_at_finalize(tmp_path):
    images = _stack(n=25)
    writer = chunked.create_store(tmp_path / "w.zarr", provenance={"run": {"k": 1}})
    writer.create_array("images", images.shape, images.dtype, chunk=10)
    assert writer.work_url != str(tmp_path / "w.zarr") and not (tmp_path / "w.zarr").exists()
    remote = pickle.loads(pickle.dumps(writer))  # what a worker process receives
    sums = {"images": remote.write_block("images", 10, images[10:25])}
    assert sorted(sums["images"]) == [1, 2]
    with pytest.raises(ConfigError, match="not whole chunks"):
        writer.write_block("images", 5, images[5:10])
    with pytest.raises(OutputError, match=r"chunk\(s\) 0 of 3 were never written"):
        writer.finalize(sums)
    writer.write_block("images", 0, images[:10])
    store = writer.finalize(sums)
    np.testing.assert_array_equal(store.read("images"), images)
    assert store.provenance["run"] == {"k": 1}
    with pytest.raises(OutputError, match="already finalized"):
        writer.write_block("images", 0, images[:10])
    with pytest.raises(ConfigError, match="26 galaxies, but 'images' has 25"):
        other = chunked.create_store(tmp_path / "v.zarr")
        other.create_array("images", images.shape, images.dtype)
        other.create_array("truth", (26, 9, 7), images.dtype)
    other.abort()
    assert _siblings(tmp_path / "v.zarr") == []


def test_missing_extra_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "zarr", None)
    with pytest.raises(EngineError, match=r"pip install 'galdecon\[chunked\]'"):
        chunked.create_store(tmp_path / "x.zarr")
    np.save(tmp_path / "a.npy", _stack(n=3))
    assert run_cli("convert", tmp_path / "a.npy", tmp_path / "x.zarr") == 2
    assert _siblings(tmp_path / "x.zarr") == []


def test_npy_reader_reads_rows_without_a_memory_map(tmp_path):
    images = _stack(n=40)
    np.save(tmp_path / "a.npy", images)
    np.save(tmp_path / "f.npy", np.asfortranarray(images))
    for name in ("a.npy", "f.npy"):
        reader = NpyReader(tmp_path / name)
        np.testing.assert_array_equal(reader[slice(13, 29)], images[13:29])
        reader.close()
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="pickles are never loaded"):
        NpyReader(tmp_path / "o.npy")


# -- simulate straight into a store ------------------------------------------------------

def test_simulate_into_a_store_equals_the_npz(tmp_path):
    pytest.importorskip("galsim")
    from galdecon.science.dataset import read_dataset

    common = ("-n", 40, "--seed", 9, "--snr", 3, 10, "-q")
    assert run_cli("simulate", "-o", tmp_path / "sim.npz", "--workers", 1, *common) == 0
    assert run_cli("simulate", "-o", tmp_path / "sim.zarr", "--chunk", 16, "--workers", 2,
                   *common) == 0
    npz = read_dataset(tmp_path / "sim.npz")
    store = chunked.open_store(tmp_path / "sim.zarr")
    assert store.chunk_bounds("truth") == [(0, 16), (16, 32), (32, 40)]
    for key in ("truth", "psfs", "clean", "sigma", "catalogue"):
        np.testing.assert_array_equal(store.read(key), npz[key])
    for level in (3.0, 10.0):
        np.testing.assert_array_equal(store.read(f"noisy_snr{level:g}"), npz["noisy"][level])
    run = store.provenance["run"]
    assert run == npz["meta"]
    # the same chunks, byte for byte, as the npz converted with the same chunk length
    assert run_cli("convert", tmp_path / "sim.npz", tmp_path / "conv.zarr", "--chunk", 16) == 0
    converted = chunked.open_store(tmp_path / "conv.zarr")
    assert {k: v["sha256"] for k, v in converted.manifest["arrays"].items()} == \
        {k: v["sha256"] for k, v in store.manifest["arrays"].items()}
    assert run_cli("simulate", "-o", tmp_path / "sim.zarr", *common) == 2  # exists
    assert run_cli("simulate", "-o", tmp_path / "e.zarr", "--export-npy", tmp_path / "d",
                   *common) == 2
    assert run_cli("simulate", "-o", tmp_path / "e.npz", "--chunk", 4, *common) == 2


def test_simulate_to_store_with_a_psf_bank_equals_simulate(tmp_path, example_psfs):
    pytest.importorskip("galsim")
    from galdecon.science.simulate import simulate
    from galdecon.science.simulate_store import simulate_to_store

    for options in ({"psf_bank": 2}, {"psfs": example_psfs[:3]}):
        memory = simulate(10, seed=4, snr=(5,), workers=1, **options)
        store, summary = simulate_to_store(tmp_path / "b.zarr", 10, seed=4, snr=(5,),
                                           workers=1, chunk=4, overwrite=True, **options)
        for key in ("truth", "psfs", "clean", "sigma"):
            np.testing.assert_array_equal(store.read(key), memory[key])
        np.testing.assert_array_equal(store.read("noisy_snr5"), memory["noisy"][5.0])
        # NaN fields (no field position for PSFs from a file): compare the bytes
        assert store.read("catalogue").tobytes() == memory["catalogue"].tobytes()
        np.testing.assert_array_equal(summary["hlr"], memory["catalogue"]["hlr"])
    assert store.provenance["run"]["psf_mode"] == "file"


# -- bounded memory ----------------------------------------------------------------------

# The child's own peak resident set: VmHWM of its address space, which starts afresh at exec
# (ru_maxrss would include the pages of the forked parent).
_PEAK = textwrap.dedent("""
    import sys
    if sys.argv[1] == "baseline":
        import astropy.io.fits, fsspec, numcodecs, zarr  # what a conversion imports
        import galdecon.data.chunked, galdecon.cli.app, galdecon.cli.convert
        rc = 0
    else:
        from galdecon.cli.app import main
        rc = main(sys.argv[1:])
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(rc, peak * 1024)
""")


def _peak_rss(*argv) -> int:
    done = subprocess.run([sys.executable, "-c", _PEAK, *map(str, argv)], check=True,
                          capture_output=True, text=True)
    rc, peak = done.stdout.split()[-2:]
    assert rc == "0", done.stderr
    return int(peak)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_convert_streams_in_bounded_memory(tmp_path):
    n = 20_000
    big = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float64,
                                    shape=(n, 41, 41))
    rng = np.random.default_rng(3)
    for a in range(0, n, 2000):
        big[a:a + 2000] = rng.random((2000, 41, 41))
    big.flush()
    del big
    size = (tmp_path / "big.npy").stat().st_size
    assert size > 250e6
    baseline = _peak_rss("baseline")
    to_store = _peak_rss("convert", tmp_path / "big.npy", tmp_path / "big.zarr", "--chunk",
                         1000, "-q")
    to_npy = _peak_rss("convert", tmp_path / "big.zarr", tmp_path / "back.npy", "-q")
    limit = baseline + size / 3
    assert to_store < limit, (to_store / 1e6, baseline / 1e6)
    assert to_npy < limit, (to_npy / 1e6, baseline / 1e6)
    # the measure does see the data: one chunk of all the galaxies is in memory at once
    whole = _peak_rss("convert", tmp_path / "big.npy", tmp_path / "whole.zarr", "--chunk",
                      n, "--compression", "none", "-q")
    assert whole > baseline + size, (whole / 1e6, baseline / 1e6)
    big = np.load(tmp_path / "big.npy", mmap_mode="r")
    store = chunked.open_store(tmp_path / "big.zarr")
    assert len(store.chunk_bounds("images")) == 20
    for a in (0, 7_777, 19_500):
        np.testing.assert_array_equal(store.read("images", a, a + 500), big[a:a + 500])
    back = np.load(tmp_path / "back.npy", mmap_mode="r")
    for a in (0, 12_345, 19_999):
        np.testing.assert_array_equal(back[a:a + 300], big[a:a + 300])
