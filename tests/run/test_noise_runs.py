"""Runs with one noise σ_i a stamp (``noise_est='per-image'`` or ``'border'``)."""

from __future__ import annotations

import signal

import numpy as np
import pytest

import galdecon
from galdecon.cli.app import main
from galdecon.core.noise import image_sigmas
from galdecon.core.problem import Settings, sparse_weights
from galdecon.engines.local import LocalEngine
from galdecon.errors import RunInterrupted
from galdecon.run.driver import Driver
from galdecon.run.interrupt import StopRequest
from spark_fixtures import EXAMPLE_DIR, relative_error

SETTINGS = {"n_iter": 12, "n_reweights": 1, "tolerance": 0.0, "wavelet": "linear"}


@pytest.fixture(scope="module")
def stack(example_images, example_psfs):
    # stamps with noise levels spread over a factor of 4, as a survey's galaxies have
    rng = np.random.default_rng(5)
    images = np.array(example_images[:16]) * 1.0
    images += rng.normal(size=images.shape) * np.geomspace(3e-4, 1.5e-3, 16)[:, None, None]
    return images, np.array(example_psfs[:16])


@pytest.mark.parametrize("method", ["per-image", "border"])
def test_weights_follow_each_stamps_sigma(stack, method):
    images, psfs = stack
    settings = Settings(noise_est=method, **SETTINGS)
    with LocalEngine(threads=1, n_blocks=3) as engine:
        engine.scatter({"images": images, "psfs": psfs, "primal": None}, len(images))
        driver = Driver(engine, settings, len(images), images.shape[1:])
        problem = driver.setup()
        weights0 = engine.gather("weights0")
    sigmas = image_sigmas(images, method)
    assert sigmas.max() / sigmas.min() > 2.5  # the spread is seen
    expected = np.concatenate([sparse_weights(psfs[i], images.shape[1:], settings, sigmas[i])
                               for i in range(len(images))])
    np.testing.assert_allclose(weights0, expected, rtol=1e-14, atol=0)  # batched FFTs
    assert problem.noise_sigma == pytest.approx(np.sqrt(np.mean(sigmas ** 2)), rel=1e-15)
    assert problem.summary()["noise_sigmas"] == {
        "n": 16, "min": sigmas.min(), "median": float(np.median(sigmas)), "max": sigmas.max()}


def test_per_image_noise_resumes_bit_for_bit(stack, tmp_path):
    images, psfs = stack
    options = SETTINGS | {"noise_est": "per-image"}
    whole = galdecon.deconvolve(images, psfs, **options)
    stop = StopRequest()

    def progress(done, planned, cost):
        if done >= 8:
            stop.request(signal.SIGTERM)

    with pytest.raises(RunInterrupted):
        galdecon.deconvolve(images, psfs, progress=progress, stop=stop,
                            checkpoint=tmp_path / "ck", sync_every=4, **options)
    resumed = galdecon.deconvolve(images, psfs, resume=tmp_path / "ck", **options)
    np.testing.assert_array_equal(resumed.primal, whole.primal)
    assert resumed.record["problem"] == whole.record["problem"]


def test_per_image_noise_on_spark_equals_local(stack, spark_session):
    images, psfs = stack
    options = SETTINGS | {"noise_est": "border"}
    local = galdecon.deconvolve(images, psfs, **options)
    spark = galdecon.deconvolve(images, psfs, engine="spark", partitions=3, **options)
    assert relative_error(spark.primal, local.primal) <= 1e-12
    assert spark.record["problem"]["noise_sigmas"] == local.record["problem"]["noise_sigmas"]


def test_a_blank_stamp_with_per_image_noise_is_refused_by_index(tmp_path, capsys):
    images = np.load(EXAMPLE_DIR / "example_image_stack.npy")[:10]
    images[7] = 0.0  # a padded, empty stamp
    np.save(tmp_path / "img.npy", images)
    np.save(tmp_path / "psf.npy", np.load(EXAMPLE_DIR / "example_psfs.npy")[:10])
    assert main(["deconvolve", "-i", str(tmp_path / "img.npy"), "-p",
                 str(tmp_path / "psf.npy"), "-o", str(tmp_path / "out"),
                 "--noise-est", "per-image", "--no-plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("galdecon: error: --noise-est per-image: the noise estimate of "
                          "image 7 is 0")
    assert not list(tmp_path.glob("out*"))
