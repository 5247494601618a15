"""One set of PSF checks: per-block summaries combine into the warnings of the whole stack."""

import itertools
import warnings

import numpy as np
import pytest

import galdecon
from galdecon.data import chunked
from galdecon.data.sources import StoreStack
from galdecon.data.validate import (
    NEGATIVE_FLUX_FRACTION,
    NEGATIVE_PEAK_FRACTION,
    PsfSummary,
    combine_psf_summaries,
    psf_summary,
    significant_negative,
    validate_psfs,
    warn_psfs,
)
from galdecon.errors import GalDeconWarning, InputError

pytest.importorskip("zarr")


def _psfs(n=10, k=5):
    y, x = np.mgrid[:k, :k] - k // 2
    psf = np.exp(-(x**2 + y**2) / 2.0)
    return np.repeat((psf / psf.sum())[None], n, axis=0)


def _messages(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught if issubclass(w.category, GalDeconWarning)]


def _blocks_warn(psfs, path, edges):
    summary = PsfSummary()
    for a, b in itertools.pairwise(edges):
        summary = combine_psf_summaries(summary, psf_summary(psfs[a:b], start=a))
    warn_psfs(path, summary)


def test_block_summaries_give_the_warnings_of_the_whole_stack():
    psfs = _psfs()  # peaks 0.16: negative pixels below -0.0016 are warned of
    psfs[1, 0, 0] = -1e-3  # ringing, not warned of
    psfs[3, 0, 0] = -3e-3
    psfs[7, 1, 1] = -5e-3  # the most negative
    psfs[8] *= 1.1  # does not sum to 1
    whole = _messages(lambda: validate_psfs(psfs, 10, (9, 9), "p.npy"))
    assert len(whole) == 2 and "2 PSF(s) have negative pixels (first: PSF 3" in whole[0]
    assert "most negative value -0.005 in PSF 7" in whole[0]
    for edges in ([0, 10], [0, 4, 10], [0, 1, 2, 8, 9, 10], [0, 3, 4, 7, 8, 10]):
        assert _messages(lambda e=edges: _blocks_warn(psfs, "p.npy", e)) == whole


def test_combining_is_associative_and_commutative():
    psfs = _psfs(12)
    psfs[2, 0, 0] = psfs[9, 0, 0] = -2e-3  # a tie: the first PSF is named
    psfs[5] *= 0.5
    parts = [psf_summary(psfs[a:b], start=a) for a, b in ((0, 3), (3, 6), (6, 9), (9, 12))]
    expected = psf_summary(psfs)
    assert expected.most_negative_index == 2 and expected.off_sum == 3
    for order in itertools.permutations(parts):
        left = PsfSummary()
        for part in order:
            left = combine_psf_summaries(left, part)
        assert left == expected
    assert combine_psf_summaries(PsfSummary(), PsfSummary()) == PsfSummary()


def test_a_shared_psf_is_named_as_such():
    psf = _psfs(1)[0]
    shift = psf[0, 0] + 5e-3
    psf[0, 0] -= shift
    psf[2, 2] += shift  # still sums to 1: only the negative pixel is warned of
    (message,) = _messages(lambda: validate_psfs(psf, 4, (9, 9), "p.npy"))
    assert "first: the PSF (one for all)" in message


def test_a_store_block_with_a_zero_psf_is_named(tmp_path):
    psfs = _psfs()
    psfs[6] = 0
    chunked.write_store(tmp_path / "s.zarr", {"images": np.ones((10, 9, 9)), "psfs": psfs},
                        chunk=4)
    source = StoreStack.open(tmp_path / "s.zarr")
    source.read(0, 4)
    with pytest.raises(InputError, match=r"s\.zarr\[psfs\]: PSF 6 is all zeros; expected"):
        source.read(4, 8)


