"""Simulated data with known truth: reproducibility, the SNR definition, PSFs, the file."""

import dataclasses
import hashlib
import json

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")

from galdecon.cli import app as cli  # noqa: E402
from galdecon.core.operators import Convolution  # noqa: E402
from galdecon.errors import ConfigError, InputError  # noqa: E402
from galdecon.science.dataset import export_npy, read_dataset, read_truth, write_dataset  # noqa: E402
from galdecon.science.population import (  # noqa: E402
    centre_offset,
    field_aberrations,
    galaxy_parameters,
    psf_profile,
    scene_components,
)
from galdecon.science.render import galaxy_fluxes  # noqa: E402
from galdecon.science.simulate import (  # noqa: E402
    BULGE_DISK,
    Population,
    default_population,
    draw_psf,
    simulate,
)

N = 41


@pytest.fixture(scope="module")
def dataset():
    """The discrete model: 40 galaxies, field PSFs, SNR 1 2 3 5 10, a quarter clumpy."""
    return simulate(40, seed=11, workers=1, model="discrete",
                    population=dataclasses.replace(BULGE_DISK, clumpy_fraction=0.25))


@pytest.fixture(scope="module")
def rendered():
    """GalSim's render (the default): 16 galaxies, many with knots and many blends."""
    return simulate(16, seed=5, workers=1, snr=(3, 10),
                    population=Population(clumpy_fraction=0.4, blend_fraction=0.4))


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    first = write_dataset(tmp_path / "a.npz", simulate(6, seed=3, workers=1))
    again = write_dataset(tmp_path / "b.npz", simulate(6, seed=3, workers=1, chunk_size=4))
    other = write_dataset(tmp_path / "c.npz", simulate(6, seed=4, workers=1))
    assert _digest(first) == _digest(again)
    assert _digest(first) != _digest(other)


def test_result_does_not_depend_on_workers_chunks_or_n(dataset):
    parallel = simulate(6, seed=11, workers=2, chunk_size=3, model="discrete",
                        population=dataclasses.replace(BULGE_DISK, clumpy_fraction=0.25))
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
    bank = simulate(12, seed=5, psf_bank=3, workers=1, snr=(10,))  # GalSim's render
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
    assert back["meta"]["model"] == "discrete" and back["meta"]["noise_mode"] == "snr"
    with np.load(path) as members:  # the sigma of every galaxy at each level, by name
        for k, level in enumerate(dataset["snr"]):
            np.testing.assert_array_equal(members[f"sigma_snr{level:g}"],
                                          dataset["sigma"][:, k])
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


# -- GalSim's render, the default --------------------------------------------------------

def _rows(data):
    """The catalogue rows of a data set as dicts."""
    cat = data["catalogue"]
    return [{name: cat[name][i] for name in cat.dtype.names} for i in range(len(cat))]


def test_default_render_is_galsims_convolution_of_the_profiles(rendered):
    population = Population(clumpy_fraction=0.4, blend_fraction=0.4)
    assert rendered["meta"]["model"] == "galsim"
    for i, row in enumerate(_rows(rendered)):
        params = galaxy_parameters(5, i, population)
        galaxy = galsim.Add(scene_components(params, population))
        psf = psf_profile(field_aberrations(params["field_x"], params["field_y"]))
        # GalSim's own drawImage of the convolved profile, the pixel applied once
        observed = galsim.Convolve([galaxy, psf]).drawImage(
            nx=N, ny=N, scale=0.05, dtype=np.float64, offset=centre_offset(N)).array
        np.testing.assert_allclose(rendered["clean"][i] * row["flux_in_stamp"], observed,
                                   rtol=0, atol=1e-12 * observed.max())
        assert row["blend"] == params["blend"] and row["clumpy"] == params["clumpy"]
    # the light the truncated PSF loses from the stamp is lost from the observation
    lost = rendered["clean"].sum(axis=(1, 2))
    assert np.all(lost < 0.97) and np.all(lost > 0.85)


