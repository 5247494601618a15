"""The PSF convolution H: adjoint, reference constructions, spectral radius."""

import numpy as np
import pytest
from scipy import signal

from galdecon.core.operators.convolution import Convolution, kernel_to_grid, rfft_weights

DTYPES = [np.float32, np.float64]
# Relative tolerance of one operator application in each working dtype.
RTOL = {np.float32: 2e-6, np.float64: 1e-13}
BOUNDARIES = ["periodic", "zero"]
# (stamp shape, PSF shape): odd and even stamps, PSFs as large as or smaller than the stamp.
GEOMETRIES = [
    ((41, 41), (41, 41)),
    ((41, 41), (7, 9)),
    ((40, 38), (21, 21)),
    ((40, 38), (6, 8)),
    ((9, 12), (5, 5)),
    ((9, 12), (4, 6)),
]


def random_psfs(rng, n, shape):
    psfs = rng.random((n,) + tuple(shape))
    return psfs / psfs.sum(axis=(-2, -1), keepdims=True)


def reference_periodic(x, psf, adjoint=False):
    """ALGORITHM.md §2: zero array, kernel top-left, roll by -(k//2), FFT product."""
    k0, k1 = psf.shape
    grid = np.zeros(x.shape)
    grid[:k0, :k1] = psf
    grid = np.roll(grid, (-(k0 // 2), -(k1 // 2)), axis=(0, 1))
    transfer = np.fft.fft2(grid)
    if adjoint:
        transfer = transfer.conj()
    return np.fft.ifft2(np.fft.fft2(x) * transfer).real


def reference_zero(x, psf):
    """Full linear convolution cropped to the stamp, kernel origin at k//2."""
    c0, c1 = psf.shape[0] // 2, psf.shape[1] // 2
    full = signal.convolve(x, psf, mode="full", method="direct")
    return full[c0:c0 + x.shape[0], c1:c1 + x.shape[1]]


def reference_zero_adjoint(r, psf):
    """Adjoint of :func:`reference_zero`: convolution with rot(psf), shifted crop."""
    k0, k1 = psf.shape
    s0, s1 = k0 - 1 - k0 // 2, k1 - 1 - k1 // 2
    full = signal.convolve(r, psf[::-1, ::-1], mode="full", method="direct")
    return full[s0:s0 + r.shape[0], s1:s1 + r.shape[1]]


def dense_matrix(apply, shape):
    """Matrix of a linear map on one stamp, one column per pixel."""
    p = shape[0] * shape[1]
    basis = np.eye(p).reshape((p,) + tuple(shape))
    return np.stack([apply(e).ravel() for e in basis], axis=1)


# --------------------------------------------------------------------------------------
# kernel placement and helpers


def test_kernel_to_grid_centre_goes_to_origin():
    kernel = np.arange(15.0).reshape(3, 5)
    grid = kernel_to_grid(kernel, (6, 7))
    assert grid.shape == (6, 7)
    assert grid[0, 0] == kernel[1, 2]
    assert grid[-1, -2] == kernel[0, 0]
    assert grid[1, 2] == kernel[2, 4]
    assert grid.sum() == kernel.sum()
    np.testing.assert_array_equal(kernel_to_grid(np.stack([kernel, 2 * kernel]), (6, 7))[1],
                                  2 * grid)


def test_kernel_to_grid_rejects_kernel_larger_than_grid():
    with pytest.raises(ValueError, match="does not fit"):
        kernel_to_grid(np.ones((5, 5)), (4, 9))


@pytest.mark.parametrize("n_last", [1, 2, 7, 8, 41])
def test_rfft_weights_turn_half_spectrum_sums_into_full_sums(n_last):
    rng = np.random.default_rng(n_last)
    x = rng.standard_normal((5, n_last))
    full = np.sum(np.abs(np.fft.fft2(x)) ** 2)
    half = np.sum(np.abs(np.fft.rfft2(x)) ** 2 * rfft_weights(n_last))
    np.testing.assert_allclose(half, full, rtol=1e-13)


# --------------------------------------------------------------------------------------
# adjoint identity


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize(("shape", "psf_shape"), GEOMETRIES)
@pytest.mark.parametrize("shared", [True, False], ids=["psf2d", "psf3d"])
def test_adjoint_identity(dtype, boundary, shape, psf_shape, shared):
    rng = np.random.default_rng(1)
    n = 3
    psfs = random_psfs(rng, n, psf_shape)
    psfs = psfs[0] if shared else psfs
    conv = Convolution(psfs, shape, boundary, dtype)
    x = rng.standard_normal((n,) + shape).astype(dtype)
    y = rng.standard_normal((n,) + shape).astype(dtype)
    hx, hty = conv.op(x), conv.adj(y)
    assert hx.shape == hty.shape == (n,) + shape
    assert hx.dtype == hty.dtype == dtype
    lhs = np.sum(hx.astype(np.float64) * y)
    rhs = np.sum(x.astype(np.float64) * hty)
    scale = np.linalg.norm(hx) * np.linalg.norm(y)
    assert abs(lhs - rhs) <= 10 * RTOL[dtype] * scale


# --------------------------------------------------------------------------------------
# reference constructions


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "psf_shape"), GEOMETRIES)
def test_periodic_equals_reference_fft_construction(dtype, shape, psf_shape):
    rng = np.random.default_rng(2)
    psfs = random_psfs(rng, 3, psf_shape)
    x = rng.standard_normal((3,) + shape)
    conv = Convolution(psfs, shape, "periodic", dtype)
    forward, backward = conv.op(x), conv.adj(x)
    assert forward.dtype == backward.dtype == dtype
    for i in range(3):
        expected = reference_periodic(x[i], psfs[i])
        np.testing.assert_allclose(forward[i], expected, rtol=0,
                                   atol=10 * RTOL[dtype] * np.abs(expected).max())
        expected = reference_periodic(x[i], psfs[i], adjoint=True)
        np.testing.assert_allclose(backward[i], expected, rtol=0,
                                   atol=10 * RTOL[dtype] * np.abs(expected).max())


def test_periodic_equals_reference_on_example_to_1e_12(example_images, example_psfs):
    conv = Convolution(example_psfs[:5], (41, 41), "periodic")
    out = conv.op(example_images[:5])
    for i in range(5):
        expected = reference_periodic(example_images[i], example_psfs[i])
        np.testing.assert_allclose(out[i], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "psf_shape"), GEOMETRIES)