def test_a_store_run_warns_of_negative_psf_pixels(tmp_path):
    rng = np.random.default_rng(1)
    psfs = _psfs(8)
    shift = psfs[5, 0, 0] + 5e-3
    psfs[5, 0, 0] -= shift
    psfs[5, 2, 2] += shift  # still sums to 1: only the negative pixel is warned of
    images = rng.random((8, 16, 16))
    chunked.write_store(tmp_path / "in.zarr", {"images": images, "psfs": psfs}, chunk=4)
    with pytest.warns(GalDeconWarning, match=r"in\.zarr\[psfs\]: 1 PSF\(s\) have negative "
                                             r"pixels \(first: PSF 5"):
        galdecon.deconvolve(StoreStack.open(tmp_path / "in.zarr"), None, n_iter=2,
                            n_reweights=0, output=chunked.create_store(tmp_path / "o.zarr"))
    with pytest.warns(GalDeconWarning, match=r"1 PSF\(s\) have negative pixels"):
        galdecon.deconvolve(images, psfs, n_iter=2, n_reweights=0)


def _negative_messages(call):
    return [m for m in _messages(call) if "negative" in m]


def test_negative_pixels_warn_only_below_one_percent_of_the_peak():
    psf = _psfs(1)[0]
    threshold = NEGATIVE_PEAK_FRACTION * psf.max()
    below, above = psf.copy(), psf.copy()
    below[0, 0], above[0, 0] = -1.001 * threshold, -0.999 * threshold
    np.testing.assert_array_equal(significant_negative(np.stack([below, above]).reshape(2, -1)),
                                  [True, False])
    (message,) = _negative_messages(lambda: validate_psfs(np.stack([above, below]), 2, (9, 9),
                                                          "p.npy"))
    assert message.startswith("p.npy: 1 PSF(s) have negative pixels (first: PSF 1; most "
                              f"negative value {below.min():.8g} in PSF 1)")
    assert _negative_messages(lambda: validate_psfs(above, 1, (9, 9), "p.npy")) == []


def test_many_small_negative_pixels_warn_when_they_hold_one_percent_of_the_flux():
    k = 21
    y, x = np.mgrid[:k, :k] - k // 2
    wings = (x**2 + y**2) > 25  # 360 pixels of over-subtracted background
    for depth, warned in ((1.001, True), (0.999, False)):
        psf = np.where(wings, 0.0, np.exp(-(x**2 + y**2) / 2.0))
        positive = psf.sum()
        # every wing pixel the same small negative value, far above -1 % of the peak
        psf[wings] = -depth * NEGATIVE_FLUX_FRACTION * positive / wings.sum()
        assert psf.min() > -0.1 * NEGATIVE_PEAK_FRACTION * psf.max()
        psf /= psf.sum()  # unit sum: only the negatives can warn
        assert -psf[wings].sum() / psf[~wings].sum() == pytest.approx(
            depth * NEGATIVE_FLUX_FRACTION, rel=1e-12)
        messages = _messages(lambda p=psf: validate_psfs(p, 1, (k, k), "p.npy"))
        assert len(messages) == warned
        assert all("1 PSF(s) have negative pixels (first: the PSF (one for all)" in m
                   for m in messages)


def test_galsim_optical_psfs_ringing_below_zero_are_not_warned_of():
    galsim = pytest.importorskip("galsim")
    psfs = []
    for defocus, astig, coma in ((0.0, 0.0, 0.0), (0.1, 0.05, 0.04), (-0.08, -0.05, 0.03)):
        optical = galsim.OpticalPSF(lam=725.0, diam=1.2, obscuration=0.3, nstruts=3,
                                    strut_thick=0.05, defocus=defocus, astig1=astig,
                                    coma2=coma)
        image = optical.drawImage(nx=41, ny=41, scale=0.05, method="no_pixel",
                                  dtype=np.float64).array
        psfs.append(image / image.sum())
    psfs = np.stack(psfs)
    assert (psfs < 0).any(axis=(1, 2)).all()  # they do ring below zero
    assert _messages(lambda: validate_psfs(psfs, 3, (41, 41), "optical.npy")) == []
