"""Quality metrics against hand-computed cases (ALGORITHM.md §8)."""

import numpy as np
import pytest

from galdecon.science.metrics import ellipticity, ellipticity_error, evaluate, pixel_error, psnr


def test_bars_have_unit_ellipticity():
    horizontal = np.zeros((11, 11))
    horizontal[5, 2:9] = 1.0
    vertical = horizontal.T.copy()
    e = ellipticity(np.stack([horizontal, vertical]))
    np.testing.assert_allclose(e, [[-1.0, 0.0], [1.0, 0.0]], atol=1e-12)
    diagonal = np.eye(9)
    np.testing.assert_allclose(ellipticity(diagonal), [[0.0, 1.0]], atol=1e-12)


def test_round_gaussian_is_round_and_elliptical_gaussian_matches_closed_form():
    k, col = np.mgrid[:41, :41] - 20.0
    round_ = np.exp(-(k**2 + col**2) / (2 * 3.0**2))
    np.testing.assert_allclose(ellipticity(round_), [[0.0, 0.0]], atol=1e-10)
    sk, sl = 2.0, 4.0  # widths along rows (k) and columns (l)
    elong = np.exp(-(k**2) / (2 * sk**2) - col**2 / (2 * sl**2))
    # unweighted moments of a (well sampled) Gaussian: e1 = (sk² − sl²)/(sk² + sl²)
    np.testing.assert_allclose(ellipticity(elong)[0], [(sk**2 - sl**2) / (sk**2 + sl**2), 0.0],
                               atol=1e-5)  # truncation at ±5σ


def test_ellipticity_is_translation_invariant():
    img = np.zeros((21, 21))
    img[8:11, 5:15] = np.arange(30).reshape(3, 10) + 1.0
    shifted = np.roll(img, (3, -2), axis=(0, 1))
    np.testing.assert_allclose(ellipticity(img), ellipticity(shifted), atol=1e-12)
    assert ellipticity_error(img, shifted)[0] == pytest.approx(0.0, abs=1e-12)


def test_pixel_error_and_psnr_closed_forms():
    truth = np.zeros((2, 4, 4))
    truth[0, 1, 1] = 2.0
    truth[1] = np.arange(16).reshape(4, 4)
    estimate = truth.copy()
    estimate[0, 1, 1] = 1.0           # error 1 over norm 4
    estimate[1, 0, 0] += 3.0          # error 9 over norm Σk² = 1240
    np.testing.assert_allclose(pixel_error(truth, estimate), [1 / 4, 9 / 1240])
    # PSNR = 20 log10(range · sqrt(p) / ‖err‖)
    np.testing.assert_allclose(psnr(truth, estimate),
                               [20 * np.log10(2 * 4 / 1.0), 20 * np.log10(15 * 4 / 3.0)])


def test_evaluate_aggregates_and_kernel():
    rng = np.random.default_rng(0)
    truth = rng.random((5, 9, 9)) + 0.1
    estimate = truth + 0.01 * rng.standard_normal(truth.shape)
    out = evaluate(truth, estimate)
    per = np.asarray(out["per_galaxy"]["pixel_error"])
    assert per.shape == (5,)
    assert out["median"]["pixel_error"] == pytest.approx(np.median(per))
    assert out["mean"]["psnr"] == pytest.approx(np.mean(psnr(truth, estimate)))
    windowed = evaluate(truth, estimate, kernel=2.0)
    assert windowed["median"]["pixel_error"] != pytest.approx(out["median"]["pixel_error"])
    with pytest.raises(ValueError, match="shape"):
        evaluate(truth, estimate[:3])


def test_the_run_record_and_galdecon_evaluate_share_one_implementation():
    # the record's metrics are galdecon evaluate's, for the metrics both report
    from galdecon.science.evaluate import evaluate as evaluate_command

    rng = np.random.default_rng(1)
    truth = rng.random((6, 11, 11)) + 0.1
    estimate = truth + 0.05 * rng.standard_normal(truth.shape)
    estimate[2] = truth[2]  # a perfect galaxy: PSNR = inf in both
    record = evaluate(truth, estimate)
    command = evaluate_command(truth, estimate, hsm=False)
    for name in ("pixel_error", "ellipticity_error", "psnr"):
        assert record["per_galaxy"][name] == command["per_galaxy"][name]
        assert record["summary"][name] == command["summary"][name]
        assert record["median"][name] == command["summary"][name]["median"]
        assert record["mean"][name] == command["summary"][name]["mean"]


def test_galsim_missing_says_how_to_install_it(monkeypatch):
    import sys

    from galdecon.errors import EngineError
    from galdecon.science.galsim_import import galsim

    monkeypatch.setitem(sys.modules, "galsim", None)  # import galsim raises ImportError
    with pytest.raises(EngineError, match=r"adaptive moments need GalSim: pip install "
                                          r"'galdecon\[sim\]' \(or use --no-hsm\)"):
        galsim("adaptive moments", "use --no-hsm")
