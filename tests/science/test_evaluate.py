"""Quality metrics against hand-computed cases, their aggregation and output, the CLI, and
simulate → deconvolve → evaluate end to end."""

import csv
import json

import numpy as np
import pytest

from galdecon.science.evaluate import (
    evaluate,
    format_summary,
    format_table,
    summarise,
    window_ellipticity,
    write_csv,
    write_json,
)
from galdecon.science.metrics import ellipticity

N = 41


def gaussian(cov, shape=(N, N), centre=None):
    """A sampled 2-D Gaussian with covariance ``cov`` over (row, column)."""
    centre = (shape[0] // 2, shape[1] // 2) if centre is None else centre
    k, col = np.mgrid[:shape[0], :shape[1]].astype(float)
    d = np.stack([k - centre[0], col - centre[1]])
    inv = np.linalg.inv(np.asarray(cov, dtype=float))
    return np.exp(-0.5 * np.einsum("i...,ij,j...->...", d, inv, d))


def distortion(cov):
    """(e1, e2) in galdecon's convention (row = first axis) of a covariance matrix."""
    (rr, rc), (_, cc) = cov
    return np.array([(rr - cc) / (rr + cc), 2 * rc / (rr + cc)])


def test_bar_and_round_gaussian_by_hand():
    bar = np.zeros((N, N))
    bar[N // 2, 10:31] = 1.0  # along the columns (x): e = (-1, 0) in this convention
    np.testing.assert_allclose(ellipticity(bar), [[-1.0, 0.0]], atol=1e-12)
    np.testing.assert_allclose(window_ellipticity(bar), [[-1.0, 0.0]], atol=1e-12)
    round_ = gaussian(np.eye(2) * 9.0)
    np.testing.assert_allclose(ellipticity(round_), [[0.0, 0.0]], atol=1e-10)
    np.testing.assert_allclose(window_ellipticity(round_), [[0.0, 0.0]], atol=1e-10)


def test_window_moments_of_a_gaussian_closed_form():
    # a Gaussian times a Gaussian window σw is a Gaussian of covariance (C⁻¹ + I/σw²)⁻¹
    cov = np.array([[6.0, 2.0], [2.0, 12.0]])
    window = 5.0
    expected = distortion(np.linalg.inv(np.linalg.inv(cov) + np.eye(2) / window**2))
    np.testing.assert_allclose(window_ellipticity(gaussian(cov), window)[0], expected,
                               atol=1e-6)


def test_adaptive_moments_recover_a_known_shape():
    galsim = pytest.importorskip("galsim")
    from galdecon.science.evaluate import adaptive_shapes

    cov = np.array([[9.0, 3.0], [3.0, 20.0]])  # well sampled, well inside the stamp
    shapes, ok = adaptive_shapes(np.stack([gaussian(cov), gaussian(np.eye(2) * 10.0)]))
    assert ok.all()
    np.testing.assert_allclose(shapes[0], distortion(cov), atol=1e-4)
    np.testing.assert_allclose(shapes[1], [0.0, 0.0], atol=1e-6)
    # an image drawn by GalSim with a given shear: HSM gives that shear back
    shear = galsim.Shear(g1=0.3, g2=-0.1)
    image = galsim.Gaussian(sigma=0.15).shear(shear).drawImage(nx=N, ny=N, scale=0.05,
                                                               method="no_pixel")
    shapes, ok = adaptive_shapes(image.array)
    np.testing.assert_allclose(shapes[0], [-shear.e1, shear.e2], atol=2e-3)
    # a failure is reported, not raised
    shapes, ok = adaptive_shapes(np.zeros((1, N, N)))
    assert not ok[0] and np.isnan(shapes[0]).all()


def test_summarise_counts_failures():
    stats = summarise([1.0, 2.0, 3.0, np.nan, 4.0, 5.0])
    assert stats["median"] == 3.0 and stats["mean"] == 3.0
    assert stats["p16"] == pytest.approx(np.percentile([1, 2, 3, 4, 5], 16))
    assert stats["n"] == 6 and stats["n_failed"] == 1
    assert stats["failure_fraction"] == pytest.approx(1 / 6)
    assert stats["median_all"] == 3.5  # the failure counted as the worst value
    assert summarise([1.0, np.nan, np.nan], higher_is_better=True)["median_all"] == -np.inf


def test_evaluate_closed_forms_and_given_shapes():
    truth = np.stack([gaussian(np.diag([4.0, 9.0])), gaussian(np.diag([6.0, 6.0]))])
    estimate = truth * 1.1  # a flux error only: shapes unchanged
    out = evaluate(truth, estimate, hsm=False)
    np.testing.assert_allclose(out["per_galaxy"]["pixel_error"], [0.01, 0.01])
    np.testing.assert_allclose(out["per_galaxy"]["pixel_error_window"], [0.01, 0.01])
    np.testing.assert_allclose(out["per_galaxy"]["ellipticity_error"], [0, 0], atol=1e-12)
    np.testing.assert_allclose(out["per_galaxy"]["ellipticity_error_window"], [0, 0],
                               atol=1e-12)
    assert "ellipticity_error_hsm" not in out["summary"] and out["hsm"] is None
    perfect = evaluate(truth, truth, hsm=False)
    assert perfect["summary"]["psnr"]["median"] == np.inf
    assert perfect["summary"]["psnr"]["n_failed"] == 0
    pytest.importorskip("galsim")
    given = np.array([[np.nan, np.nan], [0.0, 0.0]])
    out = evaluate(truth, estimate, estimate_shapes=given)
    assert out["hsm"]["failures"] == 1 and out["hsm"]["failure_fraction"] == 0.5
    assert out["hsm"]["estimate_failures"] == 1 and out["hsm"]["truth_failures"] == 0
    assert out["summary"]["ellipticity_error_hsm"]["n_failed"] == 1
    assert out["summary"]["ellipticity_error_hsm"]["median"] == pytest.approx(0.0, abs=1e-6)


def test_outputs(tmp_path):
    truth = np.stack([gaussian(np.diag([4.0, 9.0]))] * 3)
    out = evaluate(truth, truth + 0.01, hsm=False)
    write_json(tmp_path / "m.json", out)
    assert json.loads((tmp_path / "m.json").read_text())["summary"]["pixel_error"]["n"] == 3
    write_csv(tmp_path / "m.csv", out)
    rows = list(csv.reader((tmp_path / "m.csv").open()))
    assert rows[0][:2] == ["index", "pixel_error"] and len(rows) == 4
    assert float(rows[1][1]) == pytest.approx(out["per_galaxy"]["pixel_error"][0])
    table = format_table({"plus": out, "same": evaluate(truth, truth, hsm=False)})
    assert "plus" in table and "same" in table and "pix err" in table
    assert "pixel_error_window" in format_summary(out)


def test_cli_evaluate_from_a_record_and_from_a_dataset(tmp_path, capsys):
    pytest.importorskip("galsim")
    from test_simulate import run_cli

    from galdecon.science.simulate import export_npy, simulate, write_dataset

    data = simulate(8, seed=1, snr=(10,), workers=1)
    write_dataset(tmp_path / "d.npz", data)
    export_npy(data, tmp_path)
    stem = tmp_path / "run"
    assert run_cli("deconvolve", "-i", tmp_path / "noisy_snr10.npy", "-p",
                   tmp_path / "psfs.npy", "-c", tmp_path / "truth.npy", "-o", stem,
                   "--n-iter", 8, "--n-reweights", 0, "--no-plots", "-q") == 0
    assert run_cli("evaluate", "--record", tmp_path / "run_run.json", "-o",
                   tmp_path / "ev") == 0
    text = capsys.readouterr().out
    assert "ellipticity_error_hsm" in text and "HSM failures: 0 of 8" in text
    result = json.loads((tmp_path / "ev_metrics.json").read_text())
    record = json.loads((tmp_path / "run_run.json").read_text())
    assert result["summary"]["pixel_error"]["median"] == pytest.approx(
        record["metrics"]["median"]["pixel_error"])
    # the truth from the .npz data set, the estimate a plain file
    assert run_cli("evaluate", "-t", tmp_path / "d.npz", "-e", tmp_path / "noisy_snr10.npy",
                   "-o", tmp_path / "obs", "--no-hsm", "--label", "observed") == 0
    assert json.loads((tmp_path / "obs_metrics.json").read_text())["label"] == "observed"
    assert run_cli("evaluate", "-t", tmp_path / "d.npz", "-e", tmp_path / "noisy_snr10.npy",
                   "-o", tmp_path / "obs") == 2  # exists
    assert run_cli("evaluate", "-e", tmp_path / "noisy_snr10.npy") == 2  # no truth
    assert "no truth" in capsys.readouterr().err
    assert run_cli("evaluate", "-t", tmp_path / "d.npz", "-e", tmp_path / "psfs.npy",
                   "-o", tmp_path / "bad", "--no-hsm") == 0  # same shape: measurable
    assert run_cli("evaluate", "-t", tmp_path / "d.npz", "-e",
                   tmp_path / "run_dual.npy", "-o", tmp_path / "bad2") == 2  # wrong shape
    assert "estimate has 4 dimensions" in capsys.readouterr().err


def test_simulate_deconvolve_evaluate_beats_no_deconvolution():
    pytest.importorskip("galsim")
    import galdecon
    from galdecon.science.simulate import simulate

    data = simulate(20, seed=2017, snr=(10,), workers=1)
    observed = data["noisy"][10.0]
    # 40 iterations from the default start (ones) are enough to win by far (~10x at SNR 10)
    result = galdecon.deconvolve(observed, data["psfs"], n_iter=40, n_reweights=0)
    ours = evaluate(data["truth"], result.primal)
    raw = evaluate(data["truth"], observed)
    assert ours["hsm"]["failures"] == 0
    assert ours["summary"]["pixel_error"]["median"] < 0.5 * raw["summary"]["pixel_error"][
        "median"]
    assert ours["summary"]["pixel_error_window"]["median"] < raw["summary"][
        "pixel_error_window"]["median"]
    assert ours["summary"]["ellipticity_error_hsm"]["median"] < raw["summary"][
        "ellipticity_error_hsm"]["median"]


def test_docstring_examples():
    import doctest

    import galdecon.science.evaluate

    result = doctest.testmod(galdecon.science.evaluate, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
