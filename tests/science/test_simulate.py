"""Simulated data with known truth: reproducibility, the SNR definition, PSFs, the file."""

import hashlib
import json

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")

from galdecon.cli import app as cli  # noqa: E402
from galdecon.core.operators import Convolution  # noqa: E402
from galdecon.errors import ConfigError, InputError  # noqa: E402
from galdecon.science.dataset import export_npy, read_dataset, read_truth, write_dataset  # noqa: E402
from galdecon.science.simulate import Population, draw_psf, simulate  # noqa: E402

N = 41


@pytest.fixture(scope="module")
def dataset():
    """40 galaxies, field PSFs, SNR 1 2 3 5 10, a quarter of them clumpy."""
    return simulate(40, seed=11, workers=1, population=Population(clumpy_fraction=0.25))


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    first = write_dataset(tmp_path / "a.npz", simulate(6, seed=3, workers=1))
    again = write_dataset(tmp_path / "b.npz", simulate(6, seed=3, workers=1, chunk_size=4))
    other = write_dataset(tmp_path / "c.npz", simulate(6, seed=4, workers=1))
    assert _digest(first) == _digest(again)
    assert _digest(first) != _digest(other)


def test_result_does_not_depend_on_workers_chunks_or_n(dataset):
    parallel = simulate(6, seed=11, workers=2, chunk_size=3,
                        population=Population(clumpy_fraction=0.25))
    for key in ("truth", "psfs", "clean", "sigma"):
        np.testing.assert_array_equal(parallel[key], dataset[key][:6])
    for level in dataset["snr"]:
        np.testing.assert_array_equal(parallel["noisy"][level], dataset["noisy"][level][:6])
    np.testing.assert_array_equal(parallel["catalogue"], dataset["catalogue"][:6])


def test_observation_is_galdecons_discrete_model(dataset):
    clean = Convolution(dataset["psfs"], (N, N), "periodic").op(dataset["truth"])
    np.testing.assert_array_equal(dataset["clean"], clean)
    assert dataset["truth"].shape == dataset["psfs"].shape == (40, N, N)
    assert set(dataset["noisy"]) == {1.0, 2.0, 3.0, 5.0, 10.0}


def test_snr_definition_is_honoured(dataset):
    clean, snr, sigma = dataset["clean"], dataset["snr"], dataset["sigma"]
    std = clean.reshape(len(clean), -1).std(axis=1)
    np.testing.assert_allclose(sigma, std[:, None] / snr[None, :], rtol=1e-12)
    np.testing.assert_array_equal(dataset["catalogue"]["sigma"], sigma)
    for k, level in enumerate(snr):
        residual = (dataset["noisy"][level] - clean) / sigma[:, k, None, None]
        # 40 x 1681 pixels: the pooled std of unit noise is known to 0.3 %, so 1 % is a
        # real check of the scale (a wrong std, e.g. of the truth, is off by tens of %).
        assert residual.std() == pytest.approx(1.0, rel=0.01)
        assert abs(residual.mean()) < 0.01
        # and per galaxy (1681 pixels: 1.7 % standard error), within 6 standard errors
        per_galaxy = residual.reshape(len(clean), -1).std(axis=1)
        np.testing.assert_allclose(per_galaxy, 1.0, atol=0.1)
    # each level has its own noise, not a rescaled copy of another's
    a = (dataset["noisy"][1.0] - clean) / sigma[:, 0, None, None]
    b = (dataset["noisy"][10.0] - clean) / sigma[:, 4, None, None]
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.03


