"""The simulated galaxy population and its drawing with GalSim: galaxies, PSFs, streams.

Two populations (:class:`Population`, its ``profile``):

* ``"sersic"`` (the default of ``galdecon simulate``): one Sersic profile per galaxy, index
  log-uniform in 0.5–4, sizes up to half the stamp, a fraction with star-forming knots
  (:class:`galsim.RandomKnots`) and a fraction blended with a second galaxy;
* ``"bulge+disk"`` (:data:`BULGE_DISK`, the default of the discrete model and of the
  tables in docs/science.md): a bulge (de Vaucouleurs) plus a disk (exponential),
  optionally clumpy, convolved with a narrow Gaussian (the resolution of the "true" image).

Both are drawn with a random half-light radius, ellipticity, orientation and sub-pixel
offset on a 41×41 stamp at 0.05″/pixel and normalised to unit flux in the stamp. The PSF
is a Euclid-like diffraction PSF (:class:`galsim.OpticalPSF`) whose aberrations vary
smoothly across the field.

Every random number of galaxy ``i`` comes from its own stream ``(seed, i)``
(:func:`random_stream`), so what is drawn does not depend on how the galaxies are split
among worker processes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from galdecon.errors import ConfigError
from galdecon.science import galsim_import

STAMP_SIZE = 41
PIXEL_SCALE = 0.05  # arcsec per pixel
# First element of each per-purpose seed key, so that no two streams can coincide.
GALAXY_STREAM, NOISE_STREAM, BANK_STREAM, FLUX_STREAM = 0, 1, 2, 3


@dataclass(frozen=True)
class Population:
    """The galaxy population (angles in arcsec).

    Half-light radius: log-normal with median ``median_hlr`` and log-scatter
    ``hlr_log_scatter``, clipped to ``hlr_range``. Ellipticity: distortion
    :math:`|e| = (a^2-b^2)/(a^2+b^2)` = ``e_max`` × Beta(1.6, 3), orientation uniform.
    Offset: uniform in ±0.5 pixel per axis.

    ``profile="sersic"``: one Sersic profile, index log-uniform in ``sersic_range`` (on a
    0.05 grid, so that GalSim's per-index tables are reused). ``profile="bulge+disk"``: a
    bulge and a disk of the same half-light radius, bulge fraction Beta(1, 2).

    A galaxy has knots with probability ``clumpy_fraction``: 10–50 % of its light (of its
    disk, for bulge+disk) in 5–30 random knots, each a Gaussian of FWHM ``knot_fwhm``
    (0: points, which only a ``truth_fwhm`` > 0 can draw). A stamp is a blend with
    probability ``blend_fraction``: a second galaxy (a Sersic of the same sizes, indices
    and shapes, without knots) of 0.1–1 times the flux, at a random angle and a distance of
    ``blend_separation`` (fractions of the half stamp) from the first. The whole is
    convolved with a Gaussian of FWHM ``truth_fwhm`` when it is > 0.
    """

    profile: str = "sersic"
    median_hlr: float = 0.2
    hlr_log_scatter: float = 0.45
    hlr_range: tuple = (0.05, 0.5)
    sersic_range: tuple = (0.5, 4.0)
    e_max: float = 0.7
    clumpy_fraction: float = 0.25
    knot_fwhm: float = 0.0
    blend_fraction: float = 0.1
    blend_separation: tuple = (0.3, 0.8)
    # The "true" image has a finite resolution, as the HST images that are the truth of
    # the reference data do: 0.07" is well below the Euclid-like PSF's 0.16" FWHM, so
    # nothing a deconvolution could recover is lost. At 0 (the galaxy at full resolution)
    # the cusps of small n ~ 2-4 galaxies fall inside one pixel: HSM's adaptive moments
    # fail on ~8 % of the true images and drawing is ~10x slower.
    truth_fwhm: float = 0.07

    def __post_init__(self):
        if self.profile not in PROFILES:
            raise ConfigError(f"profile={self.profile!r}: expected one of {PROFILES}")
        low, high = self.sersic_range
        if not SERSIC_LIMITS[0] <= low <= high <= SERSIC_LIMITS[1]:
            raise ConfigError(f"sersic_range={self.sersic_range}: expected "
                              f"{SERSIC_LIMITS[0]} <= low <= high <= {SERSIC_LIMITS[1]} "
                              "(GalSim's Sersic indices)")
        if not 0 < self.hlr_range[0] <= self.hlr_range[1]:
            raise ConfigError(f"hlr_range={self.hlr_range}: expected 0 < low <= high")
        for name in ("clumpy_fraction", "blend_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}={getattr(self, name)}: expected 0 to 1")
        if self.clumpy_fraction > 0 and self.knot_fwhm <= 0 and self.truth_fwhm <= 0:
            raise ConfigError("knots need a size: knot_fwhm > 0 or truth_fwhm > 0")


PROFILES = ("sersic", "bulge+disk")
SERSIC_LIMITS = (0.3, 6.2)  # the indices GalSim's Sersic accepts
# The population of the discrete model and of the tables in docs/science.md: drawing it
# gives the same galaxies, bit for bit, as before the Sersic population existed.
BULGE_DISK = Population(profile="bulge+disk", median_hlr=0.18, hlr_log_scatter=0.3,
                        hlr_range=(0.08, 0.45), clumpy_fraction=0.0, knot_fwhm=0.0,
                        blend_fraction=0.0, truth_fwhm=0.07)


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
    hlr = _draw_hlr(rng, population)
    # 0 where a parameter does not apply (no NaN: catalogues then compare as arrays)
    if population.profile == "bulge+disk":
        bulge_fraction, sersic_n = float(rng.beta(1.0, 2.0)), 0.0
    else:
        bulge_fraction, sersic_n = 0.0, _draw_sersic_n(rng, population)
    e = float(population.e_max * rng.beta(1.6, 3.0))
    beta = float(rng.uniform(0.0, np.pi))
    dx, dy = (float(v) for v in rng.uniform(-0.5, 0.5, size=2))
    clumpy = bool(rng.random() < population.clumpy_fraction)
    knot_fraction = float(rng.uniform(0.1, 0.5))
    n_knots = int(rng.integers(5, 31))
    params = {
        "index": index, "hlr": hlr, "bulge_fraction": bulge_fraction, "sersic_n": sersic_n,
        "e": e, "beta": beta,
        "e1": e * np.cos(2 * beta), "e2": e * np.sin(2 * beta), "dx": dx, "dy": dy,
        "clumpy": clumpy, "knot_fraction": knot_fraction if clumpy else 0.0,
        "n_knots": n_knots if clumpy else 0,
        # the PSF draws come next, so that their use does not shift the galaxy draws
        "field_x": float(rng.uniform(-1.0, 1.0)), "field_y": float(rng.uniform(-1.0, 1.0)),
        "knot_seed": int(rng.integers(1, 2**31 - 1)), "bank_draw": float(rng.random()),
    }
    # the companion's draws come last, always made, so that a blend fraction changes no
    # other draw (and the bulge+disk galaxies stay those drawn before blends existed)
    blend = bool(rng.random() < population.blend_fraction)
    companion = {"blend_hlr": _draw_hlr(rng, population),
                 "blend_sersic_n": _draw_sersic_n(rng, population),
                 "blend_e": float(population.e_max * rng.beta(1.6, 3.0)),
                 "blend_beta": float(rng.uniform(0.0, np.pi)),
                 "blend_flux": float(rng.uniform(0.1, 1.0)),
                 "blend_distance": float(rng.uniform(*population.blend_separation)),
                 "blend_angle": float(rng.uniform(0.0, 2.0 * np.pi))}
    if not blend:
        companion = dict.fromkeys(companion, 0.0)
    return params | {"blend": blend, "blend_dx": 0.0, "blend_dy": 0.0, "blend_e1": 0.0,
                     "blend_e2": 0.0} | companion


def _draw_hlr(rng: np.random.Generator, population: Population) -> float:
    return float(np.clip(population.median_hlr * np.exp(population.hlr_log_scatter
                                                         * rng.standard_normal()),
                         *population.hlr_range))


def _draw_sersic_n(rng: np.random.Generator, population: Population) -> float:
    low, high = np.log(population.sersic_range)
    return float(np.clip(np.round(np.exp(rng.uniform(low, high)) / 0.05) * 0.05,
                         *population.sersic_range))


def field_aberrations(x: float, y: float, optics: Optics = Optics()) -> dict:
    """Aberrations (waves) at normalised field position ``(x, y)``."""
    return {"defocus": optics.defocus0 + optics.defocus2 * (x * x + y * y),
            "astig1": optics.astig * (x * x - y * y), "astig2": 2.0 * optics.astig * x * y,
            "coma1": optics.coma * x, "coma2": optics.coma * y}


def centre_offset(size: int) -> tuple[float, float]:
    # GalSim puts the profile origin at the true centre of the image; galdecon's is pixel
    # N//2 (0-based), half a pixel further for even N.
    shift = size // 2 - (size - 1) / 2
    return (shift, shift)


def scene_components(params: dict, population: Population = Population(),
                     stamp_size: int = STAMP_SIZE, pixel_scale: float = PIXEL_SCALE) -> list:
    """The GalSim profiles of one stamp's scene (flux 1 for the galaxy; a companion's added).

    Each is drawn on its own for the truth (:func:`draw_truth`): a Sersic profile at full
    resolution (``truth_fwhm`` 0) analytically in real space, knots and anything
    convolved (the truth's resolution) by FFT. Adds the companion's offset in pixels
    (``blend_dx``, ``blend_dy``) and shear (``blend_e1``, ``blend_e2``) to ``params``.
    """
    galsim = galsim_import.galsim("simulated data")
    hlr, shift = params["hlr"], (params["dx"] * pixel_scale, params["dy"] * pixel_scale)
    if population.profile == "bulge+disk":
        fb = params["bulge_fraction"]
        parts = [galsim.DeVaucouleurs(half_light_radius=hlr, flux=fb)] if fb > 0 else []
        smooth_flux = 1.0 - fb
    else:
        parts, smooth_flux = [], 1.0
    if params["clumpy"]:
        kf = params["knot_fraction"]
        knots = galsim.RandomKnots(params["n_knots"], half_light_radius=hlr,
                                   flux=smooth_flux * kf,
                                   rng=galsim.BaseDeviate(params["knot_seed"]))
        if population.knot_fwhm > 0:
            knots = galsim.Convolve(knots, galsim.Gaussian(fwhm=population.knot_fwhm))
        parts.append(knots)
        smooth_flux *= 1.0 - kf
    if population.profile == "bulge+disk":
        parts.append(galsim.Exponential(half_light_radius=hlr, flux=smooth_flux))
        # one sum, sheared and shifted as one: the bulge+disk galaxies are those drawn
        # before the Sersic population existed, bit for bit
        components = [galsim.Add(parts).shear(e1=params["e1"], e2=params["e2"])
                      .shift(*shift)]
    else:
        parts.append(galsim.Sersic(params["sersic_n"], half_light_radius=hlr,
                                   flux=smooth_flux))
        components = [part.shear(e1=params["e1"], e2=params["e2"]).shift(*shift)
                      for part in parts]
    if params["blend"]:
        components.append(_companion(params, stamp_size, pixel_scale))
    if population.truth_fwhm > 0:
        resolution = galsim.Gaussian(fwhm=population.truth_fwhm)
        components = [galsim.Convolve(c, resolution) for c in components]
    return components


def _companion(params: dict, stamp_size: int, pixel_scale: float):
    galsim = galsim_import.galsim("simulated data")
    distance = params["blend_distance"] * (stamp_size // 2)
    params["blend_dx"] = params["dx"] + distance * np.cos(params["blend_angle"])
    params["blend_dy"] = params["dy"] + distance * np.sin(params["blend_angle"])
    e, beta = params["blend_e"], params["blend_beta"]
    params["blend_e1"], params["blend_e2"] = e * np.cos(2 * beta), e * np.sin(2 * beta)
    return (galsim.Sersic(params["blend_sersic_n"], half_light_radius=params["blend_hlr"],
                          flux=params["blend_flux"])
            .shear(e1=params["blend_e1"], e2=params["blend_e2"])
            .shift(params["blend_dx"] * pixel_scale, params["blend_dy"] * pixel_scale))


def draw_truth(components: list, stamp_size: int = STAMP_SIZE,
               pixel_scale: float = PIXEL_SCALE) -> np.ndarray:
    """The scene drawn with the pixel response on the stamp (not normalised).

    Analytic profiles are integrated over the pixels in real space: exact, and for a
    cuspy Sersic (n ≈ 4) far faster than the FFT, whose grid the cusp makes huge.
    """
    image = None
    for c in components:
        method = "real_space" if c.is_analytic_x else "auto"
        drawn = c.drawImage(nx=stamp_size, ny=stamp_size, scale=pixel_scale,
                            dtype=np.float64, method=method,
                            offset=centre_offset(stamp_size)).array
        image = drawn if image is None else image + drawn
    return image


def draw_galaxy(params: dict, population: Population = BULGE_DISK,
                stamp_size: int = STAMP_SIZE, pixel_scale: float = PIXEL_SCALE):
    """Draw one true galaxy; return (stamp normalised to unit sum, flux drawn in the stamp)."""
    image = draw_truth(scene_components(params, population, stamp_size, pixel_scale),
                       stamp_size, pixel_scale)
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


def psf_profile(aberrations: dict, optics: Optics = Optics(), pixel_scale: float = PIXEL_SCALE):
    """The optical PSF (:class:`galsim.OpticalPSF`, flux 1) with these aberrations (waves)."""
    galsim = galsim_import.galsim("simulated data")
    return galsim.OpticalPSF(lam=optics.lam_nm, diam=optics.diam_m,
                             obscuration=optics.obscuration, nstruts=optics.nstruts,
                             strut_thick=optics.strut_thick,
                             strut_angle=optics.strut_angle_deg * galsim.degrees,
                             aper=_aperture(optics, pixel_scale), **aberrations)


def draw_psf_image(psf, stamp_size: int = STAMP_SIZE, pixel_scale: float = PIXEL_SCALE):
    """A PSF profile as the solver gets it: sampled without the pixel response, unit sum.

    Returns the stamp normalised to unit sum, its origin at pixel ``(N//2, N//2)``, and the
    fraction of the light that fell in the stamp before normalisation.
    """
    image = psf.drawImage(nx=stamp_size, ny=stamp_size, scale=pixel_scale, dtype=np.float64,
                          method="no_pixel", offset=centre_offset(stamp_size)).array
    flux = float(image.sum())
    return image / flux, flux


def draw_psf(aberrations: dict, optics: Optics = Optics(), stamp_size: int = STAMP_SIZE,
             pixel_scale: float = PIXEL_SCALE):
    """Draw one optical PSF sampled (no pixel response) at ``pixel_scale``.

    Returns the stamp normalised to unit sum, its origin at pixel ``(N//2, N//2)``, and the
    fraction of the light that fell in the stamp before normalisation.
    """
    return draw_psf_image(psf_profile(aberrations, optics, pixel_scale), stamp_size,
                          pixel_scale)


def draw_chunk(start: int, stop: int, config: dict) -> tuple:
    """Draw galaxies ``start..stop-1`` (and their field PSFs): truth, psfs, catalogue rows.

    The truth of the discrete model; :mod:`galdecon.science.render` draws GalSim's.
    """
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
