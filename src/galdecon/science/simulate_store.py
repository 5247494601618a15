"""Simulated data written straight into a chunked store, a chunk of galaxies at a time.

The same galaxies, PSFs and noise as :func:`galdecon.science.simulate.simulate` for the
same seed (the same per-galaxy streams), so the store's arrays equal the ``.npz``'s; no
process ever holds more than a chunk. Sky-limited noise needs every galaxy's signal before
its one σ is known, so it draws the galaxies twice: once for the signals, once to write
(the draws are deterministic, so both passes see the same galaxies).
"""

from __future__ import annotations

import logging

import numpy as np

from galdecon.errors import ConfigError
from galdecon.science.dataset import snr_label
from galdecon.science.population import PIXEL_SCALE, STAMP_SIZE, Optics, Population
from galdecon.science.render import model_chunk
from galdecon.science.simulate import (
    DEFAULT_FLUX_DEX,
    DEFAULT_SNR,
    add_noise,
    catalogue,
    catalogue_dtype,
    check_request,
    default_population,
    map_chunks,
    psf_choices,
    simulation_config,
    simulation_meta,
    sky_sigma,
)

log = logging.getLogger("galdecon")


def _store_arrays(n: int, snr, stamp_size: int, psf_shape) -> dict:
    """Name -> (shape, dtype) of the arrays of a simulated store, as in the .npz."""
    stack = (n, stamp_size, stamp_size)
    arrays = {"truth": (stack, np.float64), "psfs": ((n, *psf_shape), np.float64),
              "clean": (stack, np.float64)}
    for level in snr:
        arrays[f"noisy_snr{snr_label(level)}"] = (stack, np.float64)
    arrays["sigma"] = ((n, len(snr)), np.float64)
    for level in snr:
        arrays[f"sigma_snr{snr_label(level)}"] = ((n,), np.float64)
    arrays["catalogue"] = ((n,), catalogue_dtype(len(snr)))
    return arrays


def _chunk_signal(start: int, stop: int, config: dict, bank) -> tuple:
    """The signal std(HX_i) of galaxies ``start..stop-1`` (the first pass of sky noise)."""
    _, _, clean, _, _ = model_chunk(start, stop, config, bank)
    return start, clean.reshape(len(clean), -1).std(axis=1)


def _simulate_chunk(start: int, stop: int, writer, config: dict, snr: tuple, bank,
                    sky) -> tuple:
    """Draw galaxies ``start..stop-1`` completely and write them; return their checksums."""
    _, truth, clean, psfs, rows = model_chunk(start, stop, config, bank)
    noisy, sigma = add_noise(clean, snr, config["seed"], offset=start, sky=sky)
    table = catalogue(rows, np.asarray(snr), sigma, clean)
    blocks = {"truth": truth, "psfs": psfs, "clean": clean}
    blocks |= {f"noisy_snr{snr_label(level)}": noisy[float(level)] for level in snr}
    blocks |= {"sigma": sigma, "catalogue": table}
    blocks |= {f"sigma_snr{snr_label(level)}": sigma[:, k] for k, level in enumerate(snr)}
    sums = {name: writer.write_block(name, start, block) for name, block in blocks.items()}
    return start, stop, sums, table[["hlr", "e", "clumpy", "blend"]].copy()


def simulate_to_store(url, n: int, *, seed: int = 0, snr=DEFAULT_SNR,
                      stamp_size: int = STAMP_SIZE, pixel_scale: float = PIXEL_SCALE,
                      psf_bank: int | None = None, psfs=None,
                      population: Population | None = None, optics: Optics = Optics(),
                      model: str = "galsim", noise: str = "snr",
                      flux_dex: float = DEFAULT_FLUX_DEX,
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
    model, noise, flux_dex
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
        Arrays ``truth``, ``psfs``, ``clean``, ``noisy_snr{S}``, ``sigma``,
        ``sigma_snr{S}``, ``catalogue`` (the members of the ``.npz``); the settings are
        ``store.provenance["run"]``.
    summary : ndarray
        The ``hlr``, ``e``, ``clumpy`` and ``blend`` fields of the catalogue.
    """
    from galdecon.data import chunked  # zarr and fsspec: only when a store is written

    snr = tuple(float(s) for s in np.atleast_1d(snr))
    check_request(n, snr, psf_bank, psfs, stamp_size, model, noise, flux_dex)
    population = default_population(model) if population is None else population
    chunk = chunked.DEFAULT_CHUNK if chunk is None else int(chunk)
    if chunk < 1:
        raise ConfigError(f"chunk={chunk}: expected galaxies per chunk >= 1")
    config = simulation_config(seed, stamp_size, pixel_scale, psf_bank, psfs, population,
                               optics, model, noise, flux_dex)
    provenance = dict(provenance or {})
    provenance["run"] = simulation_meta(config, n, snr, psf_bank) | dict(
        provenance.get("run") or {})
    with chunked.create_store(url, overwrite=overwrite, provenance=provenance) as writer:
        bank = None if config["psf_mode"] == "field" else psf_choices(config, psf_bank, psfs,
                                                                      optics)
        psf_shape = (stamp_size, stamp_size) if bank is None else bank[0].shape[1:]
        for name, (shape, dtype) in _store_arrays(int(n), snr, stamp_size, psf_shape).items():
            writer.create_array(name, shape, dtype, chunk, compression)
        summary = np.empty(int(n), dtype=[("hlr", "f8"), ("e", "f8"), ("clumpy", "?"),
                                           ("blend", "?")])
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

        sky = _sky(int(n), config, snr, bank, writer.chunk_bounds("truth"), workers, url)
        # a failure leaves the writer's context: the unfinished store is removed
        map_chunks(_simulate_chunk, writer.chunk_bounds("truth"),
                   (writer, config, snr, bank, sky), workers, collect, str(url))
        return writer.finalize(sums), summary


def _sky(n: int, config: dict, snr: tuple, bank, chunks, workers, url):
    """The one σ per level of sky-limited noise (a first pass over the galaxies), or None."""
    if config["noise_mode"] != "sky":
        return None
    signal = np.empty(n)

    def collect(result):
        start, values = result
        signal[start:start + len(values)] = values

    map_chunks(_chunk_signal, chunks, (config, bank), workers, collect, str(url))
    return sky_sigma(signal, snr)
