"""Inputs by name: an array of an .npz data set, tile-compressed FITS, and what is neither."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from astropy.io import fits

from galdecon.cli.app import main
from galdecon.data import io
from galdecon.errors import InputError


@pytest.fixture()
def dataset(tmp_path, example_images, example_psfs):
    path = tmp_path / "sim.npz"
    np.savez(path, meta=np.array('{"format": "x"}'), truth=example_images[:6],
             psfs=example_psfs[:6], noisy_snr3=example_images[:6] + 1,
             noisy_snr10=example_images[:6] + 2)
    return path


def test_an_npz_member_is_read_by_name(dataset, example_images):
    assert io.peek_shape(f"{dataset}[noisy_snr10]") == ((6, 41, 41), np.dtype("float64"))
    np.testing.assert_array_equal(io.read_array(f"{dataset}[noisy_snr10]"),
                                  example_images[:6] + 2)
    compressed = dataset.with_name("c.npz")
    np.savez_compressed(compressed, psfs=np.arange(12.0).reshape(3, 2, 2))
    np.testing.assert_array_equal(io.read_array(f"{compressed}[psfs]"),
                                  np.arange(12.0).reshape(3, 2, 2))


@pytest.mark.parametrize(("suffix", "message"), [
    ("", r"sim\.npz: holds several arrays; name one of its arrays as .*sim\.npz\[noisy_snr10\] "
         r"\(it holds: meta, truth, psfs, noisy_snr3, noisy_snr10\); or make plain files with "
         r"`galdecon convert`"),
    ("[noisy_snr5]", r"sim\.npz: has no array 'noisy_snr5'; name one of its arrays as"),
    ("[meta]", r"sim\.npz\[meta\]: data type <U15 is not supported; expected real numbers"),
])
def test_an_npz_without_a_usable_member_is_refused_with_a_hint(dataset, suffix, message):
    with pytest.raises(InputError, match=message):
        io.read_array(f"{dataset}{suffix}")


def test_a_damaged_npz_member_is_refused(dataset, tmp_path):
    broken = tmp_path / "broken.npz"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("images.npy", b"\x93NUMPY\x01\x00garbage")
        archive.writestr("pickled.npy", b"\x80\x04K\x01.")
    with pytest.raises(InputError, match=r"broken\.npz\[images\]: damaged \.npy header"):
        io.read_array(f"{broken}[images]")
    with pytest.raises(InputError, match=r"broken\.npz\[pickled\]: holds a pickled"):
        io.read_array(f"{broken}[pickled]")
    (tmp_path / "text.npz").write_text("not a zip\n")
    with pytest.raises(InputError, match=r"text\.npz: not a readable \.npz archive"):
        io.read_array(f"{tmp_path / 'text.npz'}[images]")


def test_deconvolve_reads_a_simulated_data_set_by_member(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["deconvolve", "-i", f"{dataset}[noisy_snr10]", "-p", f"{dataset}[psfs]",
                 "-o", str(out), "--n-iter", "3", "--no-plots", "-q"]) == 0
    assert np.load(f"{out}_primal.npy").shape == (6, 41, 41)
    assert main(["deconvolve", "-i", str(dataset), "-p", f"{dataset}[psfs]",
                 "-o", str(tmp_path / "two"), "-q"]) == 2
    assert "name one of its arrays as" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "compression", "dtype", "tolerance"), [
    ("stack.fits.fz", "GZIP_2", np.float64, 0.0),      # lossless
    ("stack.fz", "RICE_1", np.float32, 1e-3),          # quantised, as surveys ship them
])
def test_tile_compressed_fits_is_read_by_name(tmp_path, example_images, name, compression,
                                              dtype, tolerance):
    stack = example_images[:5].astype(dtype)
    quantize = 0.0 if tolerance == 0 else 16
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(
        stack, compression_type=compression, quantize_level=quantize)]).writeto(tmp_path / name)
    assert io.peek_shape(tmp_path / name) == ((5, 41, 41), np.dtype(dtype))
    read = io.read_array(tmp_path / name)
    assert read.dtype == dtype and np.max(np.abs(read - stack)) <= tolerance * stack.max()
    assert main(["convert", str(tmp_path / name), str(tmp_path / "out.npy"), "-q"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), read)


@pytest.mark.parametrize("content", [b"hello, a text file\n", b"\0" * 4096])
def test_convert_names_what_a_non_array_input_is(tmp_path, capsys, content):
    for name in ("data.txt", "data.npy"):
        (tmp_path / name).write_bytes(content)
        assert main(["convert", str(tmp_path / name), str(tmp_path / "out.fits"), "-q"]) == 2
        err = capsys.readouterr().err
        assert "pickled (object) data" not in err
        assert ("unknown file format" in err) if name.endswith("txt") else \
            (f"{tmp_path / name}: not a .npy file (it starts with" in err)
    assert not (tmp_path / "out.fits").exists()


def test_convert_of_dev_zero_is_an_unknown_format(tmp_path, capsys):
    assert main(["convert", "/dev/zero", str(tmp_path / "out.npy"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "/dev/zero: unknown file format" in err and "pickled" not in err