def _catalogue_truth(row, truth_fwhm):
    """A smooth galaxy's truth rebuilt from its catalogue row alone (not normalised)."""
    parts = [galsim.Sersic(row["sersic_n"], half_light_radius=row["hlr"])
             .shear(e1=row["e1"], e2=row["e2"]).shift(row["dx"] * 0.05, row["dy"] * 0.05)]
    if row["blend"]:
        parts.append(galsim.Sersic(row["blend_sersic_n"], half_light_radius=row["blend_hlr"],
                                   flux=row["blend_flux"])
                     .shear(e1=row["blend_e1"], e2=row["blend_e2"])
                     .shift(row["blend_dx"] * 0.05, row["blend_dy"] * 0.05))
    if truth_fwhm:
        parts = [galsim.Convolve(q, galsim.Gaussian(fwhm=truth_fwhm)) for q in parts]
    method = "auto" if truth_fwhm else "real_space"  # the pixel, integrated exactly
    return sum(q.drawImage(nx=N, ny=N, scale=0.05, dtype=np.float64, method=method,
                           offset=centre_offset(N)).array for q in parts)


@pytest.mark.parametrize("truth_fwhm", [0.07, 0.0])
def test_truth_is_the_galaxy_drawn_with_the_pixel(rendered, truth_fwhm):
    data = rendered if truth_fwhm else simulate(
        8, seed=5, snr=(10,), workers=1,
        population=Population(clumpy_fraction=0.4, blend_fraction=0.4, truth_fwhm=0.0,
                              knot_fwhm=0.05))
    rows = _rows(data)
    np.testing.assert_allclose(data["truth"].sum(axis=(1, 2)), 1.0, rtol=1e-12)
    assert data["meta"]["population"]["truth_fwhm"] == truth_fwhm
    smooth = [i for i, row in enumerate(rows) if not row["clumpy"]]
    assert smooth and any(rows[i]["blend"] for i in smooth)
    for i in smooth:
        truth = _catalogue_truth(rows[i], truth_fwhm)
        np.testing.assert_allclose(data["truth"][i] * rows[i]["flux_in_stamp"], truth,
                                   rtol=0, atol=1e-12 * truth.max())


def test_psf_image_is_unit_sum_drawn_without_the_pixel(rendered):
    psfs = rendered["psfs"]
    np.testing.assert_allclose(psfs.sum(axis=(1, 2)), 1.0, rtol=1e-12)
    for i, row in enumerate(_rows(rendered)[:4]):
        psf = psf_profile({k: row[k] for k in ("defocus", "astig1", "astig2", "coma1",
                                                "coma2")})
        sampled = psf.drawImage(nx=N, ny=N, scale=0.05, dtype=np.float64, method="no_pixel",
                                offset=centre_offset(N)).array
        np.testing.assert_array_equal(psfs[i], sampled / sampled.sum())
        assert row["psf_flux_in_stamp"] == sampled.sum()
        with_pixel = psf.drawImage(nx=N, ny=N, scale=0.05, dtype=np.float64,
                                   offset=centre_offset(N)).array
        # not the pixel-convolved PSF: that one's peak is lower by several per cent
        assert (with_pixel / with_pixel.sum()).max() < 0.97 * psfs[i].max()


# sha256 (16 hex digits) of the arrays the discrete model gives: `--model discrete` must
# keep giving them. The truth and PSFs are those of before GalSim's render existed; the
# clean images (and so σ and the noisy ones) follow galdecon's own convolution, whose DFTs
# became per-stamp dense products with the compiled loops (a rounding-level change, the
# same values to 1e-16): checked below against the convolution itself.
DISCRETE_DIGESTS = {
    "truth": "b6d9ed462cc4cf7c", "psfs": "15e65cec7b63aea1", "clean": "f59cad123ae167d7",
    "sigma": "e3f8e5d4d2dd96d9", "noisy2": "3b011746488d0eb7", "noisy10": "5daf082d69b9fa70",
}
DISCRETE_BANK_DIGESTS = {
    "truth": "e65e572080cd5d1d", "psfs": "4c06440ed4ac6577", "clean": "e22db888a478bad5",
    "sigma": "189009a6ab7bfd24", "noisy3": "45b35b22cde8f923",
}


