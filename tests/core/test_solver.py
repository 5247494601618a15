"""Condat–Vũ steps on blocks, costs, reweighting and the convergence test."""

import numpy as np
import pytest
from scipy import signal

from galdecon.core.operators.convolution import Convolution
from galdecon.core.operators.prox import svt
from galdecon.core.operators.wavelet import atrous_filters
from galdecon.core.problem import Settings, make_problem
from galdecon.core.solver import (
    Block,
    ConvergenceTest,
    OperatorCache,
    galaxy_snr,
    lowr_step,
    reweight,
    sparse_iterate,
)
from galdecon.run.driver import init_block

DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


# --------------------------------------------------------------------------------------
# independent reference operators (FFT / scipy), one stamp at a time


def conv_ref(x, psf, boundary, adjoint=False):
    """h ⊛ x (or its adjoint) on one stamp, kernel origin at k//2, any stamp/kernel size."""
    psf = np.asarray(psf, dtype=np.float64)  # the example PSFs are float32
    k0, k1 = psf.shape
    if boundary == "periodic":
        grid = np.zeros(x.shape)
        grid[:k0, :k1] = psf
        transfer = np.fft.fft2(np.roll(grid, (-(k0 // 2), -(k1 // 2)), axis=(0, 1)))
        if adjoint:
            transfer = transfer.conj()
        return np.fft.ifft2(np.fft.fft2(x) * transfer).real
    if adjoint:  # correlation: full convolution with rot(h), crop shifted by k − 1 − k//2
        s0, s1 = k0 - 1 - k0 // 2, k1 - 1 - k1 // 2
        full = signal.convolve(x, psf[::-1, ::-1], mode="full")
        return full[s0:s0 + x.shape[0], s1:s1 + x.shape[1]]
    full = signal.convolve(x, psf, mode="full")
    return full[k0 // 2:k0 // 2 + x.shape[0], k1 // 2:k1 // 2 + x.shape[1]]


def phi_ref(x, settings):
    """Φ(x) of one stamp, shape (J, N0, N1)."""
    filters = atrous_filters(x.shape, settings.n_scales, settings.wavelet)
    return np.array([conv_ref(x, f, settings.boundary) for f in filters])


def phi_adj_ref(z, settings):
    filters = atrous_filters(z.shape[1:], settings.n_scales, settings.wavelet)
    return sum(conv_ref(zj, f, settings.boundary, adjoint=True)
               for zj, f in zip(z, filters, strict=True))


def make_block(images, psfs, settings, primal=None, noise_sigma=3e-4):
    """A block of the given stamps, initialised the way the driver does it."""
    shape = images.shape[1:]
    beta = Convolution(psfs, shape, settings.boundary).beta()
    problem = make_problem(settings, images.shape[0], shape, noise_sigma, beta)
    block = Block(start=0, images=images, psfs=psfs, primal=primal, dual=None)
    return init_block(block, problem)[0], problem


def cost_ref(block, problem):
    """½‖Y − HX‖² + Σ|W ⊙ ΦX| of a sparse block, with the reference operators."""
    s = problem.settings
    total = 0.0
    weights = block.weights if block.weights.ndim == 4 else block.weights[:, :, None, None]
    for i in range(block.size):
        psf = block.psfs if block.psfs.ndim == 2 else block.psfs[i]
        x = block.primal[i].astype(np.float64)
        total += 0.5 * np.sum((block.images[i] - conv_ref(x, psf, s.boundary)) ** 2)
        total += np.sum(weights[i] * np.abs(phi_ref(x, s)))
    return total


@pytest.fixture(scope="module")
def small_stack(example_images, example_psfs):
    return example_images[:4], example_psfs[:4]


# --------------------------------------------------------------------------------------
# ConvergenceTest (ALGORITHM.md §7)


def feed(test, costs):
    return [test.update(c) for c in costs]


def test_convergence_window_1_tests_every_fourth_cost_and_clears_the_list():
    test = ConvergenceTest(tolerance=0.1, window=1)
    assert test.counter == 1 and test.costs == [] and test.last_test is None
    assert feed(test, [10.0, 10.0, 5.0]) == [False] * 3
    assert test.costs == [10.0, 10.0, 5.0]
    assert test.update(5.0) is False  # t1 = 5, t2 = 10: |5 − 10| / 5 = 1
    assert test.last_test == pytest.approx(1.0)
    assert test.costs == [] and test.counter == 5
    assert feed(test, [5.0, 5.0, 5.0]) == [False] * 3
    assert test.update(5.1) is True  # t1 = 5.05, t2 = 5
    assert test.last_test == pytest.approx(0.05 / 5.05)
    assert test.state() == {"counter": 9, "costs": [], "last_test": test.last_test}


def test_convergence_uses_the_magnitude_of_t1():
    test = ConvergenceTest(tolerance=0.5, window=1)
    assert feed(test, [-10.0, -10.0, -5.0, -5.0]) == [False] * 3 + [False]
    assert test.last_test == pytest.approx(1.0)
    assert feed(test, [-4.0, -4.0, -3.0, -3.0])[-1] is True
    assert test.last_test == pytest.approx(1.0 / 3.0)


@pytest.mark.parametrize("window", [2, 3])
def test_convergence_window_w_records_every_wth_cost_and_fires_every_4w(window):
    test = ConvergenceTest(tolerance=0.0, window=window)
    costs = [float(k) if k % window == 0 else np.nan for k in range(1, 8 * window + 1)]
    # the recorded costs are w, 2w, 3w, 4w: not converged at 4w; NaNs never recorded
    fired = feed(test, costs[:4 * window])
    assert fired == [False] * (4 * window)
    assert test.last_test == pytest.approx(abs(3.5 * window - 1.5 * window) / (3.5 * window))
    assert test.costs == [] and test.counter == 4 * window + 1
    # constant recorded costs converge with tolerance 0, exactly at iteration 8w
    constant = [7.0 if k % window == 0 else np.nan for k in range(4 * window + 1, 8 * window + 1)]
    fired = feed(test, constant)
    assert fired == [False] * (4 * window - 1) + [True]
    assert test.last_test == 0.0


def test_convergence_wants_cost_and_cost_mask():
    test = ConvergenceTest(tolerance=1e-4, window=2)
    assert not test.wants_cost() and test.wants_cost(1)
    np.testing.assert_array_equal(test.cost_mask(5), [False, True, False, True, False])
    test.update(np.nan)
    assert test.wants_cost()
    mask = ConvergenceTest(1e-4, 1).cost_mask(3)
    assert mask.dtype == bool and mask.all()


def test_convergence_copy_is_independent_and_state_persists():
    test = ConvergenceTest(tolerance=1e-3, window=1)
    feed(test, [3.0, 2.0])
    other = test.copy()
    assert other.state() == test.state()
    other.update(1.0)
    assert test.costs == [3.0, 2.0] and test.counter == 3
    assert other.costs == [3.0, 2.0, 1.0] and other.counter == 4
    # a test that spans two rounds is one test: the list carries over
    assert feed(test, [2.0, 2.0]) == [False, False]
    assert test.last_test == pytest.approx(abs(2.0 - 2.5) / 2.0)


# --------------------------------------------------------------------------------------
# one sparse iteration in closed form


def even_stack(images, psfs):
    """The example cut to even 40×38 stamps with even 20×20 PSFs (renormalised)."""
    psfs = np.asarray(psfs[:, 10:30, 11:31], dtype=np.float64)
    return (np.ascontiguousarray(images[:, :40, 1:39]),
            psfs / psfs.sum(axis=(1, 2), keepdims=True))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("boundary", ["periodic", "zero"])
@pytest.mark.parametrize("positivity", [True, False])
@pytest.mark.parametrize("geometry", ["41x41", "40x38"])
def test_one_sparse_iteration_matches_the_algorithm(small_stack, dtype, boundary, positivity,
                                                    geometry):
    images, psfs = small_stack if geometry == "41x41" else even_stack(*small_stack)
    shape = images.shape[1:]
    settings = Settings(wavelet="linear", boundary=boundary, positivity=positivity,
                        dtype=np.dtype(dtype).name, wave_thresh_factor=(0.5, 3.0, 4.0))
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal(images.shape) * 1e-3
    block, problem = make_block(images, psfs, settings, primal=x0, noise_sigma=1e-4)
    assert block.primal.dtype == dtype and block.dual.dtype == dtype
    assert block.dual.shape == (4, 3) + shape
    np.testing.assert_array_equal(block.dual, 1.0)
    x0 = block.primal.astype(np.float64)
    out, costs = sparse_iterate(block, problem, 1)
    assert costs.shape == (1,) and costs.dtype == np.float64
    assert out.primal.dtype == dtype and out.dual.dtype == dtype
    assert out.primal.shape == images.shape and out.dual.shape == (4, 3) + shape
    tau, sig, rho = problem.tau, problem.sigma, settings.relax
    for i in range(4):
        grad = conv_ref(conv_ref(x0[i], psfs[i], boundary) - images[i], psfs[i], boundary,
                        adjoint=True)
        x_tilde = x0[i] - tau * grad - tau * phi_adj_ref(np.ones((3,) + shape), settings)
        if positivity:
            x_tilde = np.maximum(x_tilde, 0)
        w = block.weights[i][:, None, None]
        y_tilde = 1.0 + sig * phi_ref(2 * x_tilde - x0[i], settings)
        y_hat = np.clip(y_tilde, -w, w)
        x1 = rho * x_tilde + (1 - rho) * x0[i]
        scale = np.abs(x1).max()
        np.testing.assert_allclose(out.primal[i], x1, rtol=0, atol=10 * RTOL[dtype] * scale)
        np.testing.assert_allclose(out.dual[i], rho * y_hat + (1 - rho), rtol=0,
                                   atol=10 * RTOL[dtype])
    # x̃ = (x¹ − (1 − ρ)x⁰)/ρ is projected on x ≥ 0 only with positivity on
    x_tilde = (out.primal - (1 - rho) * x0) / rho
    scale = np.abs(x_tilde).max()
    if positivity:
        assert x_tilde.min() >= -10 * RTOL[dtype] * scale
        assert np.mean(x_tilde <= 10 * RTOL[dtype] * scale) > 0.1  # the projection acted
    else:
        assert np.mean(x_tilde < 0) > 0.1
    assert costs[0] == pytest.approx(cost_ref(out, problem), rel=10 * RTOL[dtype])


def test_sparse_iterate_leaves_the_input_block_untouched(small_stack):
    images, psfs = small_stack
    block, problem = make_block(images, psfs, Settings(wavelet="linear"))
    primal, dual = block.primal.copy(), block.dual.copy()
    out, _ = sparse_iterate(block, problem, 3)
    np.testing.assert_array_equal(block.primal, primal)
    np.testing.assert_array_equal(block.dual, dual)
    assert out.primal is not block.primal and out.dual is not block.dual
    assert out.images is block.images and out.weights is block.weights


@pytest.mark.parametrize("boundary", ["periodic", "zero"])
def test_sparse_iterate_split_and_cost_mask(small_stack, boundary):
    images, psfs = small_stack
    block, problem = make_block(images, psfs, Settings(wavelet="starlet", boundary=boundary))
    whole, costs = sparse_iterate(block, problem, 10)
    kept = whole.primal.copy(), whole.dual.copy()
    first, costs_a = sparse_iterate(block, problem, 4, cost_mask=[False, True, False, True])
    second, costs_b = sparse_iterate(first, problem, 6)
    # returned states are the caller's: later calls neither reuse nor overwrite them
    assert not np.shares_memory(whole.primal, second.primal)
    assert not np.shares_memory(whole.dual, second.dual)
    np.testing.assert_array_equal(whole.primal, kept[0])
    np.testing.assert_array_equal(whole.dual, kept[1])
    np.testing.assert_allclose(second.primal, whole.primal, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(second.dual, whole.dual, rtol=1e-12, atol=1e-15)
    assert np.isnan(costs_a[0]) and np.isnan(costs_a[2])
    np.testing.assert_allclose(costs_a[[1, 3]], costs[[1, 3]], rtol=1e-12)
    np.testing.assert_allclose(costs_b, costs[4:], rtol=1e-12)
    # the cost is that of the returned (relaxed) primal
    assert costs[-1] == pytest.approx(cost_ref(whole, problem), rel=1e-12)
    assert np.all(np.diff(costs) < 0)  # the objective falls over the first iterations


# --------------------------------------------------------------------------------------
# reweighting (ALGORITHM.md §4)


def test_reweighting_one_and_two_rounds_by_hand(small_stack):
    images, psfs = small_stack
    settings = Settings(wavelet="linear", wave_thresh_factor=(3.0, 0.0, 4.0))
    block, problem = make_block(images, psfs, settings, noise_sigma=3e-4)
    w0 = block.weights0.copy()
    assert w0.shape == (4, 3) and np.all(w0[:, 1] == 0) and np.all(w0[:, [0, 2]] > 0)
    np.testing.assert_array_equal(block.weights, w0)

    block, _ = sparse_iterate(block, problem, 8)
    once = reweight(block, problem)
    coeffs = np.abs(np.array([phi_ref(x, settings) for x in block.primal]))
    w0_full = w0[:, :, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(w0_full > 0, 1.0 / (1.0 + coeffs / w0_full), 1.0)
    expected = w0_full * factor
    assert once.weights.shape == (4, 3, 41, 41) and once.weights.dtype == np.float64
    np.testing.assert_allclose(once.weights, expected, rtol=1e-10, atol=0)
    np.testing.assert_array_equal(once.weights0, w0)  # W⁰ is kept
    np.testing.assert_array_equal(once.weights[:, 1], 0.0)  # a zero weight stays zero
    assert np.all(once.weights[:, [0, 2]] < w0_full[:, [0, 2]])

    after, _ = sparse_iterate(once, problem, 8)
    twice = reweight(after, problem)
    coeffs = np.abs(np.array([phi_ref(x, settings) for x in after.primal]))
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(w0_full > 0, 1.0 / (1.0 + coeffs / w0_full), 1.0)
    np.testing.assert_allclose(twice.weights, expected * factor, rtol=1e-10, atol=0)
    # the cost after reweighting uses the per-pixel weights
    _, costs = sparse_iterate(twice, problem, 1)
    stepped, _ = sparse_iterate(twice, problem, 1)
    assert costs[0] == pytest.approx(cost_ref(stepped, problem), rel=1e-12)


def test_galaxy_snr_is_std_of_the_model_over_sigma(small_stack):
    images, psfs = small_stack
    settings = Settings(wavelet="linear")
    block, problem = make_block(images, psfs, settings, noise_sigma=2e-4)
    block, _ = sparse_iterate(block, problem, 8)
    model = np.array([conv_ref(x, h, "periodic") for x, h in zip(block.primal, psfs, strict=True)])
    expected = model.reshape(4, -1).std(axis=1) / 2e-4
    np.testing.assert_allclose(galaxy_snr(block, problem), expected, rtol=1e-10)


def test_faint_galaxies_keep_their_weights_at_a_reweighting(small_stack):
    images, psfs = small_stack
    block, problem = make_block(images, psfs, Settings(reweight_min_snr=0.0))
    block, _ = sparse_iterate(block, problem, 8)
    snr = galaxy_snr(block, problem)
    gate = float(np.sort(snr)[1:3].mean())  # two galaxies below, two above
    every = reweight(block, problem)  # 0: every galaxy, as the reference
    gated_problem = make_block(images, psfs, Settings(reweight_min_snr=gate))[1]
    gated = reweight(block, gated_problem)
    faint = snr < gate
    assert faint.sum() == 2
    w0 = block.weights0[:, :, None, None]
    kept = np.broadcast_to(w0, gated.weights.shape)[faint]
    np.testing.assert_array_equal(gated.weights[faint], kept)
    np.testing.assert_array_equal(gated.weights[~faint], every.weights[~faint])
    assert np.all(every.weights[faint] <= w0[faint]) and np.any(every.weights[faint] < w0[faint])


# --------------------------------------------------------------------------------------
# one low-rank iteration in closed form


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_one_low_rank_iteration_matches_the_algorithm(small_stack, dtype, kind):
    images, psfs = small_stack
    settings = Settings(mode="lowr", lowr_thresh_type=kind, dtype=np.dtype(dtype).name)
    block, problem = make_block(images, psfs, settings, noise_sigma=3e-4)
    assert block.dual.shape == images.shape and block.weights is None
    x0, y0 = block.primal.astype(np.float64), block.dual.astype(np.float64)
    tau, sig, rho = problem.tau, problem.sigma, settings.relax
    # begin (a settled block): x̃, ỹ pending, and the relaxed x with its cost at once
    begun, cost = lowr_step(block, problem, want_cost=True)
    assert begun.dual is block.dual  # y_k is only known once the global step is done
    expected_x = np.array([
        np.maximum(x0[i] - tau * conv_ref(conv_ref(x0[i], psfs[i], "periodic") - images[i],
                                          psfs[i], "periodic", adjoint=True) - tau * y0[i], 0)
        for i in range(4)])
    y_tilde = begun.pending
    assert y_tilde.dtype == dtype
    np.testing.assert_allclose(y_tilde, y0 + sig * (2 * expected_x - x0), rtol=0,
                               atol=10 * RTOL[dtype])
    x1 = rho * expected_x + (1 - rho) * x0
    np.testing.assert_allclose(begun.primal, x1, rtol=0, atol=10 * RTOL[dtype])
    fidelity = sum(0.5 * np.sum((images[i] - conv_ref(x1[i], psfs[i], "periodic")) ** 2)
                   for i in range(4))
    assert cost == pytest.approx(fidelity, rel=10 * RTOL[dtype])
    assert np.isnan(lowr_step(block, problem)[1])

    # finish with the global SVT of ỹ (p × n, one column per galaxy), threshold λ
    matrix = y_tilde.reshape(4, -1).T.astype(np.float64)
    u, s, _ = np.linalg.svd(matrix, full_matrices=False)
    threshold = 0.5 * (s[0] + s[1])  # keep exactly one component
    shrunk = (s[0] - threshold) if kind == "soft" else s[0]
    factors = (u[:, :1], np.array([shrunk / s[0]]))
    done, no_cost = lowr_step(begun, problem, factors, begin=False)
    assert done.pending is None and np.isnan(no_cost)
    assert done.primal is begun.primal and done.dual.dtype == dtype
    y_hat = matrix - svt(matrix, threshold, kind)
    expected_y = rho * y_hat.T.reshape(images.shape) + (1 - rho) * y0
    np.testing.assert_allclose(done.dual, expected_y, rtol=0, atol=10 * RTOL[dtype])
    # one fused step (finish k, begin k + 1) is exactly the two, one after the other
    fused, fused_cost = lowr_step(begun, problem, factors, want_cost=True)
    again, again_cost = lowr_step(done, problem, want_cost=True)
    for name in ("primal", "dual", "pending"):
        np.testing.assert_array_equal(getattr(fused, name), getattr(again, name))
    assert fused_cost == again_cost
    with pytest.raises(ValueError, match="factors"):
        lowr_step(begun, problem)


def test_block_pickles_without_cached_operators(small_stack):
    import pickle

    images, psfs = small_stack
    block, problem = make_block(images, psfs, Settings(wavelet="linear"))
    stepped, _ = sparse_iterate(block, problem, 2)
    assert stepped._ops  # operators are cached on the block
    clone = pickle.loads(pickle.dumps(stepped))
    assert clone._ops == {}
    np.testing.assert_array_equal(clone.primal, stepped.primal)
    again, _ = sparse_iterate(clone, problem, 2)
    reference, _ = sparse_iterate(stepped, problem, 2)
    np.testing.assert_array_equal(again.primal, reference.primal)


def test_operator_cache_gives_a_copy_its_operators_back_only_for_equal_data(small_stack):
    import pickle

    images, psfs = small_stack
    block, problem = make_block(images, psfs, Settings(wavelet="linear"))
    stepped, _ = sparse_iterate(block, problem, 2)
    cache = OperatorCache(1 << 30)
    cache.remember(stepped, "key")
    clone = pickle.loads(pickle.dumps(stepped))
    cache.reuse(clone, "key")
    again, _ = sparse_iterate(clone, problem, 2)
    assert again._ops["conv"] is stepped._ops["conv"]
    other = pickle.loads(pickle.dumps(stepped.evolve(images=stepped.images + 1)))
    cache.reuse(other, "key")  # other images: the operators would be stale
    assert other._ops == {}
    tiny = OperatorCache(1)
    tiny.remember(stepped, "a")
    tiny.remember(again, "b")
    assert len(tiny) == 1  # the oldest is evicted beyond the bound


# --------------------------------------------------------------------------------------
# chunked sparse loop (solver.CHUNK_SIZE galaxies at a time)


@pytest.mark.parametrize("boundary", ["periodic", "zero"])
def test_sparse_iterate_in_chunks_equals_one_galaxy_at_a_time(example_images, example_psfs,
                                                               boundary):
    from galdecon.core import solver

    n = 2 * solver.CHUNK_SIZE + 5  # two full chunks and a short one
    images, psfs = example_images[:n], example_psfs[:n]
    settings = Settings(boundary=boundary)
    block, problem = make_block(images, psfs, settings)
    whole, costs = sparse_iterate(block, problem, 5)
    for i in (0, solver.CHUNK_SIZE - 1, solver.CHUNK_SIZE, n - 1):
        single = Block(start=i, images=images[i:i + 1], psfs=psfs[i:i + 1],
                       primal=block.primal[i:i + 1], dual=block.dual[i:i + 1],
                       weights=block.weights[i:i + 1])
        alone, _ = sparse_iterate(single, problem, 5)
        np.testing.assert_allclose(whole.primal[i], alone.primal[0], rtol=1e-11, atol=1e-16)
        np.testing.assert_allclose(whole.dual[i], alone.dual[0], rtol=1e-11, atol=1e-16)
    assert costs[-1] == pytest.approx(cost_ref(whole, problem), rel=1e-11)


def test_reference_style_loop_equals_the_batched_solver(small_stack):
    from galdecon.bench.reference_loop import ReferenceLoop

    images, psfs = small_stack
    settings = Settings()  # starlet, periodic
    block, problem = make_block(images, psfs, settings)
    filters = atrous_filters(images.shape[1:], settings.n_scales, settings.wavelet)
    loop = ReferenceLoop(images, psfs, filters, block.weights, problem.tau, problem.sigma,
                         settings.relax)
    primal, dual = block.primal, block.dual
    for _ in range(3):
        primal, dual, cost = loop.iterate(primal, dual)
    batched, costs = sparse_iterate(block, problem, 3)
    np.testing.assert_allclose(primal, batched.primal, rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(dual, batched.dual, rtol=1e-11, atol=1e-15)
    assert cost == pytest.approx(costs[-1], rel=1e-11)
