"""The simulated galaxy population and its drawing with GalSim: galaxies, PSFs, streams.

Every galaxy is a bulge (de Vaucouleurs) plus a disk (exponential), optionally clumpy
(part of the disk light in :class:`galsim.RandomKnots`), with a random half-light radius,
bulge fraction, ellipticity, orientation and sub-pixel offset; it is convolved with a
narrow Gaussian (the resolution of the "true" image), drawn on a 41×41 stamp at
0.05″/pixel and normalised to unit flux in the stamp. Its PSF is a Euclid-like diffraction
PSF (:class:`galsim.OpticalPSF`) whose aberrations vary smoothly across the field.

Every random number of galaxy ``i`` comes from its own stream ``(seed, i)``
(:func:`random_stream`), so what is drawn does not depend on how the galaxies are split
among worker processes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from galdecon.science import galsim_import

STAMP_SIZE = 41
PIXEL_SCALE = 0.05  # arcsec per pixel
# First element of each per-purpose seed key, so that no two streams can coincide.
GALAXY_STREAM, NOISE_STREAM, BANK_STREAM = 0, 1, 2


@dataclass(frozen=True)
class Population:
    """The galaxy population (angles in arcsec).

    Half-light radius: log-normal with median ``median_hlr`` and log-scatter
    ``hlr_log_scatter``, clipped to ``hlr_range`` (bulge and disk share it, so it is the
    half-light radius of the round galaxy). Bulge fraction: Beta(1, 2) (mostly disks).
    Ellipticity: distortion :math:`|e| = (a^2-b^2)/(a^2+b^2)` = ``e_max`` × Beta(1.6, 3),
    orientation uniform. Offset: uniform in ±0.5 pixel per axis. A galaxy is clumpy with
    probability ``clumpy_fraction``: then 10–50 % of its disk light sits in 5–30 random
    knots. The whole is convolved with a Gaussian of FWHM ``truth_fwhm``.
    """

    median_hlr: float = 0.18
    hlr_log_scatter: float = 0.3
    hlr_range: tuple = (0.08, 0.45)
    e_max: float = 0.7
    clumpy_fraction: float = 0.0
    truth_fwhm: float = 0.07


@dataclass(frozen=True)
class Optics:
    r"""A Euclid-like telescope and its field-dependent aberrations (waves at ``lam_nm``).

    At normalised field position :math:`(u, v) \in [-1, 1]^2`: defocus
    :math:`d_0 + d_2(u^2+v^2)`, astigmatism :math:`a(u^2-v^2)` and :math:`2auv`, coma
    :math:`cu` and :math:`cv` — low-order, smooth, and of the size of Euclid's wavefront
    budget (≲ 0.1 wave rms).
    """

    lam_nm: float = 725.0
    diam_m: float = 1.2
    obscuration: float = 0.3
    nstruts: int = 3
    strut_thick: float = 0.05
    strut_angle_deg: float = 0.0
    defocus0: float = -0.04
    defocus2: float = 0.06
    astig: float = 0.05
    coma: float = 0.04


def random_stream(seed: int, *key: int) -> np.random.Generator:
    """The generator of one purpose's stream ``(seed, *key)`` (e.g. a galaxy's)."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=key))


def galaxy_parameters(seed: int, index: int, population: Population) -> dict:
    """Draw the parameters of galaxy ``index`` from its own stream ``(seed, index)``."""
    rng = random_stream(seed, GALAXY_STREAM, index)
    hlr = float(np.clip(population.median_hlr * np.exp(population.hlr_log_scatter
                                                        * rng.standard_normal()),
                        *population.hlr_range))
    bulge_fraction = float(rng.beta(1.0, 2.0))
    e = float(population.e_max * rng.beta(1.6, 3.0))
    beta = float(rng.uniform(0.0, np.pi))
    dx, dy = (float(v) for v in rng.uniform(-0.5, 0.5, size=2))
    clumpy = bool(rng.random() < population.clumpy_fraction)
    knot_fraction = float(rng.uniform(0.1, 0.5))
    n_knots = int(rng.integers(5, 31))
    return {
        "index": index, "hlr": hlr, "bulge_fraction": bulge_fraction, "e": e, "beta": beta,
        "e1": e * np.cos(2 * beta), "e2": e * np.sin(2 * beta), "dx": dx, "dy": dy,
        "clumpy": clumpy, "knot_fraction": knot_fraction if clumpy else 0.0,
        "n_knots": n_knots if clumpy else 0,
        # the PSF draws come last, so that their use does not shift the galaxy draws
        "field_x": float(rng.uniform(-1.0, 1.0)), "field_y": float(rng.uniform(-1.0, 1.0)),
        "knot_seed": int(rng.integers(1, 2**31 - 1)), "bank_draw": float(rng.random()),
    }


def field_aberrations(x: float, y: float, optics: Optics = Optics()) -> dict:
    """Aberrations (waves) at normalised field position ``(x, y)``."""
    return {"defocus": optics.defocus0 + optics.defocus2 * (x * x + y * y),
            "astig1": optics.astig * (x * x - y * y), "astig2": 2.0 * optics.astig * x * y,
            "coma1": optics.coma * x, "coma2": optics.coma * y}


def _centre_offset(size: int) -> tuple[float, float]:
    # GalSim puts the profile origin at the true centre of the image; galdecon's is pixel
    # N//2 (0-based), half a pixel further for even N.
    shift = size // 2 - (size - 1) / 2
    return (shift, shift)


