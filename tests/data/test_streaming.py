"""Streaming readers: the same checks and the same HDU as the whole-array readers."""

import numpy as np
import pytest
from astropy.io import fits

from galdecon.cli import main
from galdecon.data import io
from galdecon.data.streaming import FitsReader, NpyReader
from galdecon.errors import InputError

pytest.importorskip("zarr")


def _convert_error(capsys, *args):
    """Run ``galdecon convert`` expecting a one-line error with exit status 2."""
    rc = main(["convert", *[str(a) for a in args], "-q"])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert rc == 2, captured
    assert len(err) == 1, err
    assert err[0].startswith("galdecon: error: ")
    return err[0]


def _stack(n=12, shape=(9, 7), seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape))


@pytest.mark.parametrize("target", ["out.npy", "out.fits", "out.zarr"])
def test_a_truncated_fits_file_is_one_clean_error_naming_it(tmp_path, capsys, target):
    path = tmp_path / "cut.fits"
    fits.PrimaryHDU(_stack()).writeto(path)
    path.write_bytes(path.read_bytes()[:4000])
    line = _convert_error(capsys, path, tmp_path / target)
    assert f"{path}: truncated: HDU 0 promises a 12×9×7 array of BITPIX -64" in line
    assert "reshape" not in line
    assert not (tmp_path / target).exists()
    with pytest.raises(InputError, match=r"cut\.fits: truncated"):
        io.read_array(path)


def test_convert_and_deconvolve_read_the_same_hdu(tmp_path, capsys):
    path = tmp_path / "two.fits"
    images = _stack()
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.arange(5.0), name="WAVE"),
                  fits.ImageHDU(images, name="SCI")]).writeto(path)
    whole = io.read_array(path)  # what deconvolve reads: the first image HDU of >= 2 axes
    np.testing.assert_array_equal(whole, images)
    reader = FitsReader(path)
    try:
        assert reader.shape == images.shape
        np.testing.assert_array_equal(reader[slice(3, 8)], images[3:8])
    finally:
        reader.close()
    assert main(["convert", str(path), str(tmp_path / "out.npy"), "-q"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), whole)


def test_a_named_hdu_is_the_one_read(tmp_path):
    path = tmp_path / "two.fits"
    images = _stack()
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.arange(5.0), name="WAVE"),
                  fits.ImageHDU(images, name="SCI")]).writeto(path)
    reader = FitsReader(f"{path}[WAVE]")
    try:
        np.testing.assert_array_equal(reader[slice(0, 5)], np.arange(5.0))
    finally:
        reader.close()
    with pytest.raises(InputError, match=r"no HDU 'NOPE'"):
        FitsReader(f"{path}[NOPE]")


def test_a_truncated_npy_file_is_refused_from_its_header(tmp_path, capsys):
    path = tmp_path / "cut.npy"
    np.save(path, _stack())
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match=r"cut\.npy: truncated: its header promises"):
        NpyReader(path)
    line = _convert_error(capsys, path, tmp_path / "out.zarr")
    assert f"{path}: truncated" in line