def test_zero_boundary_equals_cropped_linear_convolution(dtype, shape, psf_shape):
    rng = np.random.default_rng(3)
    psfs = random_psfs(rng, 2, psf_shape)
    x = rng.standard_normal((2,) + shape)
    conv = Convolution(psfs, shape, "zero", dtype)
    forward, backward = conv.op(x), conv.adj(x)
    assert forward.shape == backward.shape == (2,) + shape
    assert forward.dtype == backward.dtype == dtype
    for i in range(2):
        expected = reference_zero(x[i], psfs[i])
        np.testing.assert_allclose(forward[i], expected, rtol=0,
                                   atol=10 * RTOL[dtype] * np.abs(expected).max())
        expected = reference_zero_adjoint(x[i], psfs[i])
        np.testing.assert_allclose(backward[i], expected, rtol=0,
                                   atol=10 * RTOL[dtype] * np.abs(expected).max())


@pytest.mark.parametrize("psf_shape", [(5, 5), (7, 3), (41, 41)])
def test_zero_boundary_odd_kernel_equals_scipy_same_mode(psf_shape):
    # For odd kernels the centred crop is exactly scipy's mode='same'.
    rng = np.random.default_rng(4)
    psf = random_psfs(rng, 1, psf_shape)[0]
    x = rng.standard_normal((41, 41))
    out = Convolution(psf, (41, 41), "zero").op(x[None])[0]
    np.testing.assert_allclose(out, signal.convolve(x, psf, mode="same"), rtol=0, atol=1e-13)


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("psf_shape", [(5, 5), (9, 7)])
def test_adjoint_of_odd_kernel_is_convolution_with_rotated_kernel(boundary, psf_shape):
    # ALGORITHM.md §2: (HᵀR)_i = rot(h_i) ⊛ R_i (exact for odd kernel sizes).
    rng = np.random.default_rng(5)
    psf = random_psfs(rng, 1, psf_shape)[0]
    r = rng.standard_normal((2, 11, 13))
    adjoint = Convolution(psf, (11, 13), boundary).adj(r)
    rotated = Convolution(psf[::-1, ::-1], (11, 13), boundary).op(r)
    np.testing.assert_allclose(adjoint, rotated, rtol=0, atol=1e-14)


def test_shared_psf_equals_repeated_psf_stack():
    rng = np.random.default_rng(6)
    psf = random_psfs(rng, 1, (7, 7))[0]
    x = rng.standard_normal((4, 15, 15))
    for boundary in BOUNDARIES:
        shared = Convolution(psf, (15, 15), boundary)
        stack = Convolution(np.repeat(psf[None], 4, axis=0), (15, 15), boundary)
        assert shared.n_psfs == 1 and stack.n_psfs == 4
        np.testing.assert_array_equal(shared.op(x), stack.op(x))
        np.testing.assert_array_equal(shared.adj(x), stack.adj(x))


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_normal_equals_adjoint_of_forward(boundary):
    rng = np.random.default_rng(7)
    psfs = random_psfs(rng, 3, (9, 9))
    x = rng.standard_normal((3, 21, 20))
    conv = Convolution(psfs, (21, 20), boundary)
    np.testing.assert_allclose(conv.normal(x), conv.adj(conv.op(x)), rtol=0, atol=1e-14)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_workers_do_not_change_the_result_and_input_is_untouched(boundary):
    rng = np.random.default_rng(8)
    psfs = random_psfs(rng, 3, (9, 9))
    x = rng.standard_normal((3, 21, 21))
    before = x.copy()
    conv = Convolution(psfs, (21, 21), boundary)
    np.testing.assert_allclose(conv.op(x, workers=2), conv.op(x), rtol=0, atol=1e-15)
    np.testing.assert_array_equal(x, before)


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="boundary"):
        Convolution(np.ones((3, 3)), (9, 9), "reflect")
    with pytest.raises(ValueError, match="larger than the stamp"):
        Convolution(np.ones((11, 3)), (9, 9))


