"""End-to-end runs of the driver on the local engine (ALGORITHM.md §4, §5, §7, §9)."""

import numpy as np
import pytest

from galdecon.core.operators.wavelet import atrous_filters
from galdecon.core.problem import Settings
from galdecon.engines import LocalEngine
from galdecon.run.driver import Driver

# ALGORITHM.md §9 (rel tol 1e-4)
SPARSE_COST_1 = 3.0222e4
SPARSE_COST_150 = 1.5919e-2
SPARSE_COST_REWEIGHTED = 6.303e-3
LOWR_COST_1 = 3.3515e3
LOWR_COST_150 = 7.8980e-2


def run(images, psfs, settings, primal=None, sync_every=None, progress=None, **engine_options):
    """Run a driver to the end; return (driver, history, gathered arrays)."""
    n = images.shape[0]
    arrays = {"images": images, "psfs": psfs, "primal": primal}
    with LocalEngine(**engine_options) as engine:
        engine.scatter(arrays, n)
        driver = Driver(engine, settings, n, images.shape[1:], sync_every=sync_every,
                        progress=progress)
        history = driver.run()
        names = ["primal", "dual"] + (["weights", "weights0"] if settings.mode == "sparse"
                                      else [])
        out = {name: engine.gather(name) for name in names}
        out["n_blocks"] = len(engine.blocks)
    return driver, history, out


# --------------------------------------------------------------------------------------
# independent periodic reference operators (FFT, whole stack)


