r"""Simulated survey data with known truth: a GREAT3-like stack drawn with GalSim.

The galaxies and their PSFs (:mod:`galdecon.science.population`) are drawn on 41×41
stamps at 0.05″/pixel, each seen through a Euclid-like diffraction PSF from its field
position, or one of a bank of such PSFs, or one read from a file. The noiseless
observations come from one of two models (:mod:`galdecon.science.render`):
``model="galsim"`` (the default), GalSim's own convolution of the galaxy and PSF profiles
with the pixel response, the way the sky makes them; or ``model="discrete"``, galdecon's
own periodic convolution of the truth (ALGORITHM.md §8), the model of the tables in
docs/science.md. Then one noisy stack per SNR level,

.. math:: Y_i = HX_i + n_i, \qquad n_i \sim \mathcal N(0, \sigma_i^2),

with either per-galaxy noise, :math:`\sigma_i = \mathrm{std}(HX_i) / \mathrm{SNR}` (the
papers' convention, ``noise_mode="snr"``), or sky-limited noise, one σ for the whole stack
and galaxy fluxes spread over ``flux_dex`` decades, σ set so that the median over galaxies
of :math:`\mathrm{std}(HX_i)/\sigma` is the SNR (``noise_mode="sky"``).

Reproducibility: every random number of galaxy ``i`` comes from a generator seeded by
``(seed, i)``, so the data do not depend on how the galaxies are split among worker
processes, and :func:`write_dataset` writes the same bytes for the same data. The same
data go straight into a chunked store with
:func:`galdecon.science.simulate_store.simulate_to_store`.

GalSim is an optional dependency (``pip install galdecon[sim]``), imported only when
drawing; nothing is downloaded.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import multiprocessing
import os

import numpy as np

from galdecon.errors import ConfigError, EngineError
from galdecon.science import galsim_import
from galdecon.science.dataset import FORMAT as DATASET_FORMAT
from galdecon.science.dataset import export_npy, read_dataset, write_dataset

# re-exported: the population and its drawing were part of this module
from galdecon.science.population import (
    BULGE_DISK,
    NOISE_STREAM,
    PIXEL_SCALE,
    STAMP_SIZE,
    Optics,
    Population,
    draw_galaxy,
    draw_psf,
    draw_psf_bank,
    field_aberrations,
    galaxy_parameters,
    random_stream,
)
from galdecon.science.render import MODELS, assign_psfs, model_chunk

log = logging.getLogger("galdecon")

__all__ = ["BULGE_DISK", "DEFAULT_SNR", "MODELS", "NOISE_MODES", "PIXEL_SCALE", "STAMP_SIZE",
           "Optics", "Population", "add_noise", "assign_psfs", "default_population",
           "draw_galaxy", "draw_psf", "export_npy", "field_aberrations", "galaxy_parameters",
           "read_dataset", "simulate", "write_dataset"]

DEFAULT_SNR = (1.0, 2.0, 3.0, 5.0, 10.0)
NOISE_MODES = ("snr", "sky")
DEFAULT_FLUX_DEX = 0.5

CATALOGUE_FIELDS = [
    ("index", "i8"), ("hlr", "f8"), ("bulge_fraction", "f8"), ("e", "f8"), ("beta", "f8"),
    ("e1", "f8"), ("e2", "f8"), ("dx", "f8"), ("dy", "f8"), ("clumpy", "?"),
    ("knot_fraction", "f8"), ("n_knots", "i8"), ("flux_in_stamp", "f8"),
    ("field_x", "f8"), ("field_y", "f8"), ("psf_index", "i8"), ("defocus", "f8"),
    ("astig1", "f8"), ("astig2", "f8"), ("coma1", "f8"), ("coma2", "f8"),
    ("psf_flux_in_stamp", "f8"), ("sersic_n", "f8"), ("blend", "?"), ("blend_flux", "f8"),
    ("blend_dx", "f8"), ("blend_dy", "f8"), ("blend_hlr", "f8"), ("blend_sersic_n", "f8"),
    ("blend_e1", "f8"), ("blend_e2", "f8"), ("flux", "f8"),
]


def catalogue(rows: list[dict], snr: np.ndarray, sigma: np.ndarray,
              clean: np.ndarray) -> np.ndarray:
    r"""The catalogue: a structured array of the galaxy and PSF parameters, SNRs and σ.

    ``snr`` holds the levels; ``snr_galaxy`` each galaxy's own :math:`\mathrm{std}(HX_i)
    / \sigma_i` (the level itself under per-galaxy noise, spread under sky noise).
    """
    cat = np.zeros(len(rows), dtype=catalogue_dtype(snr.size))
    for name, _ in CATALOGUE_FIELDS:
        cat[name] = [row.get(name, np.nan) for row in rows]
    cat["snr"] = snr
    cat["sigma"] = sigma
    cat["snr_galaxy"] = clean.reshape(len(clean), -1).std(axis=1)[:, None] / sigma
    return cat


def catalogue_dtype(n_levels: int) -> np.dtype:
    """The catalogue's record type for ``n_levels`` SNR levels."""
    return np.dtype(CATALOGUE_FIELDS + [("snr", "f8", (n_levels,)),
                                        ("sigma", "f8", (n_levels,)),
                                        ("snr_galaxy", "f8", (n_levels,))])


def add_noise(clean: np.ndarray, snr, seed: int, offset: int = 0,
              sky: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    r"""Return ``({snr: noisy stack}, sigma)``, :math:`\sigma_i = \mathrm{std}(HX_i)/\mathrm{SNR}`.

    The noise of galaxy ``i`` at level ``s`` comes from its own stream ``(seed, i, s)``, so
    adding a level or a galaxy does not change the others. ``clean`` holds galaxies
    ``offset, offset + 1, ...`` (a chunk of a larger stack). ``sky``: one σ per level for
    every galaxy (:func:`sky_sigma`) instead of each galaxy's own.
    """
    snr = np.asarray(snr, dtype=np.float64)
    if sky is None:
        std = clean.reshape(clean.shape[0], -1).std(axis=1)
        sigma = std[:, None] / snr[None, :]
    else:
        sigma = np.repeat(np.asarray(sky, dtype=np.float64)[None, :], clean.shape[0], axis=0)
    noisy = {}
    for k, level in enumerate(snr):
        key = int(round(level * 1000))
        unit = np.stack([random_stream(seed, NOISE_STREAM, offset + i, key)
                         .standard_normal(clean.shape[1:]) for i in range(clean.shape[0])])
        noisy[float(level)] = clean + sigma[:, k, None, None] * unit
    return noisy, sigma


def sky_sigma(signal: np.ndarray, snr) -> np.ndarray:
    """Sky-limited noise: one σ per level, the median of ``signal`` (each std(HX_i)) / SNR.

    The median galaxy then has the SNR asked for; brighter ones more, fainter ones less.
    """
    return float(np.median(signal)) / np.asarray(snr, dtype=np.float64)


def check_request(n, snr, psf_bank, psfs, stamp_size, model: str = "galsim",
                  noise_mode: str = "snr", flux_dex: float = DEFAULT_FLUX_DEX) -> None:
    """Raise :class:`ConfigError` for a simulation that cannot be made as asked."""
    if model not in MODELS:
        raise ConfigError(f"model={model!r}: expected one of {', '.join(MODELS)}")
    if noise_mode not in NOISE_MODES:
        raise ConfigError(f"noise={noise_mode!r}: expected one of {', '.join(NOISE_MODES)}")
    if not np.isfinite(flux_dex) or flux_dex < 0:
        raise ConfigError(f"flux_dex={flux_dex!r}: expected decades >= 0")
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


def default_population(model: str) -> Population:
    """The population a model draws unless told: Sersic mix for GalSim's, bulge+disk else.

    The discrete model keeps the bulge+disk population of docs/science.md's tables, so
    that ``model="discrete"`` gives the data those tables were measured on, bit for bit.
    """
    return Population() if model == "galsim" else BULGE_DISK


def simulation_config(seed, stamp_size, pixel_scale, psf_bank, psfs, population: Population,
                      optics: Optics, model: str = "galsim", noise_mode: str = "snr",
                      flux_dex: float = DEFAULT_FLUX_DEX) -> dict:
    """The settings a worker process draws a chunk from (plain values, picklable)."""
    psf_mode = "file" if psfs is not None else "bank" if psf_bank is not None else "field"
    return {"model": model, "noise_mode": noise_mode, "flux_dex": float(flux_dex),
            "seed": int(seed), "stamp_size": int(stamp_size),
            "pixel_scale": float(pixel_scale), "psf_mode": psf_mode,
            "population": dataclasses.asdict(population),
            "optics": dataclasses.asdict(optics)}


def simulate(n: int, *, seed: int = 0, snr=DEFAULT_SNR, stamp_size: int = STAMP_SIZE,
             pixel_scale: float = PIXEL_SCALE, psf_bank: int | None = None, psfs=None,
             population: Population | None = None, optics: Optics = Optics(),
             model: str = "galsim", noise: str = "snr", flux_dex: float = DEFAULT_FLUX_DEX,
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
        The galaxy and telescope models (population default: :func:`default_population`
        of the model).
    model : {'galsim', 'discrete'}
        ``'galsim'``: GalSim's convolution of the galaxy and PSF profiles, the pixel
        applied once; ``'discrete'``: galdecon's periodic convolution of the truth with the
        PSF image (:mod:`galdecon.science.render`).
    noise : {'snr', 'sky'}
        ``'snr'``: :math:`\sigma_i = \mathrm{std}(HX_i)/\mathrm{SNR}` per galaxy; ``'sky'``:
        one σ per level (:func:`sky_sigma`), galaxy fluxes over ``flux_dex`` decades.
    flux_dex : float
        Decades the fluxes span under sky noise (:func:`galdecon.science.render.galaxy_fluxes`).
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
    :math:`Y_i = HX_i + \sigma_i\,\epsilon_i`; ``e1, e2`` in the catalogue are GalSim
    distortions (x = column).
    """
    snr = tuple(float(s) for s in np.atleast_1d(snr))
    check_request(n, snr, psf_bank, psfs, stamp_size, model, noise, flux_dex)
    population = default_population(model) if population is None else population
    config = simulation_config(seed, stamp_size, pixel_scale, psf_bank, psfs, population,
                               optics, model, noise, flux_dex)
    bank = None if config["psf_mode"] == "field" else psf_choices(config, psf_bank, psfs,
                                                                  optics)
    truth, clean, psf_stack, rows = _draw_all(int(n), config, bank, workers, chunk_size,
                                              progress)
    sky = sky_sigma(clean.reshape(len(clean), -1).std(axis=1), snr) if noise == "sky" \
        else None
    noisy, sigma = add_noise(clean, snr, seed, sky=sky)
    meta = simulation_meta(config, n, snr, psf_bank)
    return {"truth": truth, "psfs": psf_stack, "clean": clean, "noisy": noisy,
            "snr": np.asarray(snr), "sigma": sigma,
            "catalogue": catalogue(rows, np.asarray(snr), sigma, clean), "meta": meta}


def psf_choices(config: dict, psf_bank, psfs, optics: Optics) -> tuple[np.ndarray, list]:
    """The PSFs galaxies choose from (bank or file mode) and their catalogue entries."""
    if config["psf_mode"] == "bank":
        return draw_psf_bank(config["seed"], int(psf_bank), optics, config["stamp_size"],
                             config["pixel_scale"])
    bank = np.asarray(psfs, dtype=np.float64)
    bank = bank[None] if bank.ndim == 2 else bank
    # no field position or aberrations are known for PSFs from a file
    return bank, [{"field_x": np.nan, "field_y": np.nan}] * bank.shape[0]


NOISE_TEXT = {"snr": "sigma_i = std(H_i X_i) / SNR per galaxy",
              "sky": "one sigma per level = median_i std(H_i X_i) / SNR; fluxes over "
                     "flux_dex decades, N(>F) ~ F^-1.5"}
MODEL_TEXT = {"galsim": "galsim.Convolve([galaxy, psf]) drawn with the pixel; truth: the "
                        "galaxy drawn with the pixel; PSFs: no_pixel, unit sum, stamp-sized",
              "discrete": "periodic convolution of the truth with the PSF image (galdecon's "
                          "own model)"}


def simulation_meta(config: dict, n: int, snr, psf_bank) -> dict:
    """The settings of a simulation as recorded with it (the ``meta`` of :func:`simulate`)."""
    return config | {"format": DATASET_FORMAT, "version": 2, "n": int(n),
                     "snr": list(snr), "psf_bank": psf_bank,
                     "noise": NOISE_TEXT[config["noise_mode"]],
                     "observation": MODEL_TEXT[config["model"]],
                     "versions": _versions()}


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def map_chunks(task, chunks, args: tuple, workers: int | None, collect, what: str) -> None:
    """Run ``task(start, stop, *args)`` for every chunk, ``collect`` each result as it comes.

    ``workers`` processes (default: the available cores, at most one per chunk), or this
    one. After a failure the chunks not started are cancelled; a worker that died is an
    :class:`EngineError` naming ``what``.
    """
    workers = min(workers or available_cores(), len(chunks))
    if workers <= 1:
        for a, b in chunks:
            collect(task(a, b, *args))
        return
    # spawn, not fork: the parent may hold threads (BLAS, FFT pools).
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(task, a, b, *args) for a, b in chunks]
        try:
            for future in concurrent.futures.as_completed(futures):
                collect(future.result())
        except BaseException as exc:
            for future in futures:  # the work is lost anyway: draw no more chunks
                future.cancel()
            if isinstance(exc, concurrent.futures.process.BrokenProcessPool):
                raise EngineError(f"{what}: a simulation worker process died ({exc})"
                                  ) from None
            raise


def _draw_all(n, config, bank, workers, chunk_size, progress):
    size = config["stamp_size"]
    psf_shape = (size, size) if bank is None else bank[0].shape[1:]
    truth, clean = np.empty((n, size, size)), np.empty((n, size, size))
    psfs = np.empty((n, *psf_shape))
    rows: list = [None] * n
    chunks = [(a, min(a + chunk_size, n)) for a in range(0, n, chunk_size)]
    done = 0

    def store(result):
        nonlocal done
        start, t, c, p, r = result
        stop = start + len(r)
        truth[start:stop], clean[start:stop], psfs[start:stop] = t, c, p
        rows[start:stop] = r
        done += len(r)
        log.debug("simulate: %d/%d galaxies drawn", done, n)
        if progress is not None:
            progress(done, n)

    map_chunks(model_chunk, chunks, (config, bank), workers, store, "simulate")
    return truth, clean, psfs, rows


def _versions() -> dict:
    from galdecon.version import __version__

    galsim = galsim_import.galsim("simulated data")
    return {"galdecon": __version__, "galsim": galsim.__version__}
