"""The exact σ of the maths layer: 1.4826 · MAD of all pixels, whatever the blocks."""

from __future__ import annotations

import numpy as np
import pytest

from galdecon.core import noise
from galdecon.core.lowrank import low_rank_factors, nuclear_norm
from galdecon.core.problem import mad_sigma
from galdecon.engines.local import LocalEngine
from galdecon.errors import ConfigError


def scattered(images, n_blocks):
    engine = LocalEngine(threads=1, n_blocks=n_blocks)
    engine.scatter({"images": images, "psfs": np.full((3, 3), 1 / 9), "primal": None},
                   len(images))
    return engine


@pytest.mark.parametrize("collect_limit", [0, 40, 1 << 20])
@pytest.mark.parametrize("n_blocks", [1, 4])
@pytest.mark.parametrize("shape", [(13, 5, 5), (12, 5, 5)])  # odd and even pixel counts
def test_noise_sigma_is_mad_sigma_exactly(monkeypatch, shape, n_blocks, collect_limit):
    monkeypatch.setattr(noise, "COLLECT_LIMIT", collect_limit)
    rng = np.random.default_rng(7)
    images = rng.integers(-3, 6, size=shape) * 0.25  # a few distinct values, zeros
    images[0, 0, :3] = [-0.0, 1e-300, -7.5]
    assert noise.noise_sigma(scattered(images, n_blocks)) == mad_sigma(images) > 0
    images = rng.normal(size=shape)
    assert noise.noise_sigma(scattered(images, n_blocks)) == mad_sigma(images)


def test_order_keys_round_trip():
    values = np.array([-np.inf, -1.0, -0.0, 0.0, 1e-300, 2.0, np.inf])
    keys = noise.order_keys(values)
    assert np.all(np.diff(keys.astype(object)) >= 0)
    np.testing.assert_array_equal(noise.key_values(keys).view(np.uint64),
                                  values.view(np.uint64))


@pytest.mark.parametrize("n", [10, 90])  # the rows kept as they are (n < p), and R
def test_low_rank_reductions_match_a_dense_svd(n):
    rng = np.random.default_rng(3)
    images = rng.normal(size=(n, 5, 5))
    values = np.linalg.svd(images.reshape(n, -1), compute_uv=False)
    for n_blocks in (1, 3):
        engine = scattered(images, n_blocks)
        getter = _images
        assert nuclear_norm(engine, getter) == pytest.approx(values.sum(), rel=1e-13)
        basis, scale = low_rank_factors(engine, getter, 0.5 * (values[2] + values[3]), "hard")
        assert basis.shape == (25, 3) and np.allclose(scale, 1.0)


def _images(block):
    return block.images


@pytest.mark.parametrize("shape", [(6, 41, 41), (3, 12, 9)])
def test_image_sigmas_are_each_stamps_mad(shape):
    rng = np.random.default_rng(11)
    images = rng.normal(size=shape) * rng.uniform(0.5, 3.0, size=(shape[0], 1, 1))
    images[:, shape[1] // 2, shape[2] // 2] += 50.0  # a bright centre
    per_image = noise.image_sigmas(images, "per-image")
    np.testing.assert_array_equal(per_image, [mad_sigma(stamp) for stamp in images])
    w = noise.border_width(shape[1:])
    assert w == max(2, min(shape[1:]) // 10)
    frame = [np.concatenate([s[:w].ravel(), s[-w:].ravel(), s[w:-w, :w].ravel(),
                             s[w:-w, -w:].ravel()]) for s in images]
    assert frame[0].size == shape[1] * shape[2] - (shape[1] - 2 * w) * (shape[2] - 2 * w)
    np.testing.assert_array_equal(noise.image_sigmas(images, "border"),
                                  [mad_sigma(f) for f in frame])


def test_a_blank_stamp_is_named_by_its_index():
    images = np.random.default_rng(3).normal(size=(5, 16, 16))
    images[3] = 0.0
    sigmas = noise.image_sigmas(images, "per-image")
    with pytest.raises(ConfigError, match=r"option noise_est='per-image': the noise estimate "
                                          r"of image 3 is 0 .*1 image\(s\) in all"):
        noise.check_image_sigmas(sigmas, "per-image")
    with pytest.raises(ConfigError, match="expected one of per-image, border"):
        noise.image_sigmas(images, "median")
