"""The à trous wavelet operator Φ: filters, adjoint, reference convolutions."""

import numpy as np
import pytest
from scipy import signal

from galdecon.core.operators.wavelet import (
    WAVELETS,
    Wavelet,
    atrous_filters,
    atrous_impulses_1d,
    axis_matrix,
)

DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 2e-6, np.float64: 1e-13}
SHAPES = [(41, 41), (40, 38), (9, 12)]
BOUNDARIES = ["periodic", "zero"]

# ALGORITHM.md §3, 41×41 stamps, J = 3.
CHECK_L2 = {"linear": [0.800391, 0.272879, 0.119779],
            "starlet": [0.890796, 0.200664, 0.085508]}
CHECK_L1 = {"linear": [1.5, 1.21875, 1.072266],
            "starlet": [1.71875, 1.083008, 1.008348]}


def periodic_reference(x, filters):
    """Φ(X)_j = φ_j ⊛ X by FFT, filter centre (N//2) rolled to the origin."""
    n0, n1 = x.shape
    out = []
    for phi in filters:
        kernel = np.roll(phi, (-(n0 // 2), -(n1 // 2)), axis=(0, 1))
        out.append(np.fft.ifft2(np.fft.fft2(x) * np.fft.fft2(kernel)).real)
    return np.array(out)


def zero_reference(x, filters):
    """Φ(X)_j = φ_j ⊛ X as a linear convolution cropped to the stamp (origin N//2)."""
    n0, n1 = x.shape
    return np.array([signal.convolve(x, phi, mode="full", method="fft")
                     [n0 // 2:n0 // 2 + n0, n1 // 2:n1 // 2 + n1] for phi in filters])


# --------------------------------------------------------------------------------------
# filters


@pytest.mark.parametrize("wavelet", ["linear", "starlet"])
def test_filter_check_values(wavelet):
    filters = atrous_filters((41, 41), 4, wavelet)
    assert filters.shape == (3, 41, 41)
    assert filters.dtype == np.float64
    np.testing.assert_allclose(np.sqrt(np.sum(filters**2, axis=(1, 2))), CHECK_L2[wavelet],
                               rtol=0, atol=5e-7)
    np.testing.assert_allclose(np.sum(np.abs(filters), axis=(1, 2)), CHECK_L1[wavelet],
                               rtol=0, atol=5e-7)


@pytest.mark.parametrize("wavelet", ["linear", "starlet"])
@pytest.mark.parametrize("n_scales", [2, 3, 4, 5])
@pytest.mark.parametrize("shape", SHAPES)
def test_bands_plus_coarse_band_sum_to_delta(wavelet, n_scales, shape):
    filters = atrous_filters(shape, n_scales, wavelet)
    assert filters.shape == (n_scales - 1,) + shape
    coarse = np.outer(atrous_impulses_1d(shape[0], n_scales, wavelet)[-1],
                      atrous_impulses_1d(shape[1], n_scales, wavelet)[-1])
    delta = np.zeros(shape)
    delta[shape[0] // 2, shape[1] // 2] = 1.0
    np.testing.assert_allclose(filters.sum(axis=0) + coarse, delta, rtol=0, atol=1e-15)


@pytest.mark.parametrize("wavelet", ["linear", "starlet"])
def test_filters_are_symmetric_zero_mean_on_odd_stamps(wavelet):
    filters = atrous_filters((41, 41), 4, wavelet)
    np.testing.assert_array_equal(filters, filters[:, ::-1, ::-1])
    np.testing.assert_array_equal(filters, filters.transpose(0, 2, 1))
    np.testing.assert_allclose(filters.sum(axis=(1, 2)), 0.0, rtol=0, atol=1e-15)


def test_impulses_follow_the_atrous_recursion_with_clamped_border():
    # Size 5, linear kernel [1, 2, 1]/4: scale 1 has taps 1 apart, scale 2 taps 2 apart;
    # at the border the out-of-range index reads the edge pixel (which is 0 here).
    impulses = atrous_impulses_1d(5, 3, "linear")
    np.testing.assert_array_equal(impulses[0], [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(impulses[1], [0, 0.25, 0.5, 0.25, 0])
    np.testing.assert_array_equal(impulses[2], [0.125, 0.1875, 0.25, 0.1875, 0.125])
    # A narrow axis where clamping reads a non-zero edge pixel: size 3, linear, scale 2
    # (taps 2 apart) on c1 = [1/4, 1/2, 1/4]: c2[0] = c1[0]/4 + c1[0]/2 + c1[2]/4 reads
    # the clamped index -2 -> 0 (zero padding would give 3/16 instead of 1/4).
    impulses = atrous_impulses_1d(3, 3, "linear")
    np.testing.assert_array_equal(impulses[1], [0.25, 0.5, 0.25])
    np.testing.assert_array_equal(impulses[2], [0.25, 0.375, 0.25])


def test_wavelet_kernels():
    np.testing.assert_array_equal(WAVELETS["starlet"] * 16, [1, 4, 6, 4, 1])
    np.testing.assert_array_equal(WAVELETS["linear"] * 4, [1, 2, 1])


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_axis_matrix_is_a_centred_convolution(boundary):
    impulse = np.array([0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 5.0])
    v = np.random.default_rng(0).standard_normal(7)
    matrix = axis_matrix(impulse, boundary)
    if boundary == "periodic":
        expected = np.fft.ifft(np.fft.fft(v) * np.fft.fft(np.roll(impulse, -3))).real
    else:
        expected = np.convolve(v, impulse, mode="full")[3:10]
    np.testing.assert_allclose(matrix @ v, expected, rtol=0, atol=1e-13)


# --------------------------------------------------------------------------------------
# adjoint identity


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("wavelet", ["linear", "starlet"])
@pytest.mark.parametrize("n_scales", [2, 3, 4, 5])
def test_adjoint_identity(dtype, boundary, shape, wavelet, n_scales):
    rng = np.random.default_rng(n_scales)
    op = Wavelet(shape, n_scales, wavelet, boundary, dtype)
    x = rng.standard_normal((3,) + shape).astype(dtype)
    z = rng.standard_normal((3, n_scales - 1) + shape).astype(dtype)
    phi_x, phi_t_z = op.op(x), op.adj(z)
    assert phi_x.shape == (3, n_scales - 1) + shape and phi_x.dtype == dtype
    assert phi_t_z.shape == (3,) + shape and phi_t_z.dtype == dtype
    lhs = np.sum(phi_x.astype(np.float64) * z)
    rhs = np.sum(x.astype(np.float64) * phi_t_z)
    scale = np.linalg.norm(phi_x) * np.linalg.norm(z)
    assert abs(lhs - rhs) <= 10 * RTOL[dtype] * scale


# --------------------------------------------------------------------------------------
# reference convolutions


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("wavelet", ["linear", "starlet"])
@pytest.mark.parametrize("n_scales", [2, 4, 5])
def test_periodic_equals_fft_circular_convolution_with_filters(dtype, shape, wavelet,
                                                               n_scales):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2,) + shape)
    op = Wavelet(shape, n_scales, wavelet, "periodic", dtype)
    out = op.op(x)
    filters = atrous_filters(shape, n_scales, wavelet)
    for i in range(2):
        expected = periodic_reference(x[i], filters)
        np.testing.assert_allclose(out[i], expected, rtol=0,
                                   atol=10 * RTOL[dtype] * np.abs(expected).max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("wavelet", ["linear", "starlet"])
@pytest.mark.parametrize("n_scales", [2, 4, 5])
def test_zero_boundary_equals_cropped_linear_convolution_with_filters(dtype, shape, wavelet,
                                                                      n_scales):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2,) + shape)
    op = Wavelet(shape, n_scales, wavelet, "zero", dtype)
    out = op.op(x)
    filters = atrous_filters(shape, n_scales, wavelet)
    for i in range(2):
        expected = zero_reference(x[i], filters)
        np.testing.assert_allclose(out[i], expected, rtol=0,
                                   atol=10 * RTOL[dtype] * np.abs(expected).max())


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("wavelet", ["linear", "starlet"])
def test_adjoint_on_odd_stamps_is_sum_of_filter_convolutions(boundary, wavelet):
    # ALGORITHM.md §3: Φᵀ(Z)_i = Σ_j rot(φ_j) ⊛ Z_ij, and the filters are symmetric.
    rng = np.random.default_rng(3)
    z = rng.standard_normal((3, 41, 41))
    op = Wavelet((41, 41), 4, wavelet, boundary)
    filters = atrous_filters((41, 41), 4, wavelet)[:, ::-1, ::-1]
    reference = periodic_reference if boundary == "periodic" else zero_reference
    expected = sum(reference(z[j], filters)[j] for j in range(3))
    np.testing.assert_allclose(op.adj(z[None])[0], expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_periodic_and_zero_agree_away_from_the_border(boundary):
    # A stamp that is zero within the filters' reach of the border sees no boundary.
    rng = np.random.default_rng(4)
    x = np.zeros((1, 41, 41))
    x[0, 18:23, 18:23] = rng.standard_normal((5, 5))
    periodic = Wavelet((41, 41), 4, "linear", "periodic").op(x)
    zero = Wavelet((41, 41), 4, "linear", "zero").op(x)
    np.testing.assert_allclose(periodic, zero, rtol=0, atol=1e-15)


def test_band_sum_of_a_centred_delta_is_delta_minus_coarse_response():
    # Φ(X) summed over bands is X minus its coarse smoothing: for a delta at the centre
    # the band sum is the delta minus the coarse impulse response.
    x = np.zeros((1, 41, 41))
    x[0, 20, 20] = 1.0
    bands = Wavelet((41, 41), 4, "starlet").op(x)
    coarse = np.outer(atrous_impulses_1d(41, 4, "starlet")[-1],
                      atrous_impulses_1d(41, 4, "starlet")[-1])
    np.testing.assert_allclose(bands[0].sum(axis=0), x[0] - coarse, rtol=0, atol=1e-15)


def test_op_writes_into_out_and_leaves_input_untouched():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 9, 12))
    before = x.copy()
    op = Wavelet((9, 12), 3, "starlet")
    out = np.empty((2, 2, 9, 12))
    result = op.op(x, out=out)
    assert result is out
    np.testing.assert_array_equal(out, op.op(x))
    np.testing.assert_array_equal(x, before)


def test_filters_property_matches_function():
    op = Wavelet((40, 38), 5, "linear")
    assert op.n_bands == 4
    np.testing.assert_array_equal(op.filters, atrous_filters((40, 38), 5, "linear"))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"wavelet": "haar"}, "wavelet"),
    ({"boundary": "reflect"}, "boundary"),
    ({"n_scales": 1}, "n_scales"),
])
def test_invalid_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Wavelet((9, 9), **kwargs)
