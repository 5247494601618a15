"""The command line end to end: outputs, record, options, option files, errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import galdecon
from galdecon.cli.app import build_parser, main

DATA = Path(__file__).resolve().parents[2] / "data" / "sf_deconvolve_example"
IMAGES = DATA / "example_image_stack.npy"
PSFS = DATA / "example_psfs.npy"
IMAGES_FITS = DATA / "example_image_stack.fits"
PSFS_FITS = DATA / "example_psfs.fits"


def run_cli(*args):
    return main([str(a) for a in args])


def test_deconvolve_writes_outputs_matching_the_api(tmp_path, capsys):
    stem = tmp_path / "ex"
    rc = run_cli("deconvolve", "-i", IMAGES, "-p", PSFS, "-o", stem, "--n-iter", 12,
                 "--wavelet", "linear", "--n-reweights", 1)
    assert rc == 0
    out = capsys.readouterr().out
    assert "24 iterations" in out
    primal = np.load(tmp_path / "ex_primal.npy")
    dual = np.load(tmp_path / "ex_dual.npy")
    assert primal.shape == (100, 41, 41) and dual.shape == (100, 3, 41, 41)
    assert (tmp_path / "ex_cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((tmp_path / "ex_run.json").read_text())
    api = galdecon.deconvolve(np.load(IMAGES), np.load(PSFS), n_iter=12, wavelet="linear",
                              n_reweights=1)
    np.testing.assert_array_equal(primal, api.primal)
    np.testing.assert_array_equal(dual, api.dual)
    assert record["settings"]["wavelet"] == "linear"
    assert record["result"]["iterations_per_round"] == [12, 12]
    assert record["history"]["costs"] == pytest.approx(api.record["history"]["costs"],
                                                       rel=1e-12)
    assert record["problem"]["noise_sigma"] == pytest.approx(3.11699e-4, rel=1e-5)
    assert len(record["timing"]["iteration_seconds"]) == 24
    assert record["data"]["sha256"]["images"] == galdecon.data.io.sha256(IMAGES)
    assert record["versions"]["galdecon"] == galdecon.__version__


def test_fits_in_fits_out_and_reference_spellings(tmp_path):
    stem = tmp_path / "f"
    rc = run_cli("deconvolve", "--input", IMAGES_FITS, "--psf", PSFS_FITS, "--output", stem,
                 "--n_iter", 8, "--output_format", "fits", "--wave_thresh_factor", 3, 3, 4,
                 "--n_reweights", 0, "--cost_window", 2, "--no_plots", "-q")
    assert rc == 0
    with fits.open(tmp_path / "f_primal.fits") as hdul:
        primal = hdul[0].data
        assert hdul[0].header["GDMODE"] == "sparse"
    assert primal.shape == (100, 41, 41)
    assert not (tmp_path / "f_cost.png").exists()
    ref = galdecon.deconvolve(np.load(IMAGES), np.load(PSFS), n_iter=8, n_reweights=0,
                              cost_window=2)
    np.testing.assert_allclose(primal, ref.primal, rtol=1e-12, atol=1e-15)
    record = json.loads((tmp_path / "f_run.json").read_text())
    # cost window 2: costs at iterations 2, 4, 6, 8 only
    assert record["history"]["cost_iterations"] == [2, 4, 6, 8]


def test_option_file_and_truth_metrics(tmp_path, capsys):
    opts = tmp_path / "opts.txt"
    opts.write_text(f"# options for a short run\n-i {IMAGES}\n-p {PSFS}\n"
                    f"--n-iter 6  --mode lowr\n-o {tmp_path / 'lr'}\n"
                    f"-c {IMAGES}   # truth\n--kernel 5 --metric mean\n")
    rc = run_cli("deconvolve", f"@{opts}")
    assert rc == 0
    out = capsys.readouterr().out
    assert "galdecon lowr" in out
    mean_line = [line for line in out.splitlines() if "pixel error" in line][0]
    assert mean_line.strip().startswith("mean")
    record = json.loads((tmp_path / "lr_run.json").read_text())
    assert record["settings"]["mode"] == "lowr"
    assert record["metrics"]["kernel"] == 5.0
    assert len(record["metrics"]["per_galaxy"]["pixel_error"]) == 100
    primal = np.load(tmp_path / "lr_primal.npy")
    expect = galdecon.science.metrics.evaluate(np.load(IMAGES), primal, kernel=5.0)
    assert record["metrics"]["median"] == pytest.approx(expect["median"], rel=1e-12)


def test_option_file_is_data_only(tmp_path):
    marker = tmp_path / "pwned"
    opts = tmp_path / "evil.txt"
    opts.write_text(f"-i $(touch {marker}) -p `touch {marker}`\n")
    rc = run_cli("deconvolve", f"@{opts}", "-o", tmp_path / "x")
    assert rc == 2
    assert not marker.exists()


def test_initial_primal_is_used(tmp_path):
    first = galdecon.deconvolve(np.load(IMAGES), np.load(PSFS), n_iter=4, n_reweights=0)
    start = tmp_path / "start.npy"
    np.save(start, first.primal)
    rc = run_cli("deconvolve", "-i", IMAGES, "-p", PSFS, "-k", start, "-o", tmp_path / "k",
                 "--n-iter", 3, "--n-reweights", 0, "-q", "--no-plots")
    assert rc == 0
    expect = galdecon.deconvolve(np.load(IMAGES), np.load(PSFS), n_iter=3, n_reweights=0,
                                 initial_primal=first.primal)
    np.testing.assert_array_equal(np.load(tmp_path / "k_primal.npy"), expect.primal)


def test_refuses_to_overwrite_outputs_and_inputs(tmp_path, capsys):
    args = ["deconvolve", "-i", IMAGES, "-p", PSFS, "-o", tmp_path / "o", "--n-iter", 2,
            "-q", "--no-plots"]
    assert run_cli(*args) == 0
    before = (tmp_path / "o_primal.npy").read_bytes()
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert "o_primal.npy: exists; pass --overwrite" in err
    assert (tmp_path / "o_primal.npy").read_bytes() == before
    assert run_cli(*args, "--overwrite") == 0
    # an output stem that would replace an input
    copy = tmp_path / "in_primal.npy"
    copy.write_bytes(IMAGES.read_bytes())
    assert run_cli("deconvolve", "-i", copy, "-p", PSFS, "-o", tmp_path / "in", "-q") == 2
    assert "overwrite an input" in capsys.readouterr().err
    assert copy.read_bytes() == IMAGES.read_bytes()


def test_unwritable_or_missing_output_directory(tmp_path, capsys):
    rc = run_cli("deconvolve", "-i", IMAGES, "-p", PSFS, "-o", tmp_path / "no" / "dir" / "x")
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err


def test_failed_run_leaves_no_outputs(tmp_path):
    bad = tmp_path / "bad.npy"
    arr = np.load(IMAGES).copy()
    arr[5, 3, 3] = np.nan
    np.save(bad, arr)
    assert run_cli("deconvolve", "-i", bad, "-p", PSFS, "-o", tmp_path / "r") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npy"]


def test_help_documents_every_option_with_default(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["deconvolve", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo line wrapping
    sub = next(a for a in build_parser()._subparsers._group_actions[0].choices.values())
    for action in sub._actions:
        for opt in action.option_strings:
            assert opt in text
    for expected in ("(default: 300)", "(default: 0.0001)", "(default: starlet)",
                     "(default: [3.0, 3.0, 4.0])", "(default: 0.8)", "(default: periodic)",
                     "(default: sparse)", "(default: float64)", "(default: 1)"):
        assert expected in text


def test_console_script_and_module_entry_points(tmp_path):
    exe = Path(sys.executable).with_name("galdecon")
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and galdecon.__version__ in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "galdecon", "deconvolve", "-i",
                           str(tmp_path / "missing.npy"), "-p", str(PSFS)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"galdecon: error: {tmp_path / 'missing.npy'}: file not found"]


def test_progress_shows_iterations_and_cost_on_stderr(tmp_path, capsys):
    psf = np.zeros((5, 5))
    psf[2, 2] = 1.0
    np.save(tmp_path / "i.npy", np.ones((3, 9, 9)))
    np.save(tmp_path / "p.npy", psf)
    rc = run_cli("deconvolve", "-i", tmp_path / "i.npy", "-p", tmp_path / "p.npy", "-o",
                 tmp_path / "o", "--n-iter", 8, "--noise-est", 0.1, "--progress",
                 "--no-plots", "-q")
    assert rc == 0
    err = capsys.readouterr().err
    assert "16/16" in err and "cost " in err


def test_no_command_module_imports_another():
    import ast

    commands = {"bench", "convert", "deconvolve", "evaluate", "show", "simulate"}
    cli = Path(galdecon.__file__).parent / "cli"
    for name in commands:
        tree = ast.parse((cli / f"{name}.py").read_text())
        taken = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "galdecon.cli":
                taken |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "galdecon.cli."):
                taken.add(node.module.split(".")[2])
        assert taken & commands == set(), name