def _array_digests(data):
    def digest(a):
        return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]

    out = {key: digest(data[key]) for key in ("truth", "psfs", "clean", "sigma")}
    return out | {f"noisy{level:g}": digest(data["noisy"][level]) for level in data["snr"]}


def test_discrete_model_reproduces_the_data_of_the_published_tables():
    assert default_population("discrete") == BULGE_DISK
    data = simulate(6, seed=3, snr=(2, 10), workers=1, model="discrete",
                    population=dataclasses.replace(BULGE_DISK, clumpy_fraction=0.5))
    assert _array_digests(data) == DISCRETE_DIGESTS
    from galdecon.core.operators.convolution import Convolution

    model = Convolution(data["psfs"], data["truth"].shape[1:], "periodic").op(data["truth"])
    np.testing.assert_allclose(data["clean"], model, rtol=0, atol=1e-15 * model.max())
    assert list(data["catalogue"]["clumpy"]) == [True] * 3 + [False] * 3
    bank = simulate(5, seed=4, snr=(3,), workers=1, psf_bank=2, model="discrete")
    assert _array_digests(bank) == DISCRETE_BANK_DIGESTS


def test_sky_noise_has_one_sigma_and_the_flux_spread_asked_for():
    snr = simulate(30, seed=8, snr=(3, 10), workers=1, model="discrete")
    sky = simulate(30, seed=8, snr=(3, 10), workers=1, model="discrete", noise="sky",
                   flux_dex=0.5)
    flux = sky["catalogue"]["flux"]
    np.testing.assert_array_equal(flux, galaxy_fluxes(8, 0, 30, 0.5))
    np.testing.assert_array_equal(snr["catalogue"]["flux"], 1.0)
    # the same galaxies, scaled by their fluxes
    np.testing.assert_array_equal(sky["truth"], snr["truth"] * flux[:, None, None])
    np.testing.assert_array_equal(sky["clean"], snr["clean"] * flux[:, None, None])
    signal = sky["clean"].reshape(30, -1).std(axis=1)
    for k, level in enumerate((3.0, 10.0)):
        sigma = sky["sigma"][:, k]
        assert np.all(sigma == sigma[0])  # one sigma for the stack
        assert sigma[0] == pytest.approx(np.median(signal) / level, rel=1e-14)
        assert np.median(sky["catalogue"]["snr_galaxy"][:, k]) == pytest.approx(level,
                                                                                 rel=1e-12)
        residual = (sky["noisy"][level] - sky["clean"]) / sigma[0]
        assert residual.std() == pytest.approx(1.0, rel=0.02)
    assert sky["meta"]["noise_mode"] == "sky"


def test_sky_fluxes_follow_euclidean_counts_over_the_decades_asked_for():
    flux = galaxy_fluxes(1, 0, 20000, 0.5)
    assert np.median(flux) == pytest.approx(1.0, rel=0.02)
    low, high = flux.min(), flux.max()
    assert np.log10(high / low) <= 0.5 and np.log10(high / low) > 0.49
    # N(>F) ∝ F^-1.5 between the limits: the fraction brighter than F, in closed form
    faint = low / 1.0001
    for f in (1.2 * faint, 1.5 * faint, 2.0 * faint, 3.0 * faint):
        expected = ((f / faint) ** -1.5 - 10 ** -0.75) / (1 - 10 ** -0.75)
        assert np.mean(flux > f) == pytest.approx(expected, abs=0.012)  # 3.5 sigma
    np.testing.assert_array_equal(galaxy_fluxes(1, 100, 110, 0.5), flux[100:110])
    np.testing.assert_array_equal(galaxy_fluxes(1, 0, 50, 0.0), 1.0)