# --------------------------------------------------------------------------------------
# spectral radius beta = rho(HᵀH)


@pytest.mark.parametrize(("shape", "psf_shape"), GEOMETRIES)
def test_periodic_beta_is_max_squared_transfer(shape, psf_shape):
    rng = np.random.default_rng(9)
    psfs = random_psfs(rng, 3, psf_shape)
    psfs[1] *= 1.5  # make one PSF the largest
    conv = Convolution(psfs, shape, "periodic")
    expected = []
    for psf in psfs:
        grid = np.zeros(shape)
        grid[:psf.shape[0], :psf.shape[1]] = psf
        expected.append(np.max(np.abs(np.fft.fft2(grid)) ** 2))
    norms = conv.spectral_norms()
    assert norms.shape == (3,) and norms.dtype == np.float64
    np.testing.assert_allclose(norms, expected, rtol=1e-13)
    assert conv.beta() == pytest.approx(max(expected), rel=1e-13)
    assert conv.beta() == pytest.approx(2.25, rel=1e-13)  # a non-negative PSF peaks at ω=0


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize(("shape", "psf_shape"), [((9, 9), (5, 5)), ((9, 12), (4, 6)),
                                                  ((8, 8), (5, 3))])
def test_spectral_norms_equal_dense_matrix_eigenvalue(boundary, shape, psf_shape):
    rng = np.random.default_rng(10)
    psfs = random_psfs(rng, 2, psf_shape)
    conv = Convolution(psfs, shape, boundary)
    norms = conv.spectral_norms()
    for i, psf in enumerate(psfs):
        single = Convolution(psf, shape, boundary)
        matrix = dense_matrix(lambda e, op=single: op.op(e[None])[0], shape)
        largest = np.linalg.eigvalsh(matrix.T @ matrix)[-1]
        assert norms[i] == pytest.approx(largest, rel=1e-8, abs=0)
    if boundary == "zero":
        # Zero padding loses flux at the border: strictly below the periodic radius.
        assert np.all(norms < Convolution(psfs, shape, "periodic").spectral_norms())


def test_zero_boundary_beta_on_example_psf_equals_dense_eigenvalue(example_psfs):
    # 41×41 stamp and 41×41 PSF: the dense operator is 1681×1681.
    conv = Convolution(example_psfs[0], (41, 41), "zero")
    p = 41 * 41
    matrix = conv.op(np.eye(p).reshape(p, 41, 41)).reshape(p, p).T
    largest = np.linalg.eigvalsh(matrix.T @ matrix)[-1]
    assert conv.beta() == pytest.approx(largest, rel=1e-8, abs=0)


def test_float32_operator_reports_float64_norms():
    rng = np.random.default_rng(11)
    psfs = random_psfs(rng, 2, (5, 5))
    for boundary in BOUNDARIES:
        n32 = Convolution(psfs, (9, 9), boundary, np.float32).spectral_norms()
        n64 = Convolution(psfs, (9, 9), boundary, np.float64).spectral_norms()
        assert n32.dtype == np.float64
        np.testing.assert_allclose(n32, n64, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(41, 41), (40, 38), (9, 12), (1, 5)])
def test_dense_rfft2_equals_scipy_fft(dtype, shape):
    import scipy.fft as sfft

    from galdecon.core.operators.convolution import DenseRFFT2

    rng = np.random.default_rng(5)
    x = rng.standard_normal((3,) + shape).astype(dtype)
    dft = DenseRFFT2(shape, dtype)
    spec = dft.forward(x)
    reference = sfft.rfft2(x.astype(np.float64))
    assert spec.shape == reference.shape and spec.dtype == np.result_type(dtype, 1j)
    scale = np.abs(reference).max()
    np.testing.assert_allclose(spec, reference, atol=RTOL[dtype] * 10 * scale)
    # the inverse ignores the imaginary parts irfft2 ignores (zero and Nyquist frequencies)
    noisy = reference + 1j * rng.standard_normal(reference.shape)
    back = dft.inverse(noisy.astype(spec.dtype))
    np.testing.assert_allclose(back, sfft.irfft2(noisy, s=shape),
                               atol=RTOL[dtype] * 10 * np.abs(noisy).max())
    # into caller-provided arrays, with the same results
    out = np.empty_like(spec)
    work = np.empty(spec.shape[:2] + (2 * spec.shape[2],), dtype=dtype)
    assert dft.forward(x, out, work) is out
    np.testing.assert_array_equal(out, spec)
    np.testing.assert_allclose(dft.inverse(spec), x, atol=RTOL[dtype] * 10 * np.abs(x).max())
