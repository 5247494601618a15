"""Reading, validation errors (one line, exit 2, naming file/index/expectation), writing."""

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import galdecon
from galdecon.cli.app import main
from galdecon.data import io
from galdecon.errors import ConfigError, GalDeconWarning, InputError, OutputError

DATA = Path(__file__).resolve().parents[2] / "data" / "sf_deconvolve_example"
IMAGES = DATA / "example_image_stack.npy"
PSFS = DATA / "example_psfs.npy"


@pytest.fixture
def small(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.random((4, 15, 15))
    psfs = rng.random((4, 7, 7))
    psfs /= psfs.sum(axis=(1, 2), keepdims=True)
    np.save(tmp_path / "img.npy", images)
    np.save(tmp_path / "psf.npy", psfs)
    return tmp_path, images, psfs


def cli_error(capsys, *args):
    rc = main(["deconvolve", *[str(a) for a in args], "-q", "--no-plots"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1, err
    return err[0]


# -- reading ------------------------------------------------------------------------------

def test_reads_npy_and_fits_identically():
    a = io.read_array(IMAGES)
    b = io.read_array(DATA / "example_image_stack.fits")
    assert a.shape == (100, 41, 41)
    np.testing.assert_array_equal(a, b)


def test_fits_named_and_indexed_hdu(tmp_path):
    data = np.arange(2 * 5 * 5, dtype=np.float32).reshape(2, 5, 5)
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((3, 3)), name="JUNK"),
                         fits.ImageHDU(data, name="SCI")])
    path = tmp_path / "multi.fits"
    hdul.writeto(path)
    np.testing.assert_array_equal(io.read_array(f"{path}[SCI]"), data)
    np.testing.assert_array_equal(io.read_array(f"{path}[2]"), data)
    # default: first HDU with image data of >= 2 dimensions
    np.testing.assert_array_equal(io.read_array(path), np.zeros((3, 3)))
    with pytest.raises(InputError, match=r"no HDU 'NOPE'"):
        io.read_array(f"{path}[NOPE]")


def test_fits_without_image_hdu(tmp_path):
    path = tmp_path / "table.fits"
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=[1.0])])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
    with pytest.raises(InputError, match="no image HDU"):
        io.read_array(path)


@pytest.mark.parametrize("dtype", [">f8", ">f4", "<f2", ">i2", "u1"])
def test_byte_orders_and_small_types_are_read_natively(tmp_path, dtype):
    data = (np.arange(2 * 3 * 3) % 7).reshape(2, 3, 3).astype(dtype)
    np.save(tmp_path / "a.npy", data)
    out = io.read_array(tmp_path / "a.npy")
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, data.astype(float))