def test_knot_and_blend_fractions_are_honoured():
    population = Population(clumpy_fraction=0.3, blend_fraction=0.15)
    params = [galaxy_parameters(2, i, population) for i in range(4000)]
    clumpy = np.mean([p["clumpy"] for p in params])
    blend = np.mean([p["blend"] for p in params])
    # binomial standard errors 0.0072 and 0.0056: within 4 of them
    assert clumpy == pytest.approx(0.3, abs=0.03) and blend == pytest.approx(0.15, abs=0.023)
    n = np.array([p["sersic_n"] for p in params])
    assert n.min() >= 0.5 and n.max() <= 4.0
    np.testing.assert_allclose(n / 0.05, np.round(n / 0.05), atol=1e-9)
    # log-uniform: the median index is the geometric mean of the range
    assert np.median(n) == pytest.approx(np.sqrt(0.5 * 4.0), abs=0.06)
    # a fraction changes no other draw
    other = galaxy_parameters(2, 7, Population(clumpy_fraction=0.3, blend_fraction=0.9))
    assert {k: v for k, v in other.items() if not k.startswith("blend")} == \
        {k: v for k, v in params[7].items() if not k.startswith("blend")}
    none = [galaxy_parameters(2, i, Population(clumpy_fraction=0, blend_fraction=0))
            for i in range(200)]
    assert not any(p["clumpy"] or p["blend"] for p in none)
    with pytest.raises(ConfigError, match="sersic_range"):
        Population(sersic_range=(0.1, 4.0))


def test_galsim_render_is_reproducible_and_does_not_depend_on_workers(tmp_path, rendered):
    population = Population(clumpy_fraction=0.4, blend_fraction=0.4)
    parallel = simulate(6, seed=5, snr=(3, 10), workers=2, chunk_size=3, population=population)
    for key in ("truth", "psfs", "clean", "sigma"):
        np.testing.assert_array_equal(parallel[key], rendered[key][:6])
    np.testing.assert_array_equal(parallel["catalogue"], rendered["catalogue"][:6])
    again = simulate(6, seed=5, snr=(3, 10), workers=1, population=population)
    a = write_dataset(tmp_path / "a.npz", parallel)
    b = write_dataset(tmp_path / "b.npz", again)
    assert _digest(a) == _digest(b)


def test_store_with_sky_noise_equals_the_npz(tmp_path):
    pytest.importorskip("zarr")
    from galdecon.science.simulate_store import simulate_to_store

    memory = simulate(9, seed=6, snr=(5,), workers=1, noise="sky")
    store, _ = simulate_to_store(tmp_path / "s.zarr", 9, seed=6, snr=(5,), workers=1, chunk=4,
                                 noise="sky")
    for key in ("truth", "psfs", "clean", "sigma", "catalogue"):
        np.testing.assert_array_equal(store.read(key), memory[key])
    np.testing.assert_array_equal(store.read("noisy_snr5"), memory["noisy"][5.0])
    np.testing.assert_array_equal(store.read("sigma_snr5"), memory["sigma"][:, 0])
    assert store.provenance["run"]["noise_mode"] == "sky"


def test_cli_simulate_models_noise_and_population(tmp_path, capsys):
    out = tmp_path / "d.npz"
    assert run_cli("simulate", "-n", 4, "-o", out, "--snr", 10, "--model", "discrete",
                   "--noise", "sky", "--flux-dex", 0.3, "--blend-fraction", 0.5,
                   "--clumpy-fraction", 1, "--sersic-range", 1, 2, "--max-hlr", 0.3) == 0
    assert "model discrete, noise sky" in capsys.readouterr().out
    meta = read_dataset(out)["meta"]
    assert meta["model"] == "discrete" and meta["noise_mode"] == "sky"
    assert meta["flux_dex"] == 0.3
    drawn = Population(**{k: tuple(v) if isinstance(v, list) else v
                          for k, v in meta["population"].items()})
    assert drawn == dataclasses.replace(BULGE_DISK, blend_fraction=0.5, clumpy_fraction=1.0,
                                        sersic_range=(1.0, 2.0), hlr_range=(0.08, 0.3))
    assert run_cli("simulate", "-n", 4, "-o", tmp_path / "e.npz", "--sersic-range", 0.1,
                   4) == 2
    # named as typed on the command line (the API's name is sersic_range)
    assert "error: --sersic-range (0.1, 4.0): expected 0.3 <= low" in capsys.readouterr().err
    assert run_cli("simulate", "-n", 4, "-o", tmp_path / "e.npz", "--flux-dex", -1) == 2