def draw_galaxy(params: dict, population: Population = Population(),
                stamp_size: int = STAMP_SIZE, pixel_scale: float = PIXEL_SCALE):
    """Draw one true galaxy; return (stamp normalised to unit sum, flux drawn in the stamp)."""
    galsim = galsim_import.galsim("simulated data")
    hlr, fb = params["hlr"], params["bulge_fraction"]
    parts = [galsim.DeVaucouleurs(half_light_radius=hlr, flux=fb)] if fb > 0 else []
    disk_flux = 1.0 - fb
    if params["clumpy"]:
        kf = params["knot_fraction"]
        parts.append(galsim.RandomKnots(params["n_knots"], half_light_radius=hlr,
                                        flux=disk_flux * kf,
                                        rng=galsim.BaseDeviate(params["knot_seed"])))
        disk_flux *= 1.0 - kf
    parts.append(galsim.Exponential(half_light_radius=hlr, flux=disk_flux))
    profile = galsim.Add(parts).shear(e1=params["e1"], e2=params["e2"])
    profile = profile.shift(params["dx"] * pixel_scale, params["dy"] * pixel_scale)
    profile = galsim.Convolve(profile, galsim.Gaussian(fwhm=population.truth_fwhm))
    image = profile.drawImage(nx=stamp_size, ny=stamp_size, scale=pixel_scale,
                              dtype=np.float64, offset=_centre_offset(stamp_size)).array
    flux = float(image.sum())
    return image / flux, flux


@functools.lru_cache(maxsize=4)
def _aperture(optics: Optics, pixel_scale: float):
    # The pupil plane is lam / pixel wide, so that the PSF GalSim computes by FFT has exactly
    # the stamp's pixels: drawing it then samples its nodes, with no interpolation (the
    # default, finer grid is 20x slower and rings into negative pixels when resampled).
    # 384 pupil pixels (0.8 cm) resolve the 6 cm struts; the PSF is then within 0.3 % of
    # GalSim's 4x oversampled, 4x padded PSF.
    galsim = galsim_import.galsim("simulated data")
    size = optics.lam_nm * 1e-9 / (pixel_scale * galsim.arcsec / galsim.radians)
    return galsim.Aperture(diam=optics.diam_m, lam=optics.lam_nm,
                           obscuration=optics.obscuration, nstruts=optics.nstruts,
                           strut_thick=optics.strut_thick,
                           strut_angle=optics.strut_angle_deg * galsim.degrees,
                           pupil_plane_size=size, pupil_plane_scale=size / 384)


def draw_psf(aberrations: dict, optics: Optics = Optics(), stamp_size: int = STAMP_SIZE,
             pixel_scale: float = PIXEL_SCALE):
    """Draw one optical PSF sampled (no pixel response) at ``pixel_scale``.

    Returns the stamp normalised to unit sum, its origin at pixel ``(N//2, N//2)``, and the
    fraction of the light that fell in the stamp before normalisation.
    """
    galsim = galsim_import.galsim("simulated data")
    psf = galsim.OpticalPSF(lam=optics.lam_nm, diam=optics.diam_m,
                            obscuration=optics.obscuration, nstruts=optics.nstruts,
                            strut_thick=optics.strut_thick,
                            strut_angle=optics.strut_angle_deg * galsim.degrees,
                            aper=_aperture(optics, pixel_scale), **aberrations)
    image = psf.drawImage(nx=stamp_size, ny=stamp_size, scale=pixel_scale, dtype=np.float64,
                          method="no_pixel", offset=_centre_offset(stamp_size)).array
    flux = float(image.sum())
    return image / flux, flux


def draw_chunk(start: int, stop: int, config: dict) -> tuple:
    """Draw galaxies ``start..stop-1`` (and their field PSFs): truth, psfs, catalogue rows."""
    population, optics = Population(**config["population"]), Optics(**config["optics"])
    size, scale, seed = config["stamp_size"], config["pixel_scale"], config["seed"]
    truth = np.empty((stop - start, size, size))
    psfs = np.empty_like(truth) if config["psf_mode"] == "field" else None
    rows = []
    for j, index in enumerate(range(start, stop)):
        params = galaxy_parameters(seed, index, population)
        truth[j], params["flux_in_stamp"] = draw_galaxy(params, population, size, scale)
        if psfs is not None:
            params |= field_aberrations(params["field_x"], params["field_y"], optics)
            psfs[j], params["psf_flux_in_stamp"] = draw_psf(
                {k: params[k] for k in ("defocus", "astig1", "astig2", "coma1", "coma2")},
                optics, size, scale)
            params["psf_index"] = index
        rows.append(params)
    return start, truth, psfs, rows


def draw_psf_bank(seed: int, size: int, optics: Optics, stamp_size: int, pixel_scale: float):
    """Draw ``size`` PSFs at random field positions (stream ``(seed, BANK_STREAM)``)."""
    rng = random_stream(seed, BANK_STREAM)
    positions = rng.uniform(-1.0, 1.0, size=(size, 2))
    psfs, rows = np.empty((size, stamp_size, stamp_size)), []
    for b, (x, y) in enumerate(positions):
        ab = field_aberrations(float(x), float(y), optics)
        psfs[b], flux = draw_psf(ab, optics, stamp_size, pixel_scale)
        rows.append({"field_x": float(x), "field_y": float(y), "psf_flux_in_stamp": flux} | ab)
    return psfs, rows
