"""Hostile and broken input: every bad file, array or option gives one clear error.

Each case asserts the message (file, index, what was expected); nothing is unpickled,
executed, expanded or modified, nothing hangs, and no exception other than galdecon's own
escapes. Property-based fuzzing (hypothesis) mutates valid .npy and FITS files and option
files. The memory estimate is checked against what a run really allocates.
"""

import bz2
import contextlib
import doctest
import gzip
import io as stdio
import math
import os
import pickle
import shlex
import stat
import subprocess
import tempfile
import threading
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import galdecon
from galdecon.cli.app import build_parser, main
from galdecon.data import files as input_files
from galdecon.data import io, memory
from galdecon.errors import ConfigError, GalDeconError, GalDeconWarning, InputError, OutputError
from galdecon.run import preflight
from galdecon.run.api import prepare_inputs

RNG = np.random.default_rng(20170828)
IMAGES = RNG.random((4, 9, 9))
PSFS = RNG.random((4, 5, 5))
PSFS /= PSFS.sum(axis=(1, 2), keepdims=True)


class TouchOnUnpickle:
    """A pickle payload: unpickling it creates ``path`` (it must never be unpickled)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def files(tmp_path):
    np.save(tmp_path / "img.npy", IMAGES)
    np.save(tmp_path / "psf.npy", PSFS)
    return tmp_path


def cli_error(capsys, *args):
    """Run ``galdecon deconvolve`` expecting a one-line error with exit status 2."""
    rc = main(["deconvolve", *[str(a) for a in args], "-q", "--no-plots"])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert rc == 2, captured
    assert len(err) == 1, err
    assert err[0].startswith("galdecon: error: ")
    return err[0]


def npy_bytes(array) -> bytes:
    buffer = stdio.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_with_header(header: str, data: bytes = b"") -> bytes:
    """A version 1.0 .npy file with a hand-written header (padded as numpy pads it)."""
    text = header.encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    length = len(text) + pad + 1
    return b"\x93NUMPY\x01\x00" + length.to_bytes(2, "little") + text + b" " * pad + b"\n" + data


def fits_bytes(*hdus) -> bytes:
    buffer = stdio.BytesIO()
    fits.HDUList(list(hdus)).writeto(buffer)
    return buffer.getvalue()


def replace_card(raw: bytes, key: str, value: str) -> bytes:
    """Overwrite the value of an existing header card (the 80-byte card stays 80 bytes)."""
    start = raw.index(key.ljust(8).encode())
    card = f"{key:<8}= {value:>20}".ljust(80).encode()
    return raw[:start] + card + raw[start + 80:]


# -- .npy: damaged, truncated, refused types ---------------------------------------------

def test_npy_damaged_header_and_magic(tmp_path):
    raw = npy_bytes(IMAGES)
    path = tmp_path / "a.npy"
    path.write_bytes(raw.replace(b"'descr'", b"'dXscr'"))
    with pytest.raises(InputError, match=r"a\.npy: damaged \.npy header \(ValueError: .*"
                                         r"expected a header written by numpy\.save"):
        io.read_array(path)
    path.write_bytes(b"\x00" + raw[1:])
    with pytest.raises(InputError) as info:
        io.read_array(path)
    assert str(info.value) == (f"{path}: not a .npy file (it starts with b'\\x00NUMPY', not the "
                               ".npy magic string b'\\x93NUMPY'); expected an array written by "
                               "numpy.save (pickles and other formats are never loaded)")
    path.write_bytes(raw[:7])
    with pytest.raises(InputError, match=r"truncated \.npy file \(7 bytes\)"):
        io.read_array(path)
    path.write_bytes(raw[:60])  # cut inside the header text
    with pytest.raises(InputError, match=r"damaged \.npy header \(ValueError: EOF: reading "
                                         r"array header, expected 118 bytes got 50\)"):
        io.read_array(path)
    path.write_bytes(b"")
    with pytest.raises(InputError, match=r"a\.npy: is empty \(0 bytes\)"):
        io.read_array(path)
    path.write_bytes(b"\x93NUMPY\x03\x00" + raw[8:])
    with pytest.raises(InputError, match=r"\.npy format version 3\.0 is not supported"):
        io.read_array(path)


def test_npy_cut_mid_array_and_trailing_bytes(tmp_path):
    raw = npy_bytes(IMAGES)  # 128-byte header + 4 × 9 × 9 × 8 = 2592 bytes
    path = tmp_path / "cut.npy"
    path.write_bytes(raw[:-1000])
    with pytest.raises(InputError) as info:
        io.read_array(path)
    assert str(info.value) == (f"{path}: truncated: its header promises a 4×9×9 float64 array "
                               "(2,592 bytes of data) but the file holds only 1,592 bytes after "
                               "the 128-byte header")
    path.write_bytes(raw + b"junk")
    with pytest.raises(InputError, match=r"4 unexpected bytes after the 4×9×9 float64 array"):
        io.read_array(path)


def test_npy_bit_flip_in_shape_is_caught_by_the_size_check(tmp_path):
    raw = npy_bytes(IMAGES)
    assert b"(4, 9, 9)" in raw
    path = tmp_path / "flip.npy"
    path.write_bytes(raw.replace(b"(4, 9, 9)", b"(4, 9, 8)"))  # '9' ^ 0x01 = '8'
    with pytest.raises(InputError, match=r"288 unexpected bytes after the 4×9×8 float64"):
        io.read_array(path)
    path.write_bytes(raw.replace(b"(4, 9, 9)", b"(5, 9, 9)"))
    with pytest.raises(InputError, match=r"promises a 5×9×9 float64 array \(3,240 bytes"):
        io.read_array(path)


@pytest.mark.parametrize("header, expected", [
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (-1, 3), }",
     r"damaged \.npy header \(shape \(-1, 3\)\); expected sizes >= 0"),
    ("{'descr': ('<f8', (3,)), 'fortran_order': False, 'shape': (2,), }",
     r"sub-array data type \('<f8', \(3,\)\)"),
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (10**9, 41, 41), }",
     r"damaged \.npy header \(ValueError: malformed node"),
    ("{'descr': \"__import__('os').system('exit 3')\", 'fortran_order': False, 'shape': (1,), }",
     r"damaged \.npy header \(ValueError: descr is not a valid dtype descriptor"),
    ("(" * 3000 + ")" * 3000, r"damaged \.npy header \(ValueError: Cannot parse header"),
])
def test_npy_hand_crafted_headers(tmp_path, header, expected):
    path = tmp_path / "h.npy"
    path.write_bytes(npy_with_header(header, b"\0" * 48))
    with pytest.raises(InputError, match=expected):
        io.read_array(path)


@pytest.mark.parametrize("array, expected", [
    (np.zeros(3, dtype=[("a", "f8"), ("b", "i4")]),
     r"holds a structured array \(fields a, b\); expected plain real numbers"),
    (np.array(["ab", "c"]), r"data type <U2 is not supported; expected real numbers"),
    (np.array([b"ab", b"c"]), r"data type \|S2 is not supported"),
    (np.ones((2, 3, 3), dtype=np.complex64), r"data type complex64 is not supported"),
    (np.ones((2, 3, 3), dtype=bool), r"data type bool is not supported"),
    (np.zeros((2, 3, 3), dtype="M8[s]"), r"data type datetime64\[s\] is not supported"),
])
def test_npy_non_real_types_refused(tmp_path, array, expected):
    path = tmp_path / "t.npy"
    np.save(path, array)
    with pytest.raises(InputError, match=expected):
        io.read_array(path)
    with pytest.raises(InputError, match=expected):
        io.peek_shape(path)  # refused from the header, before any data is read


def test_npz_and_raw_pickle_named_npy(tmp_path):
    path = tmp_path / "z.npy"
    with open(path, "wb") as handle:
        np.savez(handle, a=np.ones(3))
    with pytest.raises(InputError, match=r"z\.npy: is a zip archive \(an \.npz\?\)"):
        io.read_array(path)


def test_pickles_are_never_unpickled(tmp_path, capsys, files):
    # Control: this payload does create its marker when unpickled.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(TouchOnUnpickle(control))).close()
    assert control.exists()

    marker = tmp_path / "unpickled"
    evil = tmp_path / "evil.npy"
    np.save(evil, np.array([TouchOnUnpickle(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"evil\.npy: holds a pickled/object array"):
        io.read_array(evil)
    with pytest.raises(InputError, match="pickled/object array"):
        io.peek_shape(evil)
    raw = tmp_path / "raw.npy"
    raw.write_bytes(pickle.dumps(TouchOnUnpickle(marker)))
    with pytest.raises(InputError, match=r"raw\.npy: holds a pickled Python object, not a "
                                         r"\.npy array; pickles are never loaded"):
        io.read_array(raw)
    line = cli_error(capsys, "-i", files / "img.npy", "-p", evil, "-o", tmp_path / "o")
    assert line.endswith("evil.npy: holds a pickled/object array; only numeric arrays are read "
                         "(pickles are never loaded)")
    assert not marker.exists()


@pytest.mark.parametrize("dtype", [">f8", ">f4", "<f2", ">f2", ">i4", "<u2"])
@pytest.mark.parametrize("fortran", [False, True])
def test_npy_byte_orders_and_float16_read_exactly(tmp_path, dtype, fortran):
    values = (np.arange(2 * 3 * 4) % 11).reshape(2, 3, 4) / 4.0  # exact in every type here
    data = values.astype(dtype)
    if fortran:
        data = np.asfortranarray(data)
    np.save(tmp_path / "a.npy", data)
    assert io.peek_shape(tmp_path / "a.npy") == ((2, 3, 4), np.dtype(dtype).newbyteorder("="))
    out = io.read_array(tmp_path / "a.npy")
    assert out.dtype.isnative and out.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(out.astype(np.float64), values if dtype[1] == "f"
                                  else np.floor(values))


# -- FITS: truncated, corrupted, tables, gzip, byte orders -------------------------------

def test_fits_truncated_in_data_and_in_header(tmp_path):
    raw = fits_bytes(fits.PrimaryHDU(IMAGES))  # 2880-byte header, 2592 bytes of data
    path = tmp_path / "t.fits"
    path.write_bytes(raw[:2880 + 1000])
    with pytest.raises(InputError) as info:
        io.read_array(path)
    assert str(info.value) == (f"{path}: truncated: HDU 0 promises a 4×9×9 array of BITPIX -64 "
                               "(2,592 bytes from byte 2,880) but the file ends at byte 3,880")
    with pytest.raises(InputError, match="truncated: HDU 0 promises"):
        io.peek_shape(path)
    path.write_bytes(raw[:1000])
    with pytest.raises(InputError, match=r"t\.fits: not a readable FITS file \(OSError: Empty or "
                                         r"corrupt FITS file; .*Header size is not multiple "
                                         r"of 2880: 1000"):
        io.read_array(path)
    # The final padding alone missing is not truncation: the data are all there.
    path.write_bytes(raw[:2880 + 2592])
    np.testing.assert_array_equal(io.read_array(path), IMAGES)


@pytest.mark.parametrize("key, value, expected", [
    ("NAXIS1", "'garbage'", r"Unparsable card \(NAXIS1\)|NAXIS1 = 'garbage'|TypeError"),
    ("NAXIS1", "xyz@@", r"Unparsable card \(NAXIS1\)"),
    ("BITPIX", "17", r"HDU 0 has BITPIX = 17; expected one of 8, 16, 32, 64, -32, -64"),
    ("BITPIX", "T", r"HDU 0 has BITPIX = True; expected one of 8, 16"),
    ("NAXIS2", "-3", r"HDU 0 has a damaged header: NAXIS2 = -3; expected an integer >= 0"),
    ("NAXIS3", "999999", r"truncated: HDU 0 promises a 999999×9×9 array of BITPIX -64"),
])
def test_fits_corrupted_header_cards(tmp_path, key, value, expected):
    path = tmp_path / "c.fits"
    path.write_bytes(replace_card(fits_bytes(fits.PrimaryHDU(IMAGES)), key, value))
    with pytest.raises(InputError, match=expected) as info:
        io.read_array(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value)


def test_fits_only_a_table_and_named_hdus_that_are_tables(tmp_path):
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=[1.0])],
                                          name="CAT")
    only = tmp_path / "table.fits"
    only.write_bytes(fits_bytes(fits.PrimaryHDU(), table))
    with pytest.raises(InputError) as info:
        io.read_array(only)
    assert str(info.value) == (f"{only}: no image HDU with 2-D or 3-D data; expected an image "
                               "HDU (HDUs: 0 PRIMARY: no data; 1 CAT: table (BinTableHDU))")
    mixed = tmp_path / "mixed.fits"
    mixed.write_bytes(fits_bytes(fits.PrimaryHDU(IMAGES), table))
    for spec, name in ((f"{mixed}[CAT]", "'CAT'"), (f"{mixed}[1]", "1"), (f"{mixed}[-1]", "-1")):
        with pytest.raises(InputError) as info:
            io.read_array(spec)
        assert str(info.value) == (f"{mixed}: HDU {name} is a table (BinTableHDU), not an "
                                   "image; expected an image HDU (HDUs: 0 PRIMARY: image "
                                   "4×9×9; 1 CAT: table (BinTableHDU))")
    with pytest.raises(InputError, match=r"no HDU 7 \(HDUs: 0 PRIMARY: image 4×9×9; 1 CAT"):
        io.read_array(f"{mixed}[7]")
    np.testing.assert_array_equal(io.read_array(f"{mixed}[0]"), IMAGES)
    empty = tmp_path / "empty.fits"
    empty.write_bytes(fits_bytes(fits.PrimaryHDU(), fits.ImageHDU(IMAGES, name="SCI")))
    with pytest.raises(InputError, match=r"HDU 0 holds no image data \(NAXIS = 0\)"):
        io.read_array(f"{empty}[0]")
    np.testing.assert_array_equal(io.read_array(empty), IMAGES)  # the first image HDU


def test_gzip_fits_truncated_or_corrupted(tmp_path):
    raw = fits_bytes(fits.PrimaryHDU(IMAGES))
    packed = gzip.compress(raw)
    good = tmp_path / "g.fits.gz"
    good.write_bytes(packed)
    np.testing.assert_array_equal(io.read_array(good), IMAGES)
    assert io.peek_shape(good) == ((4, 9, 9), np.dtype("f8"))
    cut = tmp_path / "cut.fits.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(InputError) as info:
        io.read_array(cut)
    assert str(info.value) == (f"{cut}: gzip data is truncated or corrupt (EOFError: Compressed "
                               "file ended before the end-of-stream marker was reached); "
                               "expected a complete .gz file")
    flipped = bytearray(packed)
    flipped[len(flipped) // 2] ^= 0x10
    bad = tmp_path / "bad.fits.gz"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(InputError, match=r"bad\.fits\.gz: gzip data is truncated or corrupt"):
        io.read_array(bad)  # astropy alone would not check the CRC and return wrong pixels
    plain = tmp_path / "plain.fits.gz"  # not compressed despite its name: read as FITS
    plain.write_bytes(raw)
    np.testing.assert_array_equal(io.read_array(plain), IMAGES)
    packed_bz2 = tmp_path / "b.fits"  # bzip2 inside (astropy reads it): no false truncation
    packed_bz2.write_bytes(bz2.compress(raw))
    np.testing.assert_array_equal(io.read_array(packed_bz2), IMAGES)


@pytest.mark.parametrize("dtype", [">f8", ">f4", "<f8", "<f4", ">i2"])
def test_fits_byte_orders_read_natively(tmp_path, dtype):
    values = (np.arange(2 * 3 * 4) % 11).reshape(2, 3, 4).astype(dtype)
    path = tmp_path / "b.fits"
    fits.PrimaryHDU(values).writeto(path)
    out = io.read_array(path)
    assert out.dtype.isnative and out.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(out, values)


def test_fits_float16_and_scaled_integers(tmp_path):
    # FITS has no 16-bit float (BITPIX -32 is the smallest): float16 data are stored and read
    # back as float32, exactly.
    half = (RNG.random((2, 3, 4)) * 100).astype(np.float16)
    path = tmp_path / "h.fits"
    fits.PrimaryHDU(half.astype(np.float32)).writeto(path)
    np.testing.assert_array_equal(io.read_array(path), half.astype(np.float32))
    counts = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    hdu = fits.PrimaryHDU(counts)
    hdu.header["BSCALE"], hdu.header["BZERO"] = 0.5, 3.0
    hdu.writeto(tmp_path / "s.fits")
    assert io.peek_shape(tmp_path / "s.fits") == ((2, 3, 4), np.dtype("f4"))
    np.testing.assert_array_equal(io.read_array(tmp_path / "s.fits"), counts * 0.5 + 3.0)
    fits.PrimaryHDU(np.arange(24, dtype=np.uint16).reshape(2, 3, 4) + 40000).writeto(
        tmp_path / "u.fits")
    assert io.peek_shape(tmp_path / "u.fits") == ((2, 3, 4), np.dtype("u2"))
    assert io.read_array(tmp_path / "u.fits").max() == 40023


# -- paths that are not readable files ----------------------------------------------------

def test_directories_links_devices_and_odd_names(tmp_path, capsys, files):
    (tmp_path / "dir.npy").mkdir()
    with pytest.raises(InputError, match=r"dir\.npy: is a directory, expected a \.npy or FITS"):
        io.read_array(tmp_path / "dir.npy")
    os.symlink("loop2.npy", tmp_path / "loop1.npy")
    os.symlink("loop1.npy", tmp_path / "loop2.npy")
    with pytest.raises(InputError) as info:
        io.read_array(tmp_path / "loop1.npy")
    assert str(info.value) == (f"{tmp_path / 'loop1.npy'}: symbolic link loop; expected a .npy "
                               "or FITS file")
    os.symlink("gone.npy", tmp_path / "dangling.npy")
    with pytest.raises(InputError, match=r"dangling\.npy: broken symbolic link \(to gone\.npy, "
                                         r"which does not exist\)"):
        io.read_array(tmp_path / "dangling.npy")
    os.symlink(os.devnull, tmp_path / "null.npy")
    with pytest.raises(InputError, match=r"null\.npy: is a character device, not a regular "
                                         r"file"):
        io.read_array(tmp_path / "null.npy")
    with pytest.raises(InputError, match=r"'a\\x00b\.npy': file name contains a NUL byte"):
        io.read_array("a\x00b.npy")
    long_name = tmp_path / ("x" * 300 + ".npy")
    with pytest.raises(InputError, match=r"cannot be accessed \(File name too long\)"):
        io.read_array(long_name)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"cannot be accessed \(Not a directory\)"):
        io.read_array(tmp_path / "file" / "a.npy")
    # Through the command line, before any output is checked.
    for bad, message in (("loop1.npy", "symbolic link loop"), ("dir.npy", "is a directory"),
                         ("null.npy", "is a character device")):
        line = cli_error(capsys, "-i", tmp_path / bad, "-p", files / "psf.npy",
                         "-o", tmp_path / "o")
        assert f"{tmp_path / bad}: {message}" in line


def test_cli_input_name_too_long(tmp_path, capsys, files):
    long_name = tmp_path / ("x" * 300 + ".npy")
    line = cli_error(capsys, "-i", long_name, "-p", files / "psf.npy", "-o", tmp_path / "o")
    assert line.endswith("cannot be accessed (File name too long); expected a readable .npy or "
                         "FITS file")


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    outcome = {}

    def attempt():
        try:
            io.read_array(fifo)
        except InputError as exc:
            outcome["error"] = str(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # it opened the FIFO and blocks: unblock it, then fail
        with open(fifo, "wb"):
            pass
        worker.join(5)
        pytest.fail("read_array blocked on a FIFO")
    assert outcome["error"] == (f"{fifo}: is a FIFO, not a regular file; expected a .npy or "
                                "FITS file")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    path = tmp_path / "locked.npy"
    np.save(path, IMAGES)
    path.chmod(0)
    try:
        with pytest.raises(InputError, match=r"locked\.npy: permission denied; expected a "
                                             r"readable \.npy or FITS file"):
            io.read_array(path)
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_open_failure_is_an_input_error(tmp_path, monkeypatch):
    # The same path as an unreadable file, also where the tests run as root.
    path = tmp_path / "locked.npy"
    np.save(path, IMAGES)

    def refuse(name, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(name))

    monkeypatch.setattr(input_files, "open", refuse, raising=False)
    with pytest.raises(InputError) as info:
        io.read_array(path)
    assert str(info.value) == (f"{path}: cannot be read (Permission denied); expected a "
                               "readable .npy or FITS file")


def test_reading_never_modifies_inputs(tmp_path):
    paths = []
    for name, data in (("a.npy", npy_bytes(IMAGES.astype(">f4"))),
                       ("b.npy", npy_bytes(IMAGES)[:-7]),
                       ("c.fits", fits_bytes(fits.PrimaryHDU(IMAGES))),
                       ("d.fits", fits_bytes(fits.PrimaryHDU(IMAGES))[:3000]),
                       ("e.fits.gz", gzip.compress(fits_bytes(fits.PrimaryHDU(IMAGES))))):
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode) for p in paths}
    for path in paths:
        with contextlib.suppress(InputError):
            io.read_array(path)
        with contextlib.suppress(InputError):
            io.peek_shape(path)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode) for p in paths} == before
    images = IMAGES.copy()
    images.setflags(write=False)  # a write into the caller's array would raise
    psfs = PSFS.astype(np.float32)
    psfs.setflags(write=False)
    out = prepare_inputs(images, psfs, initial_primal=images, truth=images)
    np.testing.assert_array_equal(images, IMAGES)
    assert out["psfs"].dtype == np.float64 and not np.shares_memory(out["psfs"], psfs)


# -- values: NaN/Inf, zero and negative PSFs, range, shapes -----------------------------

@pytest.mark.parametrize("option, what", [("-c", "clean (truth) stack"),
                                          ("-k", "initial primal")])
def test_nan_in_truth_and_initial_primal_names_file_and_index(capsys, files, option, what):
    bad = IMAGES.copy()
    bad[3, 1, 2] = np.nan
    np.save(files / "bad.npy", bad)
    line = cli_error(capsys, "-i", files / "img.npy", "-p", files / "psf.npy",
                     "-o", files / "o", option, files / "bad.npy")
    assert line == f"galdecon: error: {files / 'bad.npy'}: {what} image 3 contains NaN or Inf"


def test_nan_inf_through_the_api_names_the_input_and_index():
    bad = IMAGES.copy()
    bad[1, 0, 0] = -np.inf
    names = {"images": "i.fits", "psfs": "p.fits", "primal": "k.npy", "truth": "t.npy"}
    with pytest.raises(InputError, match=r"^k\.npy: initial primal image 1 contains NaN or Inf$"):
        prepare_inputs(IMAGES, PSFS, initial_primal=bad, names=names)
    with pytest.raises(InputError, match=r"^t\.npy: clean \(truth\) stack image 1 contains"):
        prepare_inputs(IMAGES, PSFS, truth=bad, names=names)
    psf = PSFS[0].copy()
    psf[1, 2] = np.nan
    with pytest.raises(InputError, match=r"^p\.fits: PSF \(one 2-D image\) contains NaN or "
                                         r"Inf, first at pixel \(1, 2\)$"):
        prepare_inputs(IMAGES, psf, names=names)


def test_values_beyond_float32_range():
    images = IMAGES.copy()
    images[2, 4, 4] = 1e300
    with pytest.raises(InputError) as info:
        prepare_inputs(images, PSFS, dtype="float32", names={"images": "big.npy"})
    assert str(info.value) == ("big.npy: image stack image 2 has values beyond the float32 "
                               "range (largest magnitude 1e+300); expected |x| <= 3.40282e+38 "
                               "(use a wider working dtype)")
    assert prepare_inputs(images, PSFS)["images"][2, 4, 4] == 1e300  # fine in float64


def test_all_zero_psf_is_an_error_naming_it(capsys, files):
    psfs = PSFS.copy()
    psfs[2] = 0.0
    np.save(files / "zero.npy", psfs)
    line = cli_error(capsys, "-i", files / "img.npy", "-p", files / "zero.npy", "-o", files / "o")
    assert line.endswith("zero.npy: PSF 2 is all zeros (1 such PSF(s)); expected a PSF with "
                         "non-zero pixels summing to 1")
    with pytest.raises(InputError, match=r"^<psfs array>: the PSF \(one for all\) is all zeros"):
        prepare_inputs(IMAGES, np.zeros((3, 3)))


def test_negative_psf_pixels_warn_with_first_index_and_most_negative_value():
    psfs = PSFS.copy()
    for index, pixel, value in ((1, (0, 0), -0.01), (3, (4, 4), -0.05)):
        psfs[index][2, 2] += psfs[index][pixel] - value  # the sum stays 1
        psfs[index][pixel] = value
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = prepare_inputs(IMAGES, psfs, names={"psfs": "emp.npy"})
    messages = [str(w.message) for w in caught if issubclass(w.category, GalDeconWarning)]
    assert messages == ["emp.npy: 2 PSF(s) have negative pixels (first: PSF 1; most negative "
                        "value -0.05 in PSF 3); they are used as given, not "
                        "clipped"]
    np.testing.assert_array_equal(out["psfs"], psfs)  # not clipped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_inputs(IMAGES, PSFS)  # a clean stack warns about nothing


def test_psf_sum_warning_is_kept():
    with pytest.warns(GalDeconWarning, match=r"p\.npy: 4 PSF\(s\) do not sum to 1 \(first: "
                                             r"PSF 0 sums to 2\)"):
        prepare_inputs(IMAGES, PSFS * 2, names={"psfs": "p.npy"})


@pytest.mark.parametrize("images, psfs, expected", [
    (np.ones(5), PSFS, r"image stack has 1 dimensions, shape \(5,\); expected 2 \(one image\) "
                       r"or 3 \(n, N0, N1\)"),
    (np.ones((2, 2, 9, 9)), PSFS, r"image stack has 4 dimensions, shape \(2, 2, 9, 9\)"),
    (np.ones((0, 9, 9)), PSFS, r"image stack is empty, shape \(0, 9, 9\)"),
    (np.ones((4, 0, 9)), PSFS, r"image stack is empty, shape \(4, 0, 9\)"),
    (IMAGES, np.ones(5), r"PSFs have 1 dimensions, shape \(5,\); expected 2 \(one PSF for all\)"),
    (IMAGES, np.ones((4, 1, 5, 5)), r"PSFs have 4 dimensions"),
    (IMAGES, np.ones((4, 0, 5)), r"PSF array is empty, shape \(4, 0, 5\)"),
    (IMAGES, PSFS[:3], r"3 PSFs for 4 images; expected exactly one PSF per image"),
    (IMAGES, np.ones((4, 11, 5)), r"PSF shape \(11, 5\) is larger than the stamp \(9, 9\)"),
    ([[1.0, 2.0], [3.0]], PSFS, r"image stack cannot be made into an array \(ValueError: "),
    ([["a", "b"], ["c", "d"]], PSFS, r"data type <U1 is not supported"),
    (IMAGES * 1j, PSFS, r"data type complex128 is not supported"),
    (np.array([[None, 1.0]]), PSFS, r"holds a pickled/object array"),
    (IMAGES > 0.5, PSFS, r"data type bool is not supported"),
])
def test_shapes_and_types_through_prepare_inputs(images, psfs, expected):
    with pytest.raises(InputError, match=expected):
        prepare_inputs(images, psfs)


def test_truth_and_primal_shapes_through_the_api():
    with pytest.raises(InputError, match=r"^<truth array>: clean \(truth\) stack shape "
                                         r"\(4, 9, 8\) does not match the images \(4, 9, 9\)$"):
        galdecon.deconvolve(IMAGES, PSFS, truth=IMAGES[:, :, :8])
    with pytest.raises(InputError, match=r"^<primal array>: initial primal shape \(9, 9\) "
                                         r"does not match the images \(4, 9, 9\)$"):
        galdecon.deconvolve(IMAGES, PSFS, initial_primal=IMAGES[0])


def test_bad_output_stems(capsys, files):
    for stem in ("", "/", "."):
        with pytest.raises(OutputError, match="output stem has no file name"):
            io.output_paths(stem, "npy")
    with pytest.raises(OutputError, match=r"output stem contains a NUL byte"):
        io.output_paths("a\x00b", "npy")
    paths = io.output_paths(files / ("y" * 300), "npy")
    with pytest.raises(OutputError, match=r"not a usable output path \(OSError: \[Errno 36\] "
                                          r"File name too long"):
        io.check_outputs(paths, [files / "img.npy"], overwrite=False)
    (files / "o_primal.npy").mkdir()
    with pytest.raises(OutputError, match=r"o_primal\.npy: exists; pass --overwrite"):
        io.check_outputs(io.output_paths(files / "o", "npy"), [], overwrite=False)
    with pytest.raises(OutputError, match=r"o_primal\.npy: cannot be written \(Is a directory\)"):
        io.write_array(files / "o_primal.npy", IMAGES, "npy")
    assert sorted(p.name for p in files.iterdir()) == ["img.npy", "o_primal.npy", "psf.npy"]
    # -o naming a directory ("/" included) writes inside it (issue 11): /proc takes no file
    line = cli_error(capsys, "-i", files / "img.npy", "-p", files / "psf.npy", "-o", "/proc/")
    assert line.startswith("galdecon: error: /proc: output directory is not writable")


# -- option files: parsed as data, never executed or expanded -----------------------------

SHELL_PAYLOADS = [
    ("--mode $(touch {marker})", "invalid choice: '$(touch'"),
    ("--mode `touch {marker}`", "invalid choice: '`touch'"),
    ("--n-iter 3; touch {marker}", "expected an integer, got '3;'"),
    ("--n-iter 3 && touch {marker}", "unrecognized arguments: && touch {marker}"),
    ("--n-iter 3 | touch {marker}", "unrecognized arguments: | touch {marker}"),
]


@pytest.mark.parametrize("line, expected", SHELL_PAYLOADS)
def test_option_file_shell_syntax_is_literal(tmp_path, capsys, files, line, expected):
    marker = tmp_path / "executed"
    text = line.format(marker=marker)
    # Control: a shell would run the payload and create the marker.
    subprocess.run(["sh", "-c", ": " + text], check=False, capture_output=True, timeout=30)
    assert marker.exists()
    marker.unlink()
    options = tmp_path / "opts.txt"
    options.write_text(f"-i {files / 'img.npy'}\n-p {files / 'psf.npy'}\n-o {tmp_path / 'o'}\n"
                       f"{text}\n")
    error = cli_error(capsys, f"@{options}")
    assert expected.format(marker=marker) in error
    assert not marker.exists()
    assert not list(tmp_path.glob("o_*"))


def test_option_file_variables_globs_and_python_stay_literal(tmp_path, capsys, files,
                                                             monkeypatch):
    monkeypatch.setenv("HOME", str(files))
    monkeypatch.setenv("GALDECON_EVIL", "EXPANDED")
    monkeypatch.chdir(files)  # where '*.npy' would match img.npy and psf.npy
    marker = tmp_path / "executed"
    options = tmp_path / "opts.txt"
    cases = [
        ("-i $HOME/img.npy -p psf.npy", "$HOME/img.npy: file not found"),
        ("-i ${GALDECON_EVIL}.npy -p psf.npy", "${GALDECON_EVIL}.npy: file not found"),
        ("-i *.npy -p psf.npy", "*.npy: file not found"),
        ("-i img.npy -p psf.npy -o ~/out", "output directory"),
        ("-i img.npy -p psf.npy --noise-est \"__import__('os').system('touch " + str(marker)
         + "')\"", "expected a number > 0, global, per-image or border, got "
                    "\"__import__('os').system('touch"),
        ("-i img.npy -p psf.npy --relax 1+1", "invalid float value: '1+1'"),
        ("-i img.npy -p psf.npy --n-iter '2**64'", "expected an integer, got '2**64'"),
        ("-i img.npy -p psf.npy --evil-option $(id)", "unrecognized arguments: --evil-option "
                                                      "$(id)"),
    ]
    for text, expected in cases:
        options.write_text(text + "  # a comment: $(touch " + str(marker) + ")\n")
        error = cli_error(capsys, f"@{options}")
        assert expected in error, (text, error)
        assert "EXPANDED" not in error
        assert not marker.exists()
    options.write_text("-i img.npy -p psf.npy -o ~/out\n")
    error = cli_error(capsys, f"@{options}")
    assert f"{files / '~'} does not exist" in error  # '~' is a directory name, not home
    assert not list(files.glob("*_primal.npy"))


def test_option_file_quotes_and_comments(tmp_path, capsys):
    options = tmp_path / "opts.txt"
    options.write_text("# a comment line\n-i 'my images.npy'  # trailing comment\n"
                       "-p \"it's a psf.npy\"\n")
    error = cli_error(capsys, f"@{options}")
    assert error == "galdecon: error: my images.npy: file not found"
    options.write_text("-i 'unclosed\n")
    error = cli_error(capsys, f"@{options}")
    assert error == "galdecon: error: option file line \"-i 'unclosed\": No closing quotation"
    error = cli_error(capsys, f"@{tmp_path / 'missing.txt'}")
    assert "No such file or directory" in error and "missing.txt" in error


def test_option_file_with_invalid_utf8(tmp_path, capsys):
    options = tmp_path / "opts.txt"
    options.write_bytes(b"-i \xff\xfe.npy\n")
    error = cli_error(capsys, f"@{options}")
    assert error == (f"galdecon: error: option file {options}: not UTF-8 text (invalid start "
                     "byte at byte 3)")


def test_option_file_that_includes_itself(tmp_path, capsys):
    options = tmp_path / "opts.txt"
    options.write_text(f"@{options}\n")
    error = cli_error(capsys, f"@{options}")
    assert error == (f"galdecon: error: option file {options}: option files nested more than "
                     "8 deep (does one include itself?)")


# -- the header-only check and the memory estimate --------------------------------------

def test_peek_shape_reads_headers_only(tmp_path):
    np.save(tmp_path / "a.npy", IMAGES.astype(">f4"))
    assert io.peek_shape(tmp_path / "a.npy") == ((4, 9, 9), np.dtype("f4"))
    (tmp_path / "b.fits").write_bytes(fits_bytes(fits.PrimaryHDU(),
                                                 fits.ImageHDU(PSFS, name="PSF")))
    assert io.peek_shape(tmp_path / "b.fits") == ((4, 5, 5), np.dtype("f8"))
    assert io.peek_shape(f"{tmp_path / 'b.fits'}[PSF]") == ((4, 5, 5), np.dtype("f8"))


def test_huge_truncated_npy_header_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.npy"
    path.write_bytes(npy_with_header(
        "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000, 41, 41), }"))
    assert path.stat().st_size == 128
    expected = (f"{path}: truncated: its header promises a 1000000000×41×41 float64 array "
                "(13,448,000,000,000 bytes of data) but the file holds only 0 bytes after the "
                "128-byte header")
    start = time.perf_counter()
    for reader in (io.peek_shape, io.read_array):
        with pytest.raises(InputError) as info:
            reader(path)
        assert str(info.value) == expected
    assert time.perf_counter() - start < 5


def _sparse_file(path: Path, header: bytes, data_bytes: int) -> None:
    path.write_bytes(header)
    try:
        os.truncate(path, len(header) + data_bytes)  # a hole: no disk space used
    except OSError as exc:
        pytest.skip(f"this file system cannot hold a sparse file of {data_bytes} bytes ({exc})")


def test_huge_consistent_npy_is_refused_by_the_memory_check(tmp_path, caplog):
    n = 10**8  # 1.3 TB of float64 stamps 41×41, as a sparse file of a few hundred bytes
    path = tmp_path / "huge.npy"
    _sparse_file(path, npy_with_header(
        f"{{'descr': '<f8', 'fortran_order': False, 'shape': ({n}, 41, 41), }}"), n * 41 * 41 * 8)
    assert os.stat(path).st_blocks * 512 < 1 << 20
    shape, dtype = io.peek_shape(path)
    assert shape == (n, 41, 41) and dtype == np.float64
    estimate = preflight.estimate_bytes(shape[0], shape[1:], (41, 41), False, "sparse", 3, dtype)
    assert estimate["description"] == "a run on 100,000,000 stamps 41×41 (sparse, float64)"
    with pytest.raises(ConfigError) as info:
        preflight.check_memory(estimate, force=False, what=estimate["description"],
                            available=21 * 2**30)
    assert str(info.value) == ("a run on 100,000,000 stamps 41×41 (sparse, float64) needs about "
                               f"{memory.format_bytes(estimate['peak'])}; this machine has "
                               "21.0 GiB available; pass --force to run anyway")
    assert memory.format_bytes(estimate["peak"]).endswith("TiB")
    with pytest.raises(ConfigError, match=r"needs about [\d.]+ TiB; this machine has [\d.]+ "
                                          r"[GMT]iB available; pass --force"):
        preflight.check_memory(estimate, force=False, what=estimate["description"])
    with caplog.at_level("WARNING", logger="galdecon"):
        preflight.check_memory(estimate, force=True, what="this run", available=21 * 2**30)
    assert "this run needs about" in caplog.text and "running anyway (--force)" in caplog.text
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"huge\.npy: reading its 100000000×41×41 float64 array "
                                          r"needs 1\.2 TiB; this machine has .* available"):
        io.read_array(path)  # refused before allocating 1.2 TiB
    assert time.perf_counter() - start < 5


def test_check_inputs_estimates_from_headers(tmp_path, caplog):
    n = 10**8
    huge = tmp_path / "huge.npy"
    _sparse_file(huge, npy_with_header(
        f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({n}, 41, 41), }}"), n * 41 * 41 * 4)
    psf = tmp_path / "psf.fits"
    fits.PrimaryHDU(np.full((41, 41), 1 / 41**2, dtype=np.float32)).writeto(psf)
    settings = galdecon.Settings(dtype="float32", mode="lowr")
    with pytest.raises(ConfigError, match=r"^a run on 100,000,000 stamps 41×41 \(lowr, "
                                          r"float32\) needs about [\d.]+ TiB; this machine has "
                                          r".* available; pass --force to run anyway$"):
        preflight.check_inputs(huge, psf, settings)
    with caplog.at_level("WARNING", logger="galdecon"):
        est = preflight.check_inputs(huge, psf, settings, force=True, threads=2)
    assert "running anyway (--force)" in caplog.text
    assert est["shared_psf"] and est["mode"] == "lowr" and est["dtype"] == "float32"
    assert est["parts"]["images"] == n * 41 * 41 * 4 and est["parts"]["psfs"] == 41 * 41 * 4
    np.save(tmp_path / "img.npy", IMAGES)
    np.save(tmp_path / "psf.npy", PSFS)
    small = preflight.check_inputs(tmp_path / "img.npy", tmp_path / "psf.npy", galdecon.Settings(),
                                truth=tmp_path / "img.npy")
    assert small["n_images"] == 4 and small["parts"]["truth"] == IMAGES.nbytes
    np.save(tmp_path / "flat.npy", np.ones(5))
    assert preflight.check_inputs(tmp_path / "flat.npy", tmp_path / "psf.npy",
                               galdecon.Settings()) is None  # the validation says why later
    (tmp_path / "cut.npy").write_bytes(npy_bytes(IMAGES)[:-10])
    with pytest.raises(InputError, match=r"cut\.npy: truncated"):
        preflight.check_inputs(tmp_path / "cut.npy", tmp_path / "psf.npy", galdecon.Settings())


def test_huge_consistent_fits_is_refused_before_reading(tmp_path):
    n = 10**8
    header = fits.Header([("SIMPLE", True), ("BITPIX", -64), ("NAXIS", 3), ("NAXIS1", 41),
                          ("NAXIS2", 41), ("NAXIS3", n)])
    path = tmp_path / "huge.fits"
    _sparse_file(path, header.tostring().encode(), n * 41 * 41 * 8)
    assert io.peek_shape(path) == ((n, 41, 41), np.dtype("f8"))
    with pytest.raises(ConfigError, match=r"huge\.fits: reading its 100000000×41×41 float64 "
                                          r"array needs 1\.2 TiB"):
        io.read_array(path)
    with pytest.raises(ConfigError, match=r"needs 1\.2 TiB; this machine has 1\.0 GiB"):
        _ = io.check_size_limit(path, (n, 41, 41), np.dtype("f8"), 2**30)


@pytest.mark.parametrize("module", [memory, preflight])
def test_memory_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_estimate_counts_the_arrays_of_a_run():
    n, shape = 10, (8, 8)
    p = 64
    est = preflight.estimate_bytes(n, shape, (5, 5), False, "sparse", 3, "float64", threads=1,
                                noise_given=True)
    assert est["parts"]["state"] == n * p * 8 + n * 3 * p * 8  # primal + dual
    assert est["parts"]["weights"] == n * 3 * p * 8  # full-size after reweighting
    assert est["parts"]["images"] == n * p * 8 and est["parts"]["psfs"] == n * 25 * 8
    spectrum = 8 * 5  # rfft2 of 8×8
    assert est["parts"]["operators"] == n * 2 * spectrum * 16 + n * spectrum * (16 + 24)
    assert est["peak"] == math.ceil(est["counted"] * 1.2)
    assert est["counted"] == max(est["phases"].values())
    no_reweight = preflight.estimate_bytes(n, shape, (5, 5), False, "sparse", 3, "float64",
                                        threads=1, noise_given=True, n_reweights=0)
    assert no_reweight["parts"]["weights"] == n * 3 * 8
    lowr = preflight.estimate_bytes(n, shape, (5, 5), False, "lowr", 3, "float64", threads=1)
    assert lowr["parts"]["state"] == 2 * n * p * 8
    # n < p: the rows joined once (no QR), the SVD's factor, vectors and work
    assert lowr["parts"]["low_rank_matrix"] == n * p * 8 + 3 * n * p * 8
    many = preflight.estimate_bytes(100, shape, (5, 5), False, "lowr", 3, "float64", threads=1)
    # n > p: 100 rows stacked and copied for one QR at the end; the SVD of the p × p R
    assert many["parts"]["low_rank_matrix"] == 2 * 100 * p * 8 + 3 * p * p * 8
    f32 = preflight.estimate_bytes(n, shape, (5, 5), True, "sparse", 3, "float32", threads=1)
    assert f32["parts"]["state"] == est["parts"]["state"] // 2 and f32["parts"]["psfs"] == 100
    spark = preflight.estimate_bytes(10**6, (41, 41), (41, 41), False, "sparse", 3, "float64",
                                  engine="spark", threads=2)
    # far beyond the default heap: every tile on the local disks, none in the JVM
    assert spark["disk"] > 10**6 * 41 * 41 * 8 * 6 and spark["parts"]["spark_jvm_cache"] == 0
    small = preflight.estimate_bytes(1000, (41, 41), (41, 41), False, "sparse", 3, "float64",
                                     engine="spark", threads=2)
    assert small["disk"] == 0 and small["parts"]["spark_jvm_cache"] > 1000 * 41 * 41 * 8 * 6
    assert spark["description"].endswith("(sparse, float64, Spark)")


def test_estimate_counts_only_the_threads_that_have_a_block(tmp_path, capsys):
    # 100 stamps are two blocks of 64: --threads 10000 runs two threads, and was refused
    # as needing 115.8 GiB (the real peak: 111 MB).
    args = (100, (41, 41), (41, 41), False, "sparse", 3, "float64")
    many = preflight.estimate_bytes(*args, threads=10000)
    two = preflight.estimate_bytes(*args, threads=2)
    assert many["parts"] == two["parts"] and many["peak"] == two["peak"] < 2**30
    assert preflight.estimate_bytes(*args, threads=1)["peak"] < two["peak"]
    out = tmp_path / "run"
    example = Path(__file__).resolve().parents[2] / "data" / "sf_deconvolve_example"
    assert main(["deconvolve", "-i", str(example / "example_image_stack.npy"),
                 "-p", str(example / "example_psfs.npy"), "-o",
                 str(out), "--threads", "10000", "--n-iter", "2", "--no-plots", "-q"]) == 0
    assert "GiB" not in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, expected", [
    (dict(n_images=0), "n_images=0: expected an integer >= 1"),
    (dict(stamp_shape=(41,)), r"stamp_shape=\(41,\): expected two sizes"),
    (dict(mode="dense"), "mode='dense': expected one of sparse, lowr"),
    (dict(engine="gpu"), "engine='gpu': expected one of local, spark"),
    (dict(dtype="int32"), "dtype=int32: expected float64 or float32"),
    (dict(dtype="nonsense"), "unknown dtype"),
])
def test_estimate_rejects_bad_arguments(kwargs, expected):
    args = dict(n_images=10, stamp_shape=(8, 8), psf_shape=(5, 5), shared_psf=False,
                mode="sparse", n_bands=3, dtype="float64") | kwargs
    with pytest.raises(ConfigError, match=expected):
        preflight.estimate_bytes(**args)


@pytest.mark.parametrize("options", [dict(mode="sparse", n_reweights=1),
                                     dict(mode="lowr", dtype="float32")])
def test_estimate_matches_what_a_run_allocates(options):
    n, shape = 300, (41, 41)
    images = RNG.random((n,) + shape)
    psfs = RNG.random((n, 41, 41)).astype(np.float32)
    psfs /= psfs.sum(axis=(1, 2), keepdims=True, dtype=np.float32)
    tracemalloc.start()
    try:
        galdecon.deconvolve(images, psfs, n_iter=2, threads=2, **options)
        measured = tracemalloc.get_traced_memory()[1] + images.nbytes + psfs.nbytes
    finally:
        tracemalloc.stop()
    est = preflight.estimate_bytes(n, shape, (41, 41), False, options["mode"], 3,
                                options.get("dtype", "float64"), threads=2,
                                n_reweights=options.get("n_reweights", 0),
                                input_dtype=images.dtype, psf_dtype=psfs.dtype)
    assert 0.85 * measured <= est["counted"] <= 1.3 * measured, (measured, est["phases"])
    assert est["peak"] >= measured


def test_check_memory_message_and_available_bytes(monkeypatch):
    estimate = {"peak": int(54.3 * 2**30), "description": "a run"}
    with pytest.raises(ConfigError) as info:
        preflight.check_memory(estimate, False, "a run on 1,000,000 stamps 41×41 (sparse, float64)",
                            available=21 * 2**30)
    assert str(info.value) == ("a run on 1,000,000 stamps 41×41 (sparse, float64) needs about "
                               "54.3 GiB; this machine has 21.0 GiB available; pass --force to "
                               "run anyway")
    assert preflight.check_memory(estimate, False, None, available=55 * 2**30) is None
    with pytest.raises(ConfigError, match="^a run needs about 54.3 GiB"):
        preflight.check_memory(estimate, False, None, available=1)
    psutil = pytest.importorskip("psutil")
    total = psutil.virtual_memory().total
    with_psutil = memory.available_bytes()
    assert 0 < with_psutil <= total
    monkeypatch.setitem(__import__("sys").modules, "psutil", None)  # import psutil now fails
    without = memory.available_bytes()
    assert 0 < without <= total and abs(without - with_psutil) < 0.1 * total
    assert [memory.format_bytes(v) for v in (5, 2048, 3 * 2**30, 2**50)] == [
        "5 B", "2.0 KiB", "3.0 GiB", "1.0 PiB"]


# -- property-based fuzzing -----------------------------------------------------------------

VALID_NPY = npy_bytes(RNG.random((2, 4, 4)))
VALID_FITS = fits_bytes(fits.PrimaryHDU(RNG.random((2, 4, 4))),
                        fits.ImageHDU(RNG.random((2, 4, 4)).astype(np.float32), name="SCI"))
VALID_RICE = fits_bytes(fits.PrimaryHDU(), fits.CompImageHDU(
    (RNG.random((2, 4, 4)) * 100).astype(np.float32), name="SCI"))  # tile-compressed
BASES = {"npy": (".npy", VALID_NPY), "fits": (".fits", VALID_FITS),
         "rice": (".fits", VALID_RICE), "gz": (".fits.gz", gzip.compress(VALID_FITS))}

MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**20), st.integers(0, 7)),
    st.tuples(st.just("cut"), st.integers(0, 2**20)),
    st.tuples(st.just("insert"), st.integers(0, 2**20), st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("overwrite"), st.integers(0, 2**20), st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("digit"), st.integers(0, 2**20), st.sampled_from("0123456789-")),
)


def mutate(data: bytes, ops) -> bytes:
    """Apply bit flips, truncations, insertions, overwrites and header-digit edits."""
    buf = bytearray(data)
    for op in ops:
        if not buf:
            break
        at = op[1] % len(buf)
        if op[0] == "flip":
            buf[at] ^= 1 << op[2]
        elif op[0] == "cut":
            del buf[at:]
        elif op[0] == "insert":
            buf[at:at] = op[2]
        elif op[0] == "overwrite":
            buf[at:at + len(op[2])] = op[2]
        else:  # a digit of the header text: sizes that disagree with the data
            digits = [i for i, b in enumerate(buf[:2880]) if 48 <= b <= 57]
            if digits:
                buf[digits[at % len(digits)]] = ord(op[2])
    return bytes(buf)


def check_read_outcome(path: Path) -> None:
    """Reading gives a valid real array or a GalDeconError naming the file; so does validation."""
    before = path.read_bytes()
    try:
        array = io.read_array(path, max_bytes=1 << 26)
    except GalDeconError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc), str(exc)
        return
    finally:
        assert path.read_bytes() == before
    assert isinstance(array, np.ndarray) and array.dtype.kind in "fiu" and array.dtype.isnative
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GalDeconWarning)
        try:
            out = prepare_inputs(array, np.ones((1, 1)), names={"images": str(path)})
        except GalDeconError as exc:
            assert str(path) in str(exc)
        else:
            assert out["images"].ndim == 3 and np.isfinite(out["images"]).all()
        if array.ndim in (2, 3) and array.size:
            stamps = np.ones((array.shape[0] if array.ndim == 3 else 1, 8, 8))
            try:
                out = prepare_inputs(stamps, array, names={"psfs": str(path)})
            except GalDeconError as exc:
                assert str(path) in str(exc)
            else:
                assert np.isfinite(out["psfs"]).all() and out["psfs"].any()


FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(base=st.sampled_from(sorted(BASES)), ops=st.lists(MUTATION, min_size=1, max_size=4))
def test_fuzz_mutated_files(base, ops):
    suffix, data = BASES[base]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("m" + suffix)
        path.write_bytes(mutate(data, ops))
        check_read_outcome(path)


@settings(max_examples=60, deadline=2000)
@given(suffix=st.sampled_from([".npy", ".fits", ".fits.gz"]), data=st.binary(max_size=6000))
def test_fuzz_random_bytes(suffix, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("r" + suffix)
        head = {".npy": b"\x93NUMPY\x01\x00", ".fits": b"SIMPLE  = ", ".fits.gz": b""}[suffix]
        path.write_bytes(head + data)
        check_read_outcome(path)


TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
               max_size=24)
OPTION_WORDS = st.sampled_from([
    "-i", "-p", "-o", "-k", "-c", "-m", "--mode", "sparse", "lowr", "--n-iter", "--n_iter",
    "3", "0", "-1", "1e9", "nan", "inf", "auto", "--condat-tau", "--wave-thresh-factor",
    "--n-scales", "--engine", "spark", "--pn", "--threads", "--dtype", "float32", "--progress",
    "--no-progress", "-q", "-v", "-vv", "--help", "--version", "--", "-", "@", "@nope.txt",
    "deconvolve", "simulate", "evaluate", "bench", "--relax=1.5", "--n-iter=", "-i=", "'",
    '"', "\\", "#", "$(touch {marker})", "`touch {marker}`", "; touch {marker}", "*", "~",
    "$HOME", "é", "日本", "\u2028", "\r",
])
ARGUMENT = st.one_of(OPTION_WORDS, TEXT)


def parse_outcome(call) -> None:
    """The parser either parses, or raises ConfigError, or exits with status 0 or 2."""
    out, err = stdio.StringIO(), stdio.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            result = call()
    except ConfigError:
        return
    except SystemExit as exc:
        assert exc.code in (0, 2, None), exc.code
        return
    if isinstance(result, int):
        assert result in (0, 2), (result, err.getvalue())


@settings(max_examples=150, deadline=2000)
@given(args=st.lists(ARGUMENT, max_size=12))
def test_fuzz_parse_args(args):
    parse_outcome(lambda: build_parser().parse_args(args))


LINE = st.lists(st.one_of(OPTION_WORDS, TEXT), max_size=6).map(
    lambda words: " ".join(words) if len(words) % 2 else shlex.join(words))


@settings(max_examples=120, deadline=2000)
@given(lines=st.lists(st.one_of(LINE, TEXT), max_size=6))
def test_fuzz_option_files(lines):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        options = tmp / "opts.txt"
        text = "\n".join(lines).replace("{marker}", str(tmp / "marker"))
        options.write_text(text, encoding="utf-8")
        argv = ["deconvolve", "-i", str(tmp / "missing.npy"), "-p", str(tmp / "missing.fits"),
                "-o", str(tmp / "out"), "--no-plots", f"@{options}"]
        parse_outcome(lambda: main(argv))
        # Nothing written, and no '$(touch marker)' run.
        assert sorted(p.name for p in tmp.iterdir()) == ["opts.txt"]
