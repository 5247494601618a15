"""Every run's gallery PNG, and ``galdecon show`` drawing it again from the outputs.

New with issue 11 (item 17): on the old main a run wrote no STEM_gallery.png and there
was no ``show``/``plot`` command (``invalid choice: 'show'``), so each test here fails there.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from galdecon.cli.app import main
from galdecon.science.gallery import pick_galaxies

DATA = Path(__file__).resolve().parents[2] / "data" / "sf_deconvolve_example"
FAST = ["--n-iter", "6", "--n-reweights", "0", "--wavelet", "linear", "-q"]
N = 12


def run_cli(*args):
    return main([str(a) for a in args])


@pytest.fixture()
def run(tmp_path, monkeypatch):
    """A short run on 12 example stamps, started in tmp/run with relative names."""
    folder = tmp_path / "run"
    folder.mkdir()
    np.save(folder / "images.npy", np.load(DATA / "example_image_stack.npy")[:N])
    np.save(folder / "psfs.npy", np.load(DATA / "example_psfs.npy")[:N])
    monkeypatch.chdir(folder)
    assert run_cli("deconvolve", "-i", "images.npy", "-p", "psfs.npy", "-o", "ex", *FAST) == 0
    monkeypatch.chdir(tmp_path)
    return folder


def rows_of(path) -> int:
    """Galaxy rows of a gallery PNG, from its height (2.35 in a row + 0.5 in, 100 dpi)."""
    return round((imread(path).shape[0] / 100 - 0.5) / 2.35)


def test_every_run_writes_a_gallery_and_show_draws_the_same_again(run, tmp_path, capsys):
    gallery = run / "ex_gallery.png"
    record = json.loads((run / "ex_run.json").read_text())
    assert record["outputs"]["gallery"] == "ex_gallery.png"
    assert gallery.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rows_of(gallery) == len(pick_galaxies(N)) == 5
    first = imread(gallery)
    assert first[..., :3].std() > 0.1  # drawn, not blank
    # Started elsewhere: the relative names of the record are found beside it.
    assert run_cli("show", "run/ex", "-o", tmp_path / "again.png") == 0
    np.testing.assert_array_equal(imread(tmp_path / "again.png"), first)
    # Without -o: the run's own figures are replaced by the same drawings.
    (run / "ex_cost.png").unlink()
    assert run_cli("show", "run/ex") == 0
    np.testing.assert_array_equal(imread(gallery), first)
    assert (run / "ex_cost.png").read_bytes()[:4] == b"\x89PNG"
    assert "gallery: run/ex_gallery.png" in capsys.readouterr().out
    assert run_cli("plot", "run/ex_run.json", "--galaxies", "2,7,11", "-o",
                   tmp_path / "three.png") == 0
    assert rows_of(tmp_path / "three.png") == 3


def test_no_plots_writes_no_gallery_and_show_still_draws_it(tmp_path):
    np.save(tmp_path / "images.npy", np.load(DATA / "example_image_stack.npy")[:4])
    np.save(tmp_path / "psfs.npy", np.load(DATA / "example_psfs.npy")[:4])
    assert run_cli("deconvolve", "-i", tmp_path / "images.npy", "-p", tmp_path / "psfs.npy",
                   "-o", tmp_path / "np", "--no-plots", *FAST) == 0
    assert not (tmp_path / "np_gallery.png").exists()
    assert run_cli("show", tmp_path / "np", "-q") == 0
    assert rows_of(tmp_path / "np_gallery.png") == 4


def test_show_refuses_missing_or_changed_files_naming_them(run, tmp_path, capsys):
    def error(*args) -> str:
        assert run_cli("show", *args) == 2
        return capsys.readouterr().err.strip()

    assert error("run/nothing").startswith("galdecon: error: run/nothing_run.json: run "
                                           "record not found")
    assert "--galaxies 12: the run has 12 galaxies; expected indices 0 to 11" in error(
        "run/ex", "--galaxies", "3,12")
    assert "argument --galaxies: expected comma-separated" in error("run/ex", "--galaxies",
                                                                    "a,b")
    (tmp_path / "taken.png").write_bytes(b"keep")
    assert "taken.png: exists; pass --overwrite" in error("run/ex", "-o", tmp_path / "taken.png")
    assert (tmp_path / "taken.png").read_bytes() == b"keep"
    assert "would overwrite an input" in error("run/ex", "-o", run / "ex_primal.npy",
                                               "--overwrite")
    assert np.load(run / "ex_primal.npy").shape == (N, 41, 41)
    (run / "psfs.npy").rename(run / "moved.npy")
    message = error("run/ex")
    assert message.startswith("galdecon: error: psfs.npy: not found: the PSF input of the "
                              "run recorded in run/ex_run.json")
    (run / "moved.npy").rename(run / "psfs.npy")
    images = np.load(run / "images.npy")
    images[5, 20, 20] += 1e-3
    np.save(run / "images.npy", images)
    assert "images.npy: changed since the run recorded in run/ex_run.json" in error("run/ex")
    np.save(run / "images.npy", np.load(DATA / "example_image_stack.npy")[:N])
    assert run_cli("show", "run/ex", "-q") == 0  # the same bytes again: accepted
    (run / "ex_primal.npy").unlink()
    assert "ex_primal.npy: not found: the primal output of the run" in error("run/ex")
    np.save(run / "ex_primal.npy", np.zeros((N, 21, 21)))
    assert "galaxies of shape (21, 21); the run recorded in run/ex_run.json wrote (41, 41)" \
        in error("run/ex")
    (run / "ex_run.json").write_text("{not json")
    assert "not a readable JSON run record" in error("run/ex")
    (run / "ex_run.json").write_text('{"command": "simulate"}')
    assert "not the run record of a galdecon deconvolve command" in error("run/ex")


def test_store_run_gallery_reads_only_the_chunks_of_the_galaxies_shown(tmp_path, capsys):
    pytest.importorskip("zarr", reason="zarr is not installed (pip install 'galdecon[chunked]')")
    from galdecon.data import chunked

    images = np.load(DATA / "example_image_stack.npy")[:N]
    psfs = np.load(DATA / "example_psfs.npy")[:N]
    chunked.write_store(tmp_path / "in.zarr", {"images": images, "psfs": psfs}, chunk=3)
    assert run_cli("deconvolve", "-i", tmp_path / "in.zarr", "-o", tmp_path / "s", *FAST) == 0
    first = imread(tmp_path / "s_gallery.png")
    assert rows_of(tmp_path / "s_gallery.png") == 5
    assert run_cli("show", tmp_path / "s", "-o", tmp_path / "again.png", "-q") == 0
    np.testing.assert_array_equal(imread(tmp_path / "again.png"), first)
    # Galaxies 0 and 11 live in chunks 0 and 3: the chunks between may go, the gallery
    # still draws (the checksums come from the manifest, no pixel of them is read).
    for store, array in (("in.zarr", "images"), ("in.zarr", "psfs"), ("s.zarr", "primal")):
        for index in (1, 2):
            chunks = list((tmp_path / store / array).glob(f"{index}.*"))
            assert chunks, (store, array, index)
            for chunk in chunks:
                chunk.unlink()
    assert run_cli("show", tmp_path / "s", "--galaxies", "0,11", "-o", tmp_path / "ends.png",
                   "-q") == 0
    assert rows_of(tmp_path / "ends.png") == 2
    assert run_cli("show", tmp_path / "s", "--galaxies", "4", "-o", tmp_path / "mid.png",
                   "-q") == 2
    assert "in.zarr: array 'images' chunk 1 (galaxies 3 to 5) is missing" in capsys.readouterr().err
    assert not (tmp_path / "mid.png").exists()


def test_fits_run_gallery_is_drawn_again_the_same(tmp_path):
    assert run_cli("deconvolve", "-i", DATA / "example_image_stack.fits", "-p",
                   DATA / "example_psfs.fits", "-o", tmp_path / "f", "--output-format",
                   "fits", *FAST) == 0
    shutil.copy(tmp_path / "f_gallery.png", tmp_path / "f_first.png")
    assert run_cli("show", tmp_path / "f", "-q") == 0
    np.testing.assert_array_equal(imread(tmp_path / "f_gallery.png"),
                                  imread(tmp_path / "f_first.png"))
    assert rows_of(tmp_path / "f_gallery.png") == 5
