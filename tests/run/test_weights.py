"""Per-pixel weights and masks (``weights=``, ``--weights``): ½‖W^{1/2}(Y − HX)‖²."""

from __future__ import annotations

import numpy as np
import pytest

import galdecon
from galdecon.cli.app import main
from galdecon.core.fidelity import WeightedFidelity, relative_weights, weighted_beta
from galdecon.core.operators.convolution import Convolution
from galdecon.errors import InputError
from galdecon.science.metrics import pixel_error
from galdecon.science.simulate import simulate
from spark_fixtures import relative_error

FIXED = {"n_iter": 20, "n_reweights": 1, "tolerance": 0.0, "wavelet": "linear"}


@pytest.fixture(scope="module")
def sky():
    """24 simulated galaxies at SNR 10, a tenth of their pixels masked (seeded)."""
    data = simulate(24, seed=5, snr=[10.0], workers=1)
    noisy, sigma = data["noisy"][10.0], data["sigma"][:, 0]
    mask = np.random.default_rng(1).random(noisy.shape) < 0.10
    weights = np.broadcast_to(1 / sigma[:, None, None] ** 2, noisy.shape).copy()
    weights[mask] = 0.0
    return {"truth": data["truth"], "psfs": data["psfs"], "noisy": noisy, "sigma": sigma,
            "mask": mask, "weights": weights}


def test_the_weighted_gradient_is_that_of_the_weighted_cost(example_images, example_psfs):
    rng = np.random.default_rng(0)
    images, psfs = np.array(example_images[:3]), np.array(example_psfs[:3])
    weights = rng.uniform(0.5, 2.0, size=images.shape) * 1e6
    weights[rng.random(images.shape) < 0.1] = 0.0
    conv = Convolution(psfs, (41, 41), "periodic")
    fidelity = WeightedFidelity(conv, images, weights)
    x = rng.normal(size=images.shape)
    # reference: H as tested on its own (test_convolution), W relative to each stamp's
    # median unmasked weight
    scale = np.array([np.median(w[w > 0]) for w in weights])[:, None, None]
    resid = conv.op(x) - images
    expected_cost = 0.5 * np.sum(weights / scale * resid ** 2)
    expected_grad = conv.adj(weights / scale * resid)
    assert fidelity.cost(fidelity.start(x)) == pytest.approx(expected_cost, rel=1e-12)
    np.testing.assert_allclose(fidelity.gradient(fidelity.start(x)), expected_grad,
                               rtol=0, atol=1e-12 * np.abs(expected_grad).max())
    # and the gradient is the cost's: a central difference along a random direction
    d, eps = rng.normal(size=images.shape), 1e-6
    numeric = (fidelity.cost(fidelity.start(x + eps * d))
               - fidelity.cost(fidelity.start(x - eps * d))) / (2 * eps)
    assert numeric == pytest.approx(np.sum(expected_grad * d), rel=1e-7)
    beta = conv.beta()
    assert weighted_beta(beta, weights) == pytest.approx(
        beta * np.max(relative_weights(weights, np.float64)), rel=1e-15)


def test_uniform_weights_are_the_unweighted_problem(example_images, example_psfs):
    images, psfs = np.array(example_images[:12]), np.array(example_psfs[:12])
    plain = galdecon.deconvolve(images, psfs, **FIXED)
    sigma = plain.record["problem"]["noise_sigma"]
    weighted = galdecon.deconvolve(images, psfs, weights=np.full(images.shape, 7.0),
                                   noise_est=sigma, initial_primal=np.ones_like(images),
                                   **FIXED)
    assert relative_error(weighted.primal, plain.primal) <= 1e-12
    # without noise_est, each stamp's σ_i is 1/sqrt(its median weight)
    auto = galdecon.deconvolve(images, psfs, weights=np.full(images.shape, 1 / sigma ** 2),
                               initial_primal=np.ones_like(images), **FIXED)
    assert auto.record["problem"]["noise_sigmas"]["median"] == pytest.approx(sigma, rel=1e-12)
    assert relative_error(auto.primal, plain.primal) <= 1e-12