def test_psfs_are_normalised_centred_and_vary_across_the_field(dataset):
    psfs = dataset["psfs"]
    np.testing.assert_allclose(psfs.sum(axis=(1, 2)), 1.0, atol=1e-6)
    assert psfs.min() >= 0.0
    peaks = [np.unravel_index(np.argmax(p), p.shape) for p in psfs]
    assert all(peak == (N // 2, N // 2) for peak in peaks)
    k = np.arange(N)
    rows = np.einsum("nij,i->n", psfs, k)
    cols = np.einsum("nij,j->n", psfs, k)
    # coma moves the centroid (by < 1 pixel here); an unaberrated PSF is point-symmetric
    assert np.all(np.abs(rows - N // 2) < 1) and np.all(np.abs(cols - N // 2) < 1)
    perfect, _ = draw_psf({})
    assert np.unravel_index(np.argmax(perfect), perfect.shape) == (N // 2, N // 2)
    np.testing.assert_allclose(perfect, perfect[::-1, ::-1], atol=1e-12)
    # different field positions, different aberrations, different PSFs
    assert np.ptp(dataset["catalogue"]["defocus"]) > 0.01
    assert np.abs(psfs[0] - psfs[1]).max() > 1e-3 * psfs.max()
    cat = dataset["catalogue"]
    assert np.all((cat["psf_flux_in_stamp"] > 0.9) & (cat["psf_flux_in_stamp"] <= 1.0))


def test_diffraction_psf_matches_a_finely_sampled_galsim_psf():
    aberrations = {"defocus": 0.05, "astig1": 0.03, "astig2": -0.02, "coma1": 0.02,
                   "coma2": 0.0}
    psf, _ = draw_psf(aberrations)
    fine = galsim.OpticalPSF(lam=725.0, diam=1.2, obscuration=0.3, nstruts=3,
                             strut_thick=0.05, oversampling=2, pad_factor=2, **aberrations)
    reference = fine.drawImage(nx=N, ny=N, scale=0.05, method="no_pixel",
                               dtype=np.float64).array
    reference /= reference.sum()
    assert np.abs(psf - reference).max() < 0.005 * reference.max()


def test_truth_is_unit_flux_positive_and_centred(dataset):
    truth, cat = dataset["truth"], dataset["catalogue"]
    np.testing.assert_allclose(truth.sum(axis=(1, 2)), 1.0, rtol=1e-12)
    assert truth.min() >= 0.0
    k = np.arange(N)
    rows = np.einsum("nij,i->n", truth, k)
    cols = np.einsum("nij,j->n", truth, k)
    # centroid = stamp centre + the sub-pixel offset (within the wings' truncation), except
    # for clumpy galaxies, whose random knots move it
    smooth = ~cat["clumpy"]
    np.testing.assert_allclose(rows[smooth], N // 2 + cat["dy"][smooth], atol=0.3)
    np.testing.assert_allclose(cols[smooth], N // 2 + cat["dx"][smooth], atol=0.3)
    assert np.all(cat["e"] <= 0.7) and np.all(np.abs(cat["dx"]) <= 0.5)
    assert 0.12 < np.median(cat["hlr"]) < 0.25
    assert 0 < cat["clumpy"].sum() < 40


def test_psf_bank_and_psf_file(example_psfs):
    bank = simulate(12, seed=5, psf_bank=3, workers=1, snr=(10,))
    assert len(np.unique(bank["psfs"].reshape(12, -1), axis=0)) <= 3
    assert set(bank["catalogue"]["psf_index"]) <= {0, 1, 2}
    given = simulate(12, seed=5, psfs=example_psfs, workers=1, snr=(10,))
    for psf, index in zip(given["psfs"], given["catalogue"]["psf_index"], strict=True):
        np.testing.assert_array_equal(psf, example_psfs[index])
    assert np.isnan(given["catalogue"]["field_x"]).all()
    assert np.isnan(given["catalogue"]["defocus"]).all()
    # the galaxies do not depend on where the PSFs come from
    np.testing.assert_array_equal(bank["truth"], given["truth"])


def test_file_round_trip_and_errors(tmp_path, dataset):
    path = write_dataset(tmp_path / "d.npz", dataset)
    back = read_dataset(path)
    for key in ("truth", "psfs", "clean", "snr", "sigma", "catalogue"):
        np.testing.assert_array_equal(back[key], dataset[key])
    for level in dataset["snr"]:
        np.testing.assert_array_equal(back["noisy"][level], dataset["noisy"][level])
    assert back["meta"]["seed"] == 11 and back["meta"]["psf_mode"] == "field"
    np.testing.assert_array_equal(read_truth(path), dataset["truth"])
    np.savez(tmp_path / "other.npz", truth=dataset["truth"])
    with pytest.raises(InputError, match="missing"):
        read_dataset(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="junk.npz"):
        read_dataset(tmp_path / "junk.npz")
    with pytest.raises(ConfigError):
        simulate(3, snr=(1, -2))


def test_export_npy_feeds_deconvolve(tmp_path, dataset):
    written = export_npy(dataset, tmp_path / "npy")
    names = {p.name for p in written}
    assert {"truth.npy", "psfs.npy", "noisy_snr1.npy", "noisy_snr10.npy"} <= names
    np.testing.assert_array_equal(np.load(tmp_path / "npy" / "noisy_snr3.npy"),
                                  dataset["noisy"][3.0])
    header = (tmp_path / "npy" / "catalogue.csv").read_text().splitlines()[0]
    assert "sigma_snr10" in header


def run_cli(*argv):
    """The ``galdecon`` command, in process."""
    return cli.main([str(a) for a in argv])


def test_cli_simulate(tmp_path, capsys):
    out = tmp_path / "sim.npz"
    assert run_cli("simulate", "-n", 5, "-o", out, "--seed", 2, "--snr", 2, 10,
                   "--psf-bank", 2, "--export-npy", tmp_path / "npy") == 0
    text = capsys.readouterr().out
    assert "5 galaxies" in text and "noisy_snr10.npy" in text
    data = read_dataset(out)
    assert list(data["snr"]) == [2.0, 10.0] and data["meta"]["psf_bank"] == 2
    assert run_cli("simulate", "-n", 5, "-o", out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run_cli("simulate", "-n", 5, "-o", tmp_path / "x.npy") == 2
    assert run_cli("simulate", "-n", 5, "-o", out, "--snr", 0) == 2
    assert run_cli("simulate", "-n", 5, "-o", tmp_path / "y.npz", "--psf-file",
                   tmp_path / "missing.npy") == 2
    assert "missing.npy: file not found" in capsys.readouterr().err
    meta = json.loads(str(np.load(out)["meta"]))
    assert meta["seed"] == 2
