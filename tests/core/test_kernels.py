"""The fused passes of the sparse iteration against the numpy formulas they replace."""

import numpy as np
import pytest
import scipy.fft as sfft

from galdecon.core import kernels
from galdecon.core.operators.convolution import rfft2_stack
from galdecon.core.operators.wavelet import Wavelet, shared_wavelet

DTYPES = [np.float64, np.float32]


def _state(dtype, m=3, n_bands=3, p=49, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((m, n_bands, p)).astype(dtype)
    phi_x = rng.standard_normal((m, n_bands, p)).astype(dtype)
    smooth = rng.standard_normal((m, n_bands, p)).astype(dtype)
    x_tilde = rng.standard_normal((m, p)).astype(dtype)
    upper = rng.uniform(0.1, 1.5, (m, n_bands, p)).astype(dtype)
    return y, phi_x, smooth, x_tilde, upper


@pytest.mark.parametrize("dtype", DTYPES)
def test_dual_step_is_the_numpy_update(dtype):
    y, phi_x, smooth, x_tilde, upper = _state(dtype)
    sigma, rho = dtype(0.5), dtype(0.8)
    # Φx̃ from the smoothings: band j = S_j x̃ − S_{j+1} x̃ with S_0 = I
    lower_bands = np.concatenate([x_tilde[:, None], smooth[:, :-1]], axis=1)
    phi_tilde = lower_bands - smooth
    candidate = (phi_tilde * (sigma + sigma) - sigma * phi_x) + y
    clipped = np.maximum(np.minimum(candidate, upper), -upper)
    want_y = y + rho * (clipped - y)
    want_phi = phi_x + rho * (phi_tilde - phi_x)
    diffs = np.empty_like(y[:, 1:])
    kernels.dual_step(y, phi_x, smooth, x_tilde, upper, sigma, rho, diffs)
    assert y.dtype == dtype and phi_x.dtype == dtype
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(diffs, want_y[:, 1:] - want_y[:, :-1])
    np.testing.assert_array_equal(phi_x, want_phi)
    assert np.all(np.abs(clipped) <= upper)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("positivity", [True, False])
def test_primal_step_and_relax(dtype, positivity):
    rng = np.random.default_rng(1)
    x, adj, grad = (rng.standard_normal((4, 50)).astype(dtype) for _ in range(3))
    dual = rng.standard_normal((4, 3, 50)).astype(dtype)
    want = x - dtype(0.5) * ((adj + dual[:, 0]) + grad)
    if positivity:
        want = np.maximum(want, 0)
    out = adj.copy()
    kernels.primal_step(x, out, grad, dual, dtype(0.5), positivity)
    np.testing.assert_array_equal(out, want)
    x, out = x.reshape(-1), out.reshape(-1)
    target = x.copy()
    kernels.relax(target, out, dtype(0.8))
    np.testing.assert_array_equal(target, x + dtype(0.8) * (out - x))


def test_primal_step_keeps_nan():
    x = np.array([[np.nan, -1.0, 2.0]])
    out = np.zeros((1, 3))
    kernels.primal_step(x, out, np.zeros((1, 3)), np.zeros((1, 2, 3)), 1.0, True)
    assert np.isnan(out[0, 0]) and out[0, 1] == 0.0 and out[0, 2] == 2.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_costs_are_the_numpy_sums(dtype):
    y, phi_x, smooth, x_tilde, upper = _state(dtype, m=4, p=1681)
    want = np.sum(upper.astype(np.float64) * np.abs(phi_x.astype(np.float64)))
    assert kernels.weighted_l1(upper, phi_x) == pytest.approx(want, rel=1e-13)
    rng = np.random.default_rng(2)
    complex_dtype = np.result_type(dtype, np.complex64)
    spec, image, transfer = ((rng.standard_normal((4, 9, 5)) + 1j * rng.standard_normal(
        (4, 9, 5))).astype(complex_dtype) for _ in range(3))
    parseval = rng.uniform(0.5, 2.0, 5)
    for t in (transfer, transfer[:1]):  # one transfer per stamp, or one shared
        resid = (t * spec - image).astype(np.complex128)
        want = 0.5 * np.sum(np.abs(resid) ** 2 * parseval)
        rel = 1e-13 if dtype == np.float64 else 1e-5
        assert kernels.fidelity_cost(spec, t, image, parseval) == pytest.approx(want, rel=rel)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_spectrum_with_shared_and_own_gains(dtype):
    rng = np.random.default_rng(3)
    spec, hty = (rng.standard_normal((3, 7, 8)).astype(dtype) for _ in range(2))
    for gain in (rng.standard_normal((3, 7, 8)).astype(dtype),
                 rng.standard_normal((1, 7, 8)).astype(dtype)):
        out = np.empty_like(spec)
        kernels.gradient_spectrum(spec, gain, hty, out)
        np.testing.assert_array_equal(out, spec * gain - hty)


@pytest.mark.parametrize("shape", [(41, 41), (15, 16), (64, 60)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rfft2_stack_equals_scipy_and_is_the_same_bits_in_any_stack(shape, dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300,) + shape).astype(dtype)
    out = rfft2_stack(x, dtype)
    want = sfft.rfft2(x.astype(np.float64))
    tol = 1e-12 if dtype == np.float64 else 5e-5
    assert out.shape == want.shape
    np.testing.assert_allclose(out, want, rtol=0, atol=tol * np.abs(want).max())
    np.testing.assert_array_equal(rfft2_stack(x[7:9], dtype), out[7:9])
    np.testing.assert_array_equal(rfft2_stack(x[5], dtype), out[5])


@pytest.mark.parametrize("boundary", ["periodic", "zero"])
@pytest.mark.parametrize("n_scales", [2, 4])
def test_adjoint_from_band_differences_is_the_adjoint_less_its_first_band(boundary, n_scales):
    op = Wavelet((17, 19), n_scales, "starlet", boundary)
    z = np.random.default_rng(6).standard_normal((3, n_scales - 1, 17, 19))
    out = np.empty((3, 17, 19))
    op.adj_of_differences_into(z[:, 1:] - z[:, :-1], z[:, -1], out,
                               np.empty(op.work_shape(3)))
    np.testing.assert_allclose(out + z[:, 0], op.adj(z), rtol=0, atol=1e-13)


def test_shared_wavelet_is_built_once_and_equals_a_fresh_one():
    a = shared_wavelet((41, 41), 4, "starlet", "periodic", np.float32)
    assert a is shared_wavelet((41, 41), 4, "starlet", "periodic", np.float32)
    x = np.random.default_rng(5).standard_normal((2, 41, 41)).astype(np.float32)
    np.testing.assert_array_equal(a.op(x), Wavelet((41, 41), 4, "starlet", "periodic",
                                                   np.float32).op(x))