def test_masked_pixels_do_not_bias_the_result(sky):
    # measured: unmasked 0.0046, 10 % masked and weighted 0.0051, the same pixels set to 0
    # in an unweighted run 0.286 (median pixel error, 24 galaxies, SNR 10)
    zeroed = np.where(sky["mask"], 0.0, sky["noisy"])
    whole = galdecon.deconvolve(sky["noisy"], sky["psfs"], threads=1)
    masked = galdecon.deconvolve(zeroed, sky["psfs"], weights=sky["weights"], threads=1)
    naive = galdecon.deconvolve(zeroed, sky["psfs"], threads=1)
    errors = [float(np.median(pixel_error(sky["truth"], r.primal)))
              for r in (whole, masked, naive)]
    assert errors[1] <= 1.3 * errors[0]
    assert errors[2] >= 10 * errors[1]
    # what the masked pixels held does not matter at all
    other = galdecon.deconvolve(np.where(sky["mask"], 1e3, sky["noisy"]), sky["psfs"],
                                weights=sky["weights"], threads=1)
    np.testing.assert_array_equal(other.primal, masked.primal)


def test_weighted_runs_on_spark_equal_local(sky, spark_session):
    options = FIXED | {"weights": sky["weights"]}
    local = galdecon.deconvolve(sky["noisy"], sky["psfs"], **options)
    spark = galdecon.deconvolve(sky["noisy"], sky["psfs"], engine="spark", partitions=3,
                                **options)
    assert relative_error(spark.primal, local.primal) <= 1e-12


def test_weighted_store_run_equals_the_in_memory_run(sky, tmp_path):
    pytest.importorskip("zarr")
    from galdecon.data import chunked
    from galdecon.data.sources import StoreStack

    chunked.write_store(tmp_path / "in.zarr", {"images": sky["noisy"], "psfs": sky["psfs"],
                                               "weights": sky["weights"]}, chunk=8)
    in_memory = galdecon.deconvolve(sky["noisy"], sky["psfs"], weights=sky["weights"], **FIXED)
    source = StoreStack.open(tmp_path / "in.zarr", weights=f"{tmp_path / 'in.zarr'}[weights]")
    stored = galdecon.deconvolve(source, None, **FIXED)
    np.testing.assert_array_equal(stored.primal, in_memory.primal)
    assert source.digests()["weights"].startswith("store:")


@pytest.mark.parametrize(("change", "message"), [
    (lambda w: w[:, :40], r"w\.npy: weights \(inverse variance\) shape \(24, 40, 41\) does "
                          r"not match the images"),
    (lambda w: np.where(np.arange(24)[:, None, None] == 4, -w, w),
     r"w\.npy: the weights of image 4 are negative; expected inverse variances >= 0"),
    (lambda w: np.where(np.arange(24)[:, None, None] == 9, 0.0, w),
     r"w\.npy: image 9 is masked entirely \(all its weights are 0; 1 such image\(s\)\)"),
    (lambda w: np.where(np.arange(24)[:, None, None] == 2, np.nan, w), r"w\.npy: .*2.*NaN"),
])
def test_bad_weights_are_refused_naming_the_file_and_image(sky, tmp_path, capsys, change,
                                                           message):
    np.save(tmp_path / "i.npy", sky["noisy"])
    np.save(tmp_path / "p.npy", sky["psfs"])
    np.save(tmp_path / "w.npy", change(sky["weights"]))
    with pytest.raises(InputError, match=message):
        galdecon.deconvolve(sky["noisy"], sky["psfs"], weights=change(sky["weights"]),
                            input_names={"weights": str(tmp_path / "w.npy")})
    assert main(["deconvolve", "-i", str(tmp_path / "i.npy"), "-p", str(tmp_path / "p.npy"),
                 "--weights", str(tmp_path / "w.npy"), "-o", str(tmp_path / "out"),
                 "--no-plots"]) == 2
    assert "w.npy" in capsys.readouterr().err
    assert not list(tmp_path.glob("out*"))


def test_resuming_with_other_weights_is_refused(sky, tmp_path):
    from galdecon.errors import RunInterrupted
    from galdecon.run.interrupt import StopRequest

    stop = StopRequest()

    def progress(done, planned, cost):
        if done >= 4:
            stop.request(15)

    options = FIXED | {"weights": sky["weights"]}
    with pytest.raises(RunInterrupted):
        galdecon.deconvolve(sky["noisy"], sky["psfs"], progress=progress, stop=stop,
                            checkpoint=tmp_path / "ck", sync_every=4, **options)
    with pytest.raises(InputError, match="the weights differ from those the checkpointed run"):
        galdecon.deconvolve(sky["noisy"], sky["psfs"], resume=tmp_path / "ck",
                            **(options | {"weights": sky["weights"] * 2}))
    whole = galdecon.deconvolve(sky["noisy"], sky["psfs"], **options)
    resumed = galdecon.deconvolve(sky["noisy"], sky["psfs"], resume=tmp_path / "ck", **options)
    np.testing.assert_array_equal(resumed.primal, whole.primal)
