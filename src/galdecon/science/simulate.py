r"""Simulated survey data with known truth: a GREAT3-like stack drawn with GalSim.

Every galaxy is a bulge (de Vaucouleurs) plus a disk (exponential), optionally clumpy
(part of the disk light in :class:`galsim.RandomKnots`), with a random half-light radius,
bulge fraction, ellipticity, orientation and sub-pixel offset; it is convolved with a
narrow Gaussian (the resolution of the "true" image), drawn on a 41×41 stamp at
0.05″/pixel and normalised to unit flux in the stamp. Its PSF is a Euclid-like diffraction
PSF (:class:`galsim.OpticalPSF`) whose aberrations vary smoothly across the field, or one
of a bank of such PSFs, or one read from a file. The observation is the discrete model of
galdecon itself,

.. math:: Y_i = h_i \circledast X_i + n_i, \qquad n_i \sim \mathcal N(0, \sigma_i^2),
          \quad \sigma_i = \mathrm{std}(h_i \circledast X_i) / \mathrm{SNR},

with the periodic convolution of :class:`galdecon.core.operators.Convolution` and one noisy
stack per SNR level (ALGORITHM.md §8).

Reproducibility: every random number of galaxy ``i`` comes from a generator seeded by
``(seed, i)``, so the data do not depend on how the galaxies are split among worker
processes, and :func:`write_dataset` writes the same bytes for the same data.

GalSim is an optional dependency (``pip install galdecon[sim]``), imported only when
drawing; nothing is downloaded.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import multiprocessing
import os
from dataclasses import dataclass

import numpy as np

from galdecon.science.dataset import export_npy, read_dataset, write_dataset
from galdecon.science import galsim_import
from galdecon.errors import ConfigError, EngineError
from galdecon.core.operators.convolution import Convolution

log = logging.getLogger("galdecon")

__all__ = ["DEFAULT_SNR", "Optics", "Population", "add_noise", "draw_galaxy", "draw_psf",
           "export_npy", "field_aberrations", "galaxy_parameters", "read_dataset", "simulate",
           "simulate_to_store", "write_dataset"]

DEFAULT_SNR = (1.0, 2.0, 3.0, 5.0, 10.0)
STAMP_SIZE = 41
PIXEL_SCALE = 0.05  # arcsec per pixel
# First element of each per-purpose seed key, so that no two streams can coincide.
_GALAXY_STREAM, _NOISE_STREAM, _BANK_STREAM = 0, 1, 2


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


CATALOGUE_FIELDS = [
    ("index", "i8"), ("hlr", "f8"), ("bulge_fraction", "f8"), ("e", "f8"), ("beta", "f8"),
    ("e1", "f8"), ("e2", "f8"), ("dx", "f8"), ("dy", "f8"), ("clumpy", "?"),
    ("knot_fraction", "f8"), ("n_knots", "i8"), ("flux_in_stamp", "f8"),
    ("field_x", "f8"), ("field_y", "f8"), ("psf_index", "i8"), ("defocus", "f8"),
    ("astig1", "f8"), ("astig2", "f8"), ("coma1", "f8"), ("coma2", "f8"),
    ("psf_flux_in_stamp", "f8"),
]


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=key))


def galaxy_parameters(seed: int, index: int, population: Population) -> dict:
    """Draw the parameters of galaxy ``index`` from its own stream ``(seed, index)``."""
    rng = _rng(seed, _GALAXY_STREAM, index)
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


def _draw_chunk(start: int, stop: int, config: dict) -> tuple:
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


def _psf_bank(seed: int, size: int, optics: Optics, stamp_size: int, pixel_scale: float):
    rng = _rng(seed, _BANK_STREAM)
    positions = rng.uniform(-1.0, 1.0, size=(size, 2))
    psfs, rows = np.empty((size, stamp_size, stamp_size)), []
    for b, (x, y) in enumerate(positions):
        ab = field_aberrations(float(x), float(y), optics)
        psfs[b], flux = draw_psf(ab, optics, stamp_size, pixel_scale)
        rows.append({"field_x": float(x), "field_y": float(y), "psf_flux_in_stamp": flux} | ab)
    return psfs, rows


def _catalogue(rows: list[dict], snr: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    dtype = CATALOGUE_FIELDS + [("snr", "f8", (snr.size,)), ("sigma", "f8", (snr.size,))]
    cat = np.zeros(len(rows), dtype=dtype)
    for name, _ in CATALOGUE_FIELDS:
        cat[name] = [row.get(name, np.nan) for row in rows]
    cat["snr"] = snr
    cat["sigma"] = sigma
    return cat


def add_noise(clean: np.ndarray, snr, seed: int, offset: int = 0) -> tuple[dict, np.ndarray]:
    r"""Return ``({snr: noisy stack}, sigma)``, :math:`\sigma_i = \mathrm{std}(HX_i)/\mathrm{SNR}`.

    The noise of galaxy ``i`` at level ``s`` comes from its own stream ``(seed, i, s)``, so
    adding a level or a galaxy does not change the others. ``clean`` holds galaxies
    ``offset, offset + 1, ...`` (a chunk of a larger stack).
    """
    snr = np.asarray(snr, dtype=np.float64)
    std = clean.reshape(clean.shape[0], -1).std(axis=1)
    sigma = std[:, None] / snr[None, :]
    noisy = {}
    for k, level in enumerate(snr):
        key = int(round(level * 1000))
        unit = np.stack([_rng(seed, _NOISE_STREAM, offset + i, key)
                         .standard_normal(clean.shape[1:]) for i in range(clean.shape[0])])
        noisy[float(level)] = clean + sigma[:, k, None, None] * unit
    return noisy, sigma


def _check(n, snr, psf_bank, psfs, stamp_size):
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"n={n!r}: expected a number of galaxies >= 1")
    if len(snr) == 0 or any(not np.isfinite(s) or s <= 0 for s in snr):
        raise ConfigError(f"snr={list(snr)}: expected one or more positive numbers")
    if len(set(int(round(s * 1000)) for s in snr)) != len(snr):
        raise ConfigError(f"snr={list(snr)}: levels must differ (to 0.001)")
    if psf_bank is not None and psfs is not None:
        raise ConfigError("give either a PSF bank size or PSFs from a file, not both")
    if psf_bank is not None and (int(psf_bank) != psf_bank or psf_bank < 1):
        raise ConfigError(f"psf_bank={psf_bank!r}: expected an integer >= 1")
    if stamp_size < 5:
        raise ConfigError(f"stamp_size={stamp_size}: expected at least 5 pixels")


def simulate(n: int, *, seed: int = 0, snr=DEFAULT_SNR, stamp_size: int = STAMP_SIZE,
             pixel_scale: float = PIXEL_SCALE, psf_bank: int | None = None, psfs=None,
             population: Population = Population(), optics: Optics = Optics(),
             workers: int | None = None, chunk_size: int = 200, progress=None) -> dict:
    r"""Simulate ``n`` galaxies, their PSFs and noisy observations at several SNRs.

    Parameters
    ----------
    n : int
        Number of galaxies.
    seed : int
        Seed of every random stream; the same seed gives the same data.
    snr : sequence of float
        SNR levels; one noisy stack per level.
    stamp_size, pixel_scale : int, float
        Stamp side (pixels) and pixel scale (arcsec).
    psf_bank : int, optional
        Draw this many PSFs at random field positions and give each galaxy one at random.
        Default: one PSF per galaxy, at the galaxy's own field position.
    psfs : ndarray, shape (B, k0, k1) or (k0, k1), optional
        PSFs to use instead of drawing them (e.g. read from a file); each galaxy gets one at
        random. Used as given (warned about by the deconvolver if they do not sum to 1).
    population, optics : Population, Optics
        The galaxy and telescope models.
    workers : int, optional
        Processes drawing chunks of galaxies (default: the available cores, at most one per
        chunk). The result does not depend on it.
    chunk_size : int
        Galaxies per chunk.
    progress : callable, optional
        ``progress(done, n)`` after each chunk is drawn.

    Returns
    -------
    dict
        ``truth``, ``psfs`` and ``clean`` (:math:`HX`), each (n, N, N); ``noisy`` — a dict
        ``{snr: (n, N, N)}``; ``snr`` (k,); ``sigma`` (n, k); ``catalogue`` — a structured
        array of the galaxy and PSF parameters, SNRs and σ; ``meta`` — a dict of settings.

    Notes
    -----
    :math:`Y_i = h_i \circledast X_i + \sigma_i\,\epsilon_i` with galdecon's periodic
    convolution; ``e1, e2`` in the catalogue are GalSim distortions (x = column).
    """
    snr = tuple(float(s) for s in np.atleast_1d(snr))
    _check(n, snr, psf_bank, psfs, stamp_size)
    psf_mode = "file" if psfs is not None else "bank" if psf_bank is not None else "field"
    config = {"seed": int(seed), "stamp_size": int(stamp_size),
              "pixel_scale": float(pixel_scale), "psf_mode": psf_mode,
              "population": dataclasses.asdict(population),
              "optics": dataclasses.asdict(optics)}
    truth, psf_stack, rows = _draw_all(int(n), config, workers, chunk_size, progress)
    if psf_mode != "field":
        psf_stack = _assign_psfs(rows, *_bank(psf_mode, config, psf_bank, psfs, optics))
    clean = Convolution(psf_stack, truth.shape[1:], "periodic").op(truth)
    noisy, sigma = add_noise(clean, snr, seed)
    meta = _meta(config, n, snr, psf_bank)
    return {"truth": truth, "psfs": psf_stack, "clean": clean, "noisy": noisy,
            "snr": np.asarray(snr), "sigma": sigma,
            "catalogue": _catalogue(rows, np.asarray(snr), sigma), "meta": meta}


def _bank(psf_mode, config, psf_bank, psfs, optics):
    """The PSFs galaxies choose from (bank or file mode) and their catalogue entries."""
    if psf_mode == "bank":
        return _psf_bank(config["seed"], int(psf_bank), optics, config["stamp_size"],
                         config["pixel_scale"])
    bank = np.asarray(psfs, dtype=np.float64)
    bank = bank[None] if bank.ndim == 2 else bank
    # no field position or aberrations are known for PSFs from a file
    return bank, [{"field_x": np.nan, "field_y": np.nan}] * bank.shape[0]


def _assign_psfs(rows: list[dict], bank: np.ndarray, bank_rows: list[dict]) -> np.ndarray:
    """Give each galaxy the bank PSF its ``bank_draw`` picks; record it in its row."""
    choice = [min(int(row["bank_draw"] * bank.shape[0]), bank.shape[0] - 1) for row in rows]
    for row, b in zip(rows, choice, strict=True):
        row |= bank_rows[b] | {"psf_index": b}
    return bank[choice]


def _meta(config: dict, n: int, snr, psf_bank) -> dict:
    return config | {"format": "galdecon-simulation", "version": 1, "n": int(n),
                     "snr": list(snr), "psf_bank": psf_bank,
                     "noise": "sigma_i = std(H_i X_i) / SNR, periodic convolution",
                     "versions": _versions()}


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _draw_all(n, config, workers, chunk_size, progress):
    size = config["stamp_size"]
    truth = np.empty((n, size, size))
    psfs = np.empty_like(truth) if config["psf_mode"] == "field" else None
    rows: list = [None] * n
    chunks = [(a, min(a + chunk_size, n)) for a in range(0, n, chunk_size)]
    workers = min(workers or _available_cores(), len(chunks))
    done = 0

    def store(result):
        nonlocal done
        start, t, p, r = result
        truth[start:start + len(r)] = t
        if psfs is not None:
            psfs[start:start + len(r)] = p
        rows[start:start + len(r)] = r
        done += len(r)
        log.debug("simulate: %d/%d galaxies drawn", done, n)
        if progress is not None:
            progress(done, n)

    if workers <= 1:
        for a, b in chunks:
            store(_draw_chunk(a, b, config))
    else:
        # spawn, not fork: the parent may hold threads (BLAS, FFT pools).
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [pool.submit(_draw_chunk, a, b, config) for a, b in chunks]
            for future in concurrent.futures.as_completed(futures):
                store(future.result())
    return truth, psfs, rows


def _versions() -> dict:
    from galdecon.version import __version__

    galsim = galsim_import.galsim("simulated data")
    return {"galdecon": __version__, "galsim": galsim.__version__}


# -- straight into a chunked store -------------------------------------------------------

def _store_arrays(n: int, snr, stamp_size: int, psf_shape) -> dict:
    """Name -> (shape, dtype) of the arrays of a simulated store, as in the .npz."""
    from galdecon.science.dataset import snr_label

    stack = (n, stamp_size, stamp_size)
    arrays = {"truth": (stack, np.float64), "psfs": ((n, *psf_shape), np.float64),
              "clean": (stack, np.float64)}
    for level in snr:
        arrays[f"noisy_snr{snr_label(level)}"] = (stack, np.float64)
    dtype = CATALOGUE_FIELDS + [("snr", "f8", (len(snr),)), ("sigma", "f8", (len(snr),))]
    arrays["sigma"] = ((n, len(snr)), np.float64)
    arrays["catalogue"] = ((n,), np.dtype(dtype))
    return arrays


def _simulate_chunk(writer, start: int, stop: int, config: dict, snr: tuple, bank) -> tuple:
    """Draw galaxies ``start..stop-1`` completely and write them; return their checksums."""
    from galdecon.science.dataset import snr_label

    _, truth, psfs, rows = _draw_chunk(start, stop, config)
    if psfs is None:
        psfs = _assign_psfs(rows, *bank)
    clean = Convolution(psfs, truth.shape[1:], "periodic").op(truth)
    noisy, sigma = add_noise(clean, snr, config["seed"], offset=start)
    catalogue = _catalogue(rows, np.asarray(snr), sigma)
    blocks = {"truth": truth, "psfs": psfs, "clean": clean}
    blocks |= {f"noisy_snr{snr_label(level)}": noisy[float(level)] for level in snr}
    blocks |= {"sigma": sigma, "catalogue": catalogue}
    sums = {name: writer.write_block(name, start, block) for name, block in blocks.items()}
    return start, stop, sums, catalogue[["hlr", "e", "clumpy"]].copy()


def simulate_to_store(url, n: int, *, seed: int = 0, snr=DEFAULT_SNR,
                      stamp_size: int = STAMP_SIZE, pixel_scale: float = PIXEL_SCALE,
                      psf_bank: int | None = None, psfs=None,
                      population: Population = Population(), optics: Optics = Optics(),
                      workers: int | None = None, chunk: int | None = None,
                      overwrite: bool = False, compression: str = "zstd",
                      provenance: dict | None = None, progress=None):
    """Simulate like :func:`simulate`, writing each chunk of galaxies into a store as drawn.

    Worker processes each draw a chunk of galaxies — truth, PSFs, :math:`HX`, the noisy
    stacks, σ and the catalogue rows, with the same per-galaxy streams as :func:`simulate`,
    so the arrays are identical to the ``.npz`` of the same seed — and write it; this
    process only merges the chunks' checksums and writes the manifest. No process ever
    holds more than a chunk.

    Parameters
    ----------
    url : str or path
        The store (``NAME.zarr`` or a URL, see :mod:`galdecon.data.chunked`).
    n, seed, snr, stamp_size, pixel_scale, psf_bank, psfs, population, optics
        As for :func:`simulate`.
    workers : int, optional
        Processes (default: the available cores, at most one per chunk); the result does
        not depend on it.
    chunk : int, optional
        Galaxies per chunk of the store (default :data:`galdecon.data.chunked.DEFAULT_CHUNK`).
    overwrite : bool
        Replace an existing store (once the new one is complete).
    compression : {'zstd', 'none'}
        Codec of the chunks.
    provenance : dict, optional
        ``command``, ``sources`` and ``run`` for the manifest; ``run`` is merged into the
        simulation's settings (the ``meta`` of :func:`simulate`).
    progress : callable, optional
        ``progress(done, n)`` after each chunk is written.

    Returns
    -------
    store : galdecon.data.chunked.Store
        Arrays ``truth``, ``psfs``, ``clean``, ``noisy_snr{S}``, ``sigma``, ``catalogue``
        (the members of the ``.npz``); the settings are ``store.provenance["run"]``.
    summary : ndarray
        The ``hlr``, ``e`` and ``clumpy`` fields of the catalogue.
    """
    from galdecon.data import chunked

    snr = tuple(float(s) for s in np.atleast_1d(snr))
    _check(n, snr, psf_bank, psfs, stamp_size)
    chunk = chunked.DEFAULT_CHUNK if chunk is None else int(chunk)
    if chunk < 1:
        raise ConfigError(f"chunk={chunk}: expected galaxies per chunk >= 1")
    psf_mode = "file" if psfs is not None else "bank" if psf_bank is not None else "field"
    config = {"seed": int(seed), "stamp_size": int(stamp_size),
              "pixel_scale": float(pixel_scale), "psf_mode": psf_mode,
              "population": dataclasses.asdict(population),
              "optics": dataclasses.asdict(optics)}
    provenance = dict(provenance or {})
    provenance["run"] = _meta(config, n, snr, psf_bank) | dict(provenance.get("run") or {})
    with chunked.create_store(url, overwrite=overwrite, provenance=provenance) as writer:
        bank = None if psf_mode == "field" else _bank(psf_mode, config, psf_bank, psfs, optics)
        psf_shape = (stamp_size, stamp_size) if bank is None else bank[0].shape[1:]
        for name, (shape, dtype) in _store_arrays(int(n), snr, stamp_size, psf_shape).items():
            writer.create_array(name, shape, dtype, chunk, compression)
        chunks = writer.chunk_bounds("truth")
        workers = min(workers or _available_cores(), len(chunks))
        summary = np.empty(int(n), dtype=[("hlr", "f8"), ("e", "f8"), ("clumpy", "?")])
        sums: dict = {}
        done = 0

        def collect(result):
            nonlocal done
            start, stop, chunk_sums, rows = result
            for name, value in chunk_sums.items():
                sums.setdefault(name, {}).update(value)
            summary[start:stop] = rows
            done += stop - start
            log.debug("simulate: %d/%d galaxies written", done, n)
            if progress is not None:
                progress(done, int(n))

        if workers <= 1:
            for a, b in chunks:
                collect(_simulate_chunk(writer, a, b, config, snr, bank))
        else:
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
                futures = [pool.submit(_simulate_chunk, writer, a, b, config, snr, bank)
                           for a, b in chunks]
                try:
                    for future in concurrent.futures.as_completed(futures):
                        collect(future.result())
                except BaseException as exc:
                    for future in futures:  # the store is removed: draw no more chunks
                        future.cancel()
                    if isinstance(exc, concurrent.futures.process.BrokenProcessPool):
                        raise EngineError(f"{url}: a simulation worker process died ({exc})"
                                          ) from None
                    raise
        return writer.finalize(sums), summary