def transfer_ref(psfs, shape):
    psfs = np.asarray(psfs, dtype=np.float64)
    psfs = psfs[None] if psfs.ndim == 2 else psfs
    k0, k1 = psfs.shape[1:]
    grid = np.zeros((psfs.shape[0],) + tuple(shape))
    grid[:, :k0, :k1] = psfs
    return np.fft.fft2(np.roll(grid, (-(k0 // 2), -(k1 // 2)), axis=(1, 2)))


def conv_ref(x, psfs, adjoint=False):
    transfer = transfer_ref(psfs, x.shape[1:])
    return np.fft.ifft2(np.fft.fft2(x) * (transfer.conj() if adjoint else transfer)).real


def phi_ref(x, wavelet, n_scales=4):
    """Φ(X), shape (n, J, N0, N1), by FFT with the filters centred at N//2."""
    filters = atrous_filters(x.shape[1:], n_scales, wavelet)
    spectra = np.fft.fft2(np.roll(filters, (-(x.shape[1] // 2), -(x.shape[2] // 2)),
                                  axis=(1, 2)))
    return np.fft.ifft2(np.fft.fft2(x)[:, None] * spectra[None]).real


def phi_adj_ref(z, wavelet, n_scales=4):
    filters = atrous_filters(z.shape[2:], n_scales, wavelet)
    spectra = np.fft.fft2(np.roll(filters, (-(z.shape[2] // 2), -(z.shape[3] // 2)),
                                  axis=(1, 2)))
    return np.fft.ifft2((np.fft.fft2(z) * spectra.conj()[None]).sum(axis=1)).real


def reweight_ref(weights, weights0, primal, wavelet):
    """W ⊙ 1/(1 + |Φ(X)|/W⁰), by hand."""
    weights = weights if weights.ndim == 4 else weights[:, :, None, None]
    return weights / (1.0 + np.abs(phi_ref(primal, wavelet)) / weights0[:, :, None, None])


def assert_rel_close(actual, desired, rtol):
    """‖actual − desired‖ ≤ rtol ‖desired‖ (Frobenius), plus shape and finiteness."""
    assert actual.shape == desired.shape
    assert np.all(np.isfinite(actual))
    assert np.linalg.norm(actual - desired) <= rtol * np.linalg.norm(desired)


def assert_same(actual, desired, rtol=1e-12):
    """Equal up to rounding: ``rtol`` relative to each value, ``10 rtol`` to the largest one.

    (Other blockings sum in other orders: after a few dozen iterations values ~1e5 times
    smaller than the largest differ by a few ulps of the largest, on some CPUs.)
    """
    assert actual.shape == desired.shape and actual.dtype == desired.dtype
    np.testing.assert_allclose(actual, desired, rtol=rtol,
                               atol=10 * rtol * float(np.max(np.abs(desired))))


# --------------------------------------------------------------------------------------
# sanity numbers on the example (ALGORITHM.md §9), each configuration run once


@pytest.fixture(scope="module")
def sparse_run(example_images, example_psfs):
    settings = Settings(wavelet="linear", n_iter=150, n_reweights=1, tolerance=0.0)
    return run(example_images, example_psfs, settings)


@pytest.fixture(scope="module")
def lowr_run(example_images, example_psfs):
    settings = Settings(mode="lowr", wavelet="linear", n_iter=150, tolerance=0.0,
                        lowr_thresh_type="hard", cost_window=1)  # the reference's, for §9
    return run(example_images, example_psfs, settings)


def test_sparse_sanity_costs(sparse_run):
    _, history, _ = sparse_run
    assert history.iterations_per_round == [150, 150]
    assert history.converged_per_round == [False, False]
    assert history.cost_iterations == list(range(1, 301))
    assert len(history.costs) == 300 and len(history.iteration_seconds) == 300
    assert history.rollbacks == 0
    assert history.costs[0] == pytest.approx(SPARSE_COST_1, rel=1e-4)
    assert history.costs[149] == pytest.approx(SPARSE_COST_150, rel=1e-4)
    assert history.costs[-1] == pytest.approx(SPARSE_COST_REWEIGHTED, rel=1e-4)


def test_sparse_sanity_final_state(sparse_run, example_images, example_psfs):
    driver, history, out = sparse_run
    primal, weights, weights0 = out["primal"], out["weights"], out["weights0"]
    assert primal.shape == (100, 41, 41) and primal.dtype == np.float64
    assert out["dual"].shape == (100, 3, 41, 41) and out["dual"].dtype == np.float64
    assert weights.shape == (100, 3, 41, 41) and weights0.shape == (100, 3)
    assert primal.min() >= 0  # positivity is on by default
    # the dual stays in the box |y| <= W
    assert np.all(np.abs(out["dual"]) <= weights * (1 + 1e-12))
    # the last cost is ½‖Y − HX‖² + Σ|W ⊙ ΦX| of the returned primal and weights
    cost = (0.5 * np.sum((example_images - conv_ref(primal, example_psfs)) ** 2)
            + np.sum(weights * np.abs(phi_ref(primal, "linear"))))
    assert history.costs[-1] == pytest.approx(cost, rel=1e-10)
    # the problem the driver set up is that of §9
    problem = driver.problem
    assert f"{problem.noise_sigma:.5e}" == "3.11699e-04"
    assert problem.beta == pytest.approx(1.00000023, abs=5e-9)
    assert (problem.tau, problem.sigma) == (0.5, 0.5)
    assert [float(f"{w:.3e}") for w in weights0[0]] == [6.439e-5, 6.812e-5, 7.634e-5]


def test_lowr_sanity_costs_and_final_state(lowr_run, example_images, example_psfs):
    driver, history, out = lowr_run
    assert history.iterations_per_round == [150]
    assert history.converged_per_round == [False]
    assert history.cost_iterations == list(range(1, 151))
    assert history.costs[0] == pytest.approx(LOWR_COST_1, rel=1e-4)
    assert history.costs[149] == pytest.approx(LOWR_COST_150, rel=1e-4)
    primal = out["primal"]
    assert primal.shape == (100, 41, 41) and primal.dtype == np.float64
    assert out["dual"].shape == (100, 41, 41)
    assert primal.min() >= 0
    lam = driver.problem.lowr_lambda
    assert f"{lam:.5e}" == "1.27797e-02"
    nuclear = np.linalg.svd(primal.reshape(100, -1), compute_uv=False).sum()
    cost = 0.5 * np.sum((example_images - conv_ref(primal, example_psfs)) ** 2) + lam * nuclear
    assert history.costs[-1] == pytest.approx(cost, rel=1e-10)


# --------------------------------------------------------------------------------------
# convergence and synchronisation


@pytest.fixture(scope="module")
def sync_reference(example_images, example_psfs):
    """Runs that synchronise every iteration, one per cost window (computed lazily)."""
    cache = {}

    def get(cost_window):
        if cost_window not in cache:
            cache[cost_window] = run(example_images[:10], example_psfs[:10],
                                     sync_settings(cost_window), sync_every=1)
        return cache[cost_window]

    return get


def sync_settings(cost_window):
    return Settings(wavelet="linear", n_iter=150, n_reweights=1, tolerance=1e-3,
                    cost_window=cost_window)


@pytest.mark.parametrize("cost_window", [1, 2])
@pytest.mark.parametrize("sync_every", [3, 4, 8])
def test_sync_every_stops_at_the_same_iteration(example_images, example_psfs, sync_reference,
                                                cost_window, sync_every):
    _, ref_history, ref = sync_reference(cost_window)
    # the tolerance fires in both rounds, before n_iter
    assert ref_history.converged_per_round == [True, True]
    assert all(k < 150 for k in ref_history.iterations_per_round)
    stops = np.cumsum(ref_history.iterations_per_round)
    assert np.all(stops % (4 * cost_window) == 0)  # the test can only fire every 4w
    assert ref_history.rollbacks == 0

    _, history, out = run(example_images[:10], example_psfs[:10], sync_settings(cost_window),
                          sync_every=sync_every)
    assert history.iterations_per_round == ref_history.iterations_per_round
    assert history.converged_per_round == [True, True]
    assert history.cost_iterations == ref_history.cost_iterations
    assert all(k % cost_window == 0 for k in history.cost_iterations)
    # Steps of different lengths carry Hx and Φx by linearity over different spans, so
    # ~190 iterations agree to rounding, not bit for bit.
    np.testing.assert_allclose(history.costs, ref_history.costs, rtol=1e-10)
    assert_same(out["primal"], ref["primal"], rtol=1e-10)
    assert_same(out["dual"], ref["dual"], rtol=1e-10)
    assert_same(out["weights"], ref["weights"], rtol=1e-10)
    # Steps of 4w end on every iteration where the test can fire: never a rollback. Other
    # lengths (3, or 8 = 2·4w) can overshoot a stop and must replay up to it: a rollback
    # happens exactly when a stop falls strictly inside a step (steps restart each round).
    if sync_every == 4 * cost_window:
        assert history.rollbacks == 0
    if sync_every == 3:
        assert history.rollbacks >= 1  # the path is exercised
    boundaries, done = set(), 0
    for n_round in ref_history.iterations_per_round:
        boundaries |= {done + k for k in range(sync_every, n_round + 1, sync_every)}
        done += n_round
    expected = sum(int(stop not in boundaries) for stop in stops)
    assert history.rollbacks == expected


def test_convergence_state_persists_across_reweighting_rounds(example_images, example_psfs):
    # A huge tolerance fires at every test (every 4th iteration, window 1). With 3
    # iterations per round, the first round never tests; the list carries over so the
    # second round tests after its first iteration (counter 4), the third after 4 more.
    calls = []
    settings = Settings(wavelet="linear", n_iter=3, n_reweights=2, tolerance=10.0)
    _, history, _ = run(example_images[:3], example_psfs[:3], settings,
                        progress=lambda *a: calls.append(a))
    assert history.iterations_per_round == [3, 1, 3]
    assert history.converged_per_round == [False, True, False]
    assert history.cost_iterations == list(range(1, 8))
    assert [c[0] for c in calls][-1] == 7
    assert all(np.isfinite(c[2]) for c in calls)
    assert calls[0][1] == 9  # planned: 3 rounds × 3

    settings = Settings(wavelet="linear", n_iter=5, n_reweights=1, tolerance=0.0,
                        cost_window=2)
    _, history, _ = run(example_images[:3], example_psfs[:3], settings)
    assert history.iterations_per_round == [5, 5]
    assert history.cost_iterations == [2, 4, 6, 8, 10]


# --------------------------------------------------------------------------------------
# reweighting through the driver


@pytest.fixture(scope="module")
def reweight_runs(example_images, example_psfs):
    base = Settings(wavelet="linear", n_iter=10, tolerance=0.0)
    return [run(example_images[:6], example_psfs[:6], base.replace(n_reweights=k))[2]
            for k in (0, 1, 2)]


def test_reweighting_one_round_by_hand(reweight_runs):
    plain, once, _ = reweight_runs
    w0 = plain["weights0"]
    np.testing.assert_array_equal(plain["weights"], w0)  # no reweighting: W = W⁰
    np.testing.assert_array_equal(once["weights0"], w0)
    expected = reweight_ref(w0, w0, plain["primal"], "linear")
    assert once["weights"].shape == (6, 3, 41, 41)
    np.testing.assert_allclose(once["weights"], expected, rtol=1e-10)


def test_reweighting_two_rounds_is_cumulative(reweight_runs):
    # Every run's rounds are identical up to where it stops: the primal at the first
    # reweighting is the plain run's, at the second the once-reweighted run's.
    plain, once, twice = reweight_runs
    w0 = once["weights0"]
    first = reweight_ref(w0, w0, plain["primal"], "linear")
    expected = reweight_ref(first, w0, once["primal"], "linear")
    np.testing.assert_allclose(twice["weights"], expected, rtol=1e-10)
    # not the non-cumulative update W⁰ ⊙ 1/(1 + |ΦX|/W⁰)
    single = reweight_ref(w0, w0, once["primal"], "linear")
    assert np.max(np.abs(twice["weights"] / single - 1)) > 1e-3


# --------------------------------------------------------------------------------------
# positivity, dtype, blocking


def test_positivity_off_allows_negative_values(example_images, example_psfs):
    settings = Settings(wavelet="linear", n_iter=30, n_reweights=0, tolerance=0.0)
    _, _, on = run(example_images[:5], example_psfs[:5], settings)
    _, _, off = run(example_images[:5], example_psfs[:5], settings.replace(positivity=False))
    assert on["primal"].min() >= 0
    assert off["primal"].min() < -1e-3
    assert np.mean(off["primal"] < 0) > 0.2


@pytest.mark.parametrize("mode", ["sparse", "lowr"])
def test_float32_run_is_close_to_float64(example_images, example_psfs, mode):
    settings = Settings(mode=mode, wavelet="linear", n_iter=40, n_reweights=1, tolerance=0.0)
    _, h64, out64 = run(example_images[:12], example_psfs[:12], settings)
    _, h32, out32 = run(example_images[:12], example_psfs[:12],
                        settings.replace(dtype="float32"))
    assert out32["primal"].dtype == np.float32 and out32["dual"].dtype == np.float32
    assert out64["primal"].dtype == np.float64
    assert_rel_close(out32["primal"].astype(np.float64), out64["primal"], 1e-3)
    np.testing.assert_allclose(h32.costs, h64.costs, rtol=1e-3)


def test_float32_inputs_are_cast_to_the_working_dtype(example_images, example_psfs):
    settings = Settings(wavelet="linear", n_iter=5, n_reweights=0, tolerance=0.0)
    images32 = example_images[:4].astype(np.float32)
    _, h_in32, in32 = run(images32, example_psfs[:4], settings)
    _, h_ref, ref = run(images32.astype(np.float64), example_psfs[:4].astype(np.float64),
                        settings)
    assert in32["primal"].dtype == np.float64 and in32["dual"].dtype == np.float64
    assert_same(in32["primal"], ref["primal"], rtol=1e-13)
    np.testing.assert_allclose(h_in32.costs, h_ref.costs, rtol=1e-13)


ENGINES = {
    "default": {},
    "block_size=7": {"block_size": 7},
    "n_blocks=1": {"n_blocks": 1},
    "threads=1,n_blocks=3": {"threads": 1, "n_blocks": 3},
}


@pytest.fixture(scope="module")
def blocking_runs(example_images, example_psfs):
    configs = {
        "sparse": Settings(wavelet="starlet", n_iter=20, n_reweights=1, tolerance=0.0),
        "lowr": Settings(mode="lowr", wavelet="linear", n_iter=8, tolerance=0.0),
    }
    return {(mode, name): run(example_images, example_psfs, settings, **options)
            for mode, settings in configs.items() for name, options in ENGINES.items()}


@pytest.mark.parametrize("mode", ["sparse", "lowr"])
@pytest.mark.parametrize("engine", [name for name in ENGINES if name != "default"])
def test_results_do_not_depend_on_blocking(blocking_runs, mode, engine):
    _, ref_history, ref = blocking_runs[(mode, "default")]
    _, history, out = blocking_runs[(mode, engine)]
    assert ref["n_blocks"] == 2
    assert out["n_blocks"] == {"block_size=7": 15, "n_blocks=1": 1,
                               "threads=1,n_blocks=3": 3}[engine]
    # Blocking changes only the shapes of the batched FFT/BLAS calls: rounding. Sparse
    # mode is separable (the dual and the weights, of order W ~ 1e-4, carry the primal's
    # rounding divided by W). Low rank couples all galaxies through the SVT of the TSQR
    # factor (measured 3e-13 on the dual; the Gram's eigenvectors, before issue 14,
    # amplified rounding by s_max/s_k ~ 3e4 and needed 1e-8 here).
    rtol = 1e-11
    assert_same(out["primal"], ref["primal"], rtol=rtol / 10)
    assert_same(out["dual"], ref["dual"], rtol=rtol)
    if mode == "sparse":
        assert_same(out["weights"], ref["weights"], rtol=rtol)
    np.testing.assert_allclose(history.costs, ref_history.costs, rtol=rtol / 10)


@pytest.mark.parametrize("boundary", ["periodic", "zero"])
def test_blocking_and_shared_psf_on_small_stamps(example_images, example_psfs, boundary):
    # 10 galaxies, one shared PSF given as 2-D or as a repeated 3-D stack, several blockings.
    images = np.ascontiguousarray(example_images[:10, 5:36, 4:37])
    psf = np.asarray(example_psfs[0, 10:31, 10:31], dtype=np.float64)
    psf = psf / psf.sum()
    settings = Settings(wavelet="starlet", boundary=boundary, n_iter=12, n_reweights=1,
                        tolerance=0.0)
    _, ref_history, ref = run(images, psf, settings, n_blocks=1)
    assert ref["primal"].shape == (10, 31, 33)
    for psfs, options in [(psf, {"block_size": 3}),
                          (np.repeat(psf[None], 10, axis=0), {"n_blocks": 10}),
                          (np.repeat(psf[None], 10, axis=0), {"n_blocks": 1})]:
        _, history, out = run(images, psfs, settings, **options)
        for name in ("primal", "dual", "weights"):
            assert_same(out[name], ref[name])
        np.testing.assert_allclose(history.costs, ref_history.costs, rtol=1e-12)


# --------------------------------------------------------------------------------------
# cases with an exactly known answer


def test_given_primal_is_used_and_one_iteration_is_the_gradient_step(example_images,
                                                                     example_psfs):
    # With huge weights the dual clip is inactive; from y⁰ = 1 and Φᵀ(1) = 0 (the periodic
    # filters sum to zero), x¹ = ρ·max(x⁰ − τHᵀ(Hx⁰ − Y), 0) + (1 − ρ)x⁰ and
    # y¹ = 1 + ρσΦ(2x̃ − x⁰).
    images, psfs = example_images[:5], example_psfs[:5]
    rng = np.random.default_rng(0)
    x0 = (rng.standard_normal(images.shape) * 2e-3).astype(np.float32)
    x0.setflags(write=False)
    settings = Settings(wavelet="linear", n_iter=1, n_reweights=0, tolerance=0.0,
                        noise_est=1e3)
    np.testing.assert_allclose(phi_adj_ref(np.ones((1, 3, 41, 41)), "linear"), 0, atol=1e-14)
    driver, history, out = run(images, psfs, settings, primal=x0)
    assert driver.problem.noise_sigma == 1e3
    assert out["weights0"].min() > 10  # σ k_j ‖…‖ with σ = 1000
    x0 = x0.astype(np.float64)
    tau, sig, rho = 0.5, 0.5, 0.8
    x_tilde = np.maximum(x0 - tau * conv_ref(conv_ref(x0, psfs) - images, psfs, adjoint=True),
                         0)
    x1 = rho * x_tilde + (1 - rho) * x0
    assert out["primal"].dtype == np.float64
    np.testing.assert_allclose(out["primal"], x1, rtol=0, atol=1e-14)
    np.testing.assert_allclose(out["dual"], 1 + rho * sig * phi_ref(2 * x_tilde - x0, "linear"),
                               rtol=0, atol=1e-14)
    cost = (0.5 * np.sum((images - conv_ref(x1, psfs)) ** 2)
            + np.sum(out["weights0"][:, :, None, None] * np.abs(phi_ref(x1, "linear"))))
    assert history.costs == [pytest.approx(cost, rel=1e-12)]
    # and the run from the default initial primal (ones) differs
    _, _, default = run(images, psfs, settings)
    assert np.max(np.abs(default["primal"] - out["primal"])) > 0.1


@pytest.mark.parametrize("positivity", [True, False])
def test_identity_psf_without_regularisation_converges_to_the_data(example_images,
                                                                   positivity):
    # H = I and W = 0: x̃ = max((1 − τ)x + τY, 0), so without positivity
    # x_k = Y + (1 − ρτ)^k (1 − Y) and cost_k = ½ (1 − ρτ)^{2k} ‖1 − Y‖²; the limit is Y,
    # or max(Y, 0) with positivity.
    images = example_images[:10] * 1e3  # pixels of order ±1, some negative
    assert images.min() < -0.5
    settings = Settings(wavelet="linear", n_iter=200, n_reweights=0, tolerance=0.0,
                        wave_thresh_factor=(0.0, 0.0, 0.0), noise_est=1.0,
                        positivity=positivity)
    _, history, out = run(images, np.ones((1, 1)), settings)
    np.testing.assert_array_equal(out["weights0"], 0.0)
    limit = np.maximum(images, 0) if positivity else images
    # The test may fire before n_iter once the costs stop changing in floating point
    # (|t1 − t2| = 0 <= tolerance): the distance to the limit is then (1 − ρτ)^k |1 − Y|.
    k = sum(history.iterations_per_round)
    bound = 1.5 * 0.6 ** k * np.max(np.abs(1 - images)) + 1e-12
    assert bound < 1e-7
    np.testing.assert_allclose(out["primal"], limit, rtol=0, atol=bound)
    if not positivity:
        k = np.arange(1, 21)
        expected = 0.5 * 0.6 ** (2 * k) * np.sum((1 - images) ** 2)
        np.testing.assert_allclose(history.costs[:20], expected, rtol=1e-9)
    else:
        assert history.costs[-1] == pytest.approx(0.5 * np.sum(np.minimum(images, 0) ** 2),
                                                  rel=1e-10)


def test_identity_psf_low_rank_with_zero_threshold_converges_to_the_data(example_images):
    # λ = 0: the SVT keeps every component, ŷ = ỹ − SVT(ỹ) = 0, and x → max(Y, 0).
    images = example_images[:10] * 1e3
    settings = Settings(mode="lowr", n_iter=120, tolerance=0.0, lowr_thresh_factor=0.0,
                        noise_est=1.0)
    driver, history, out = run(images, np.ones((1, 1)), settings)
    assert driver.problem.lowr_lambda == 0.0
    # as above, the test may fire once the costs are constant in floating point
    k = sum(history.iterations_per_round)
    bound = 1.5 * 0.6 ** k * np.max(np.abs(1 - images)) + 1e-12
    assert bound < 1e-7
    np.testing.assert_allclose(out["primal"], np.maximum(images, 0), rtol=0, atol=bound)
    np.testing.assert_allclose(out["dual"], 0.0, atol=1e-12)
    assert history.costs[-1] == pytest.approx(0.5 * np.sum(np.minimum(images, 0) ** 2),
                                              rel=1e-10)
