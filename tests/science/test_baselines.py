"""Baselines against closed forms: Wiener/Tikhonov, Richardson–Lucy, HSM PSF correction."""

import numpy as np
import pytest

from galdecon.core.operators import Convolution
from galdecon.science.baselines import (
    observed,
    psf_corrected_shapes,
    richardson_lucy,
    richardson_lucy_path,
    tikhonov_regularisation,
    wiener,
)

N = 41


def gaussian(cov, shape=(N, N)):
    k, col = np.mgrid[:shape[0], :shape[1]].astype(float)
    d = np.stack([k - shape[0] // 2, col - shape[1] // 2])
    inv = np.linalg.inv(np.asarray(cov, dtype=float))
    return np.exp(-0.5 * np.einsum("i...,ij,j...->...", d, inv, d))


@pytest.fixture
def blurred():
    """Positive random galaxies-like stamps, per-stamp PSFs with no zero in their spectrum."""
    rng = np.random.default_rng(4)
    truth = np.stack([gaussian(np.diag(rng.uniform(2, 8, 2))) for _ in range(4)])
    truth += 0.05 * rng.random(truth.shape)
    psfs = np.zeros((4, 5, 5))
    psfs[:, 2, 2] = 0.6
    psfs[:, 1, 2] = psfs[:, 3, 2] = psfs[:, 2, 1] = psfs[:, 2, 3] = 0.1
    psfs[1] = np.roll(psfs[1], 1, axis=1)  # an off-centre PSF: a shift, still invertible
    clean = Convolution(psfs, (N, N), "periodic").op(truth)
    return truth, psfs, clean


def test_wiener_without_regularisation_inverts_noiseless_data(blurred):
    truth, psfs, clean = blurred
    np.testing.assert_allclose(wiener(clean, psfs, regularisation=0.0), truth, atol=1e-12)


def test_wiener_matches_the_full_fft_formula(blurred):
    truth, psfs, clean = blurred
    lam = np.array([0.0, 0.01, 0.1, 1.0])
    grid = np.zeros((4, N, N))
    grid[:, :5, :5] = psfs
    grid = np.roll(grid, (-2, -2), axis=(1, 2))  # kernel origin at pixel (k//2, k//2)
    h = np.fft.fft2(grid)
    expected = np.fft.ifft2(np.conj(h) * np.fft.fft2(clean) / (np.abs(h) ** 2
                                                               + lam[:, None, None])).real
    np.testing.assert_allclose(wiener(clean, psfs, regularisation=lam), expected, atol=1e-12)
    # a delta PSF: the filter is 1 / (1 + λ)
    delta = np.zeros((3, 3))
    delta[1, 1] = 1.0
    np.testing.assert_allclose(wiener(clean, delta, regularisation=0.25), clean / 1.25,
                               atol=1e-14)


def test_tikhonov_regularisation_is_noise_over_signal_power():
    images = np.ones((2, 4, 4))
    images[1] *= 3.0
    p = 16
    lam = tikhonov_regularisation(images, noise_sigma=0.5)
    np.testing.assert_allclose(lam, [p * 0.25 / (16 - p * 0.25), p * 0.25 / (144 - p * 0.25)])
    # all noise: the floor keeps it finite
    assert np.isfinite(tikhonov_regularisation(np.zeros((1, 4, 4)), noise_sigma=1.0)).all()


def test_richardson_lucy_preserves_flux_and_positivity(blurred):
    truth, psfs, clean = blurred
    rng = np.random.default_rng(0)
    noisy = clean + 0.02 * rng.standard_normal(clean.shape)
    for n_iter in (1, 5, 30):
        estimate = richardson_lucy(noisy, psfs, n_iter=n_iter)
        assert estimate.min() >= 0.0
        np.testing.assert_allclose(estimate.sum(axis=(1, 2)),
                                   np.maximum(noisy, 0).sum(axis=(1, 2)), rtol=1e-10)


def test_richardson_lucy_closed_forms_and_convergence(blurred):
    truth, psfs, clean = blurred
    delta = np.zeros((1, 1))
    delta[0, 0] = 1.0
    # identity PSF: one iteration from a flat start gives the (clipped) data exactly
    data = clean - 0.1
    np.testing.assert_allclose(richardson_lucy(data, delta, n_iter=1), np.maximum(data, 0),
                               atol=1e-15)
    # noiseless data: more iterations, closer to the truth
    err = [np.linalg.norm(richardson_lucy(clean, psfs, n_iter=k) - truth) for k in (2, 20, 200)]
    assert err[0] > err[1] > err[2]


def test_observed_is_a_copy():
    images = np.ones((2, 3, 3))
    out = observed(images)
    out[0, 0, 0] = 5.0
    assert images[0, 0, 0] == 1.0


def test_psf_corrected_shapes_recover_the_intrinsic_shape():
    pytest.importorskip("galsim")
    galaxy = np.array([[10.0, 3.0], [3.0, 18.0]])
    psf_cov = np.eye(2) * 2.5
    # Gaussian ⊛ Gaussian: the covariances add
    stamps = np.stack([gaussian(galaxy + psf_cov), np.zeros((N, N))])
    psf = gaussian(psf_cov)
    psf /= psf.sum()
    shapes, ok = psf_corrected_shapes(stamps, psf, noise_sigma=1e-4)
    (rr, rc), (_, cc) = galaxy
    expected = [(rr - cc) / (rr + cc), 2 * rc / (rr + cc)]
    assert ok.tolist() == [True, False]
    np.testing.assert_allclose(shapes[0], expected, atol=0.01)
    assert np.isnan(shapes[1]).all()


def test_docstring_examples():
    import doctest

    import galdecon.science.baselines

    result = doctest.testmod(galdecon.science.baselines, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_richardson_lucy_path_equals_separate_runs(blurred):
    truth, psfs, clean = blurred
    rng = np.random.default_rng(1)
    noisy = clean + 0.02 * rng.standard_normal(clean.shape)
    path = dict(richardson_lucy_path(noisy, psfs, (7, 0, 3, 3)))
    assert list(path) == [0, 3, 7]
    for k, estimate in path.items():
        np.testing.assert_array_equal(estimate, richardson_lucy(noisy, psfs, n_iter=k))
    # the flat start: the clipped data's flux spread over the stamp
    np.testing.assert_allclose(path[0].sum(axis=(1, 2)), np.maximum(noisy, 0).sum(axis=(1, 2)))
