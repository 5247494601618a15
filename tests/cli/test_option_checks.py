"""Options refused before any work (issue 11): each case crashed or ran silently wrong."""

import math
from pathlib import Path

import numpy as np
import pytest

import galdecon
from galdecon.cli import main
from galdecon.errors import ConfigError

DATA = Path(__file__).resolve().parents[2] / "data" / "sf_deconvolve_example"
IMAGES = DATA / "example_image_stack.npy"
PSFS = DATA / "example_psfs.npy"


def refused(tmp_path, capsys, *options):
    stem = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        rc = main(["deconvolve", "-i", str(IMAGES), "-p", str(PSFS), "-o", str(stem),
                   "--no-plots", *map(str, options)])
        raise SystemExit(rc)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert list(tmp_path.iterdir()) == []  # refused before anything is written
    return err


def test_cost_window_longer_than_the_run_is_refused(tmp_path, capsys):
    # It crashed with a TypeError after writing the outputs (final_cost null).
    err = refused(tmp_path, capsys, "--n-iter", 30, "--cost-window", 50)
    assert err == ("galdecon: error: --cost-window 50: expected at most --n-iter (30): the "
                   "cost is computed every --cost-window iterations")


@pytest.mark.parametrize(("options", "message"), [
    # the API's names (condat_tau, tolerance, n_scales) never reach a command-line user
    (["--condat-tau", 100], "--condat-tau 100.0: expected at most 0.99999988 with "
                            "--condat-sigma 0.5"),
    (["--convergence", -1], "--convergence -1.0: expected a finite number >= 0"),
    (["--n_scales", 1], "--n_scales 1: expected an integer >= 2"),  # the spelling typed
    (["--wave-thresh-factor", 1, 2], "--wave-thresh-factor [1.0, 2.0]: expected 3 values, one "
                                     "per detail scale (--n-scales - 1)"),
    (["--relax", 3], "--relax 3.0: expected a number in (0, 2)"),
])
def test_messages_name_the_options_as_typed(tmp_path, capsys, options, message):
    err = refused(tmp_path, capsys, *options)
    assert err.startswith(f"galdecon: error: {message}")
    for name in ("condat_tau", "condat_sigma", "tolerance", "n_scales=", "option "):
        assert name not in err.replace("--n_scales", "")


def test_translation_leaves_paths_and_plain_words_alone():
    from galdecon.cli.messages import translate

    names = {"n_iter": "--n-iter", "relax": "--relax", "tolerance": "--convergence"}
    assert translate("option relax=3: the relax step; /data/n_iter/x.npy and n_iter.npy, "
                     "n_iter=4, tolerance", names) == (
        "--relax 3: the relax step; /data/n_iter/x.npy and n_iter.npy, --n-iter 4, tolerance")


def test_settings_refuse_a_cost_window_longer_than_n_iter():
    with pytest.raises(ConfigError, match=r"cost_window=4: expected at most n_iter \(3\)"):
        galdecon.Settings(n_iter=3, cost_window=4)
    assert galdecon.Settings(n_iter=4, cost_window=4).cost_window == 4


@pytest.mark.parametrize("kernel", ["nan", "-1", "0", "inf"])
def test_kernel_must_be_a_positive_finite_sigma(tmp_path, capsys, kernel):
    # nan made every metric NaN with exit 0; -1 was accepted.
    err = refused(tmp_path, capsys, "--n-iter", 2, "-c", IMAGES, "--kernel", kernel)
    assert "--kernel" in err and "expected a number" in err


@pytest.mark.parametrize("kernel", [math.nan, -1.0, 0, math.inf, True, "2"])
def test_api_refuses_a_bad_kernel(kernel):
    images, psfs = np.load(IMAGES)[:2], np.load(PSFS)[:2]
    with pytest.raises(ConfigError, match=r"option kernel=.*expected a finite number > 0"):
        galdecon.deconvolve(images, psfs, truth=images, kernel=kernel, n_iter=2)


def test_api_accepts_a_kernel_and_records_it():
    images, psfs = np.load(IMAGES)[:2], np.load(PSFS)[:2]
    result = galdecon.deconvolve(images, psfs, truth=images, kernel=2, n_iter=2,
                                 n_reweights=0)
    assert result.record["metrics"]["kernel"] == 2.0
    assert np.isfinite(result.record["metrics"]["median"]["pixel_error"])