def test_pickled_object_array_is_refused_not_loaded(tmp_path):
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.npy"
    np.save(path, np.array([Boom()], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="pickled/object array"):
        io.read_array(path)
    assert not marker.exists()
    raw = tmp_path / "raw.npy"
    raw.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(InputError, match="pickled"):
        io.read_array(raw)


def test_truncated_npy_and_garbage_fits(tmp_path):
    trunc = tmp_path / "t.npy"
    trunc.write_bytes(IMAGES.read_bytes()[:5000])
    with pytest.raises(InputError, match=str(trunc)):
        io.read_array(trunc)
    garbage = tmp_path / "g.fits"
    garbage.write_bytes(b"not a fits file at all" * 10)
    with pytest.raises(InputError, match=str(garbage)):
        io.read_array(garbage)


def test_complex_data_refused(tmp_path):
    np.save(tmp_path / "c.npy", np.ones((2, 3, 3), dtype=complex))
    with pytest.raises(InputError, match="complex128 is not supported"):
        io.read_array(tmp_path / "c.npy")


# -- validation through the command line -------------------------------------------------

def test_missing_file(capsys, small):
    tmp, *_ = small
    line = cli_error(capsys, "-i", tmp / "nope.npy", "-p", tmp / "psf.npy", "-o", tmp / "o")
    assert line == f"galdecon: error: {tmp / 'nope.npy'}: file not found"


def test_unknown_format(capsys, small):
    tmp, *_ = small
    (tmp / "img.txt").write_text("1 2 3")
    line = cli_error(capsys, "-i", tmp / "img.txt", "-p", tmp / "psf.npy", "-o", tmp / "o")
    assert "img.txt: unknown file format; expected one of .npy" in line


@pytest.mark.parametrize("shape", [(5,), (2, 2, 5, 5)])
def test_wrong_ndim(capsys, small, shape):
    tmp, *_ = small
    np.save(tmp / "bad.npy", np.ones(shape))
    line = cli_error(capsys, "-i", tmp / "bad.npy", "-p", tmp / "psf.npy", "-o", tmp / "o")
    assert f"bad.npy: image stack has {len(shape)} dimensions" in line
    assert "expected 2 (one image) or 3 (n, N0, N1)" in line


def test_psf_count_mismatch(capsys, small):
    tmp, _, psfs = small
    np.save(tmp / "psf3.npy", psfs[:3])
    line = cli_error(capsys, "-i", tmp / "img.npy", "-p", tmp / "psf3.npy", "-o", tmp / "o")
    assert "psf3.npy: 3 PSFs for 4 images; expected exactly one PSF per image" in line


def test_psf_larger_than_stamp(capsys, small):
    tmp, *_ = small
    big = np.ones((4, 17, 15)) / (17 * 15)
    np.save(tmp / "big.npy", big)
    line = cli_error(capsys, "-i", tmp / "img.npy", "-p", tmp / "big.npy", "-o", tmp / "o")
    assert "big.npy: PSF shape (17, 15) is larger than the stamp (15, 15)" in line


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_nan_inf_names_first_bad_image(capsys, small, bad_value):
    tmp, images, psfs = small
    images = images.copy()
    images[2, 4, 4] = bad_value
    images[3, 0, 0] = bad_value
    np.save(tmp / "nan.npy", images)
    line = cli_error(capsys, "-i", tmp / "nan.npy", "-p", tmp / "psf.npy", "-o", tmp / "o")
    assert line.endswith("nan.npy: image stack image 2 contains NaN or Inf")
    psfs = psfs.copy()
    psfs[1, 0, 0] = bad_value
    np.save(tmp / "psfnan.npy", psfs)
    line = cli_error(capsys, "-i", tmp / "img.npy", "-p", tmp / "psfnan.npy", "-o", tmp / "o")
    assert line.endswith("psfnan.npy: PSF image 1 contains NaN or Inf")


def test_empty_arrays(capsys, small):
    tmp, *_ = small
    np.save(tmp / "empty.npy", np.zeros((0, 15, 15)))
    line = cli_error(capsys, "-i", tmp / "empty.npy", "-p", tmp / "psf.npy", "-o", tmp / "o")
    assert "empty.npy: image stack is empty, shape (0, 15, 15)" in line


def test_pickled_input_via_cli(capsys, small):
    tmp, *_ = small
    np.save(tmp / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    line = cli_error(capsys, "-i", tmp / "obj.npy", "-p", tmp / "psf.npy", "-o", tmp / "o")
    assert "obj.npy: holds a pickled/object array" in line


@pytest.mark.parametrize("args, expected", [
    (["--wave-thresh-factor", "3", "3"], "--wave-thresh-factor [3.0, 3.0]: expected 3 values"),
    (["--n-scales", "5", "--wave-thresh-factor", "3", "3", "4"], "expected 4 values"),
    (["--n-iter", "0"], "expected an integer >= 1, got 0"),
    (["--relax", "2.5"], "--relax 2.5: expected a number in (0, 2)"),
    (["--condat-tau", "-1"], "--condat-tau -1.0: expected a positive number or 'auto'"),
    (["--condat-sigma", "fast"], "expected a number or 'auto', got 'fast'"),
    (["--mode", "magic"], "invalid choice: 'magic'"),
    (["--noise-est", "-3"], "expected a number > 0, global, per-image or border, got '-3'"),
    (["--n-scales", "1", "--wave-thresh-factor"], "expected at least one argument"),
    (["--lowr-type", "ngole"], "invalid choice: 'ngole'"),
])
def test_bad_option_values(capsys, small, args, expected):
    tmp, *_ = small
    line = cli_error(capsys, "-i", tmp / "img.npy", "-p", tmp / "psf.npy", "-o", tmp / "o",
                     *args)
    assert expected in line


def test_truth_and_primal_shape_mismatch(capsys, small):
    tmp, images, _ = small
    np.save(tmp / "truth.npy", images[:, :10, :10])
    line = cli_error(capsys, "-i", tmp / "img.npy", "-p", tmp / "psf.npy", "-o", tmp / "o",
                     "-c", tmp / "truth.npy")
    assert "truth.npy: clean (truth) stack shape (4, 10, 10) does not match the images" in line
    line = cli_error(capsys, "-i", tmp / "img.npy", "-p", tmp / "psf.npy", "-o", tmp / "o",
                     "-k", tmp / "truth.npy")
    assert "truth.npy: initial primal shape (4, 10, 10) does not match" in line


# -- the API raises the same errors -------------------------------------------------------

def test_api_errors_and_psf_sum_warning():
    images = np.ones((3, 9, 9))
    with pytest.raises(InputError, match=r"<psfs array>: 2 PSFs for 3 images"):
        galdecon.deconvolve(images, np.ones((2, 3, 3)) / 9)
    with pytest.raises(ConfigError, match="unknown option 'n_iters'"):
        galdecon.deconvolve(images, np.ones((3, 3)) / 9, n_iters=3)
    with pytest.warns(GalDeconWarning, match=r"PSF\(s\) do not sum to 1 \(first: PSF 0"):
        # PSFs summing to 9 give beta = 81: the default steps would diverge ('auto' fits).
        galdecon.deconvolve(images, np.ones((3, 3)), n_iter=1, noise_est=1.0,
                            condat_tau="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        galdecon.deconvolve(images, np.ones((3, 3)) / 9, n_iter=1, noise_est=1.0)


def test_float32_input_is_cast_to_working_dtype():
    images = np.load(IMAGES).astype(np.float32)
    psfs = np.load(PSFS).astype(np.float32)
    r64 = galdecon.deconvolve(images, psfs, n_iter=3, n_reweights=0)
    assert r64.primal.dtype == np.float64
    r32 = galdecon.deconvolve(images, psfs, n_iter=3, n_reweights=0, dtype="float32")
    assert r32.primal.dtype == np.float32 and r32.dual.dtype == np.float32
    np.testing.assert_allclose(r32.primal, r64.primal, rtol=2e-3, atol=1e-6)


# -- writing ------------------------------------------------------------------------------

def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.npy"
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    io.write_array(target, np.arange(3.0), "npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy"]
    np.testing.assert_array_equal(np.load(target), np.arange(3.0))
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)


def test_output_checks(tmp_path):
    paths = io.output_paths(tmp_path / "s", "fits")
    assert paths["primal"].name == "s_primal.fits" and paths["record"].name == "s_run.json"
    io.check_outputs(paths, [IMAGES], overwrite=False)
    paths["primal"].write_bytes(b"x")
    with pytest.raises(OutputError, match="exists; pass --overwrite"):
        io.check_outputs(paths, [IMAGES], overwrite=False)
    io.check_outputs(paths, [IMAGES], overwrite=True)
    with pytest.raises(OutputError, match="would overwrite an input"):
        io.check_outputs(paths, [paths["dual"]], overwrite=True)
    with pytest.raises(OutputError, match="output format 'hdf5': expected one of npy, fits"):
        io.output_paths(tmp_path / "s", "hdf5")
