r"""The noiseless observations of a chunk of galaxies, under either model of the sky.

``model="galsim"`` (the default of ``galdecon simulate``) renders the way the sky does: the
observation is GalSim's own convolution of the galaxy and the PSF profiles,
``galsim.Convolve([galaxy, psf]).drawImage(...)``, with the pixel response applied once by
the default draw method, on the stamp; the truth is the galaxy drawn with the pixel on the
same grid; the PSF handed to the solver is the stamp-sized image a user would have, drawn
without the pixel (the truth already carries it), unit sum and truncated by the stamp (a
Euclid-like PSF keeps ~95 % of its light in 41×41 pixels). No galdecon operator is used, so
the solver's model (discrete, periodic, truncated PSF) is an approximation of the data, as
it is of real data.

``model="discrete"`` is galdecon's own model,
:math:`HX_i = h_i \circledast X_i` with the periodic convolution of
:class:`galdecon.core.operators.Convolution`: the "inverse crime" under which the tables of
docs/science.md were measured, kept for comparison with them.

Sky-limited noise (``noise_mode="sky"``) scales each galaxy (truth and observation) by its
flux :func:`galaxy_fluxes`; per-galaxy SNR noise leaves every galaxy at unit flux in the
stamp.
"""

from __future__ import annotations

import numpy as np

from galdecon.core.operators.convolution import Convolution
from galdecon.science import galsim_import
from galdecon.science.population import (
    FLUX_STREAM,
    Optics,
    Population,
    centre_offset,
    draw_chunk,
    draw_psf_image,
    draw_truth,
    field_aberrations,
    galaxy_parameters,
    psf_profile,
    random_stream,
    scene_components,
)

MODELS = ("galsim", "discrete")
ABERRATIONS = ("defocus", "astig1", "astig2", "coma1", "coma2")
# Sky-limited fluxes follow Euclidean number counts, dN/dF ∝ F^-2.5 (N(>F) ∝ F^-1.5):
# most galaxies of a flux-limited sample lie near its faint limit.
COUNTS_SLOPE = 1.5


def galaxy_fluxes(seed: int, start: int, stop: int, dex: float) -> np.ndarray:
    """The fluxes of galaxies ``start..stop-1`` for sky-limited noise (median 1).

    Drawn from Euclidean counts :math:`N(>F) \\propto F^{-1.5}` between a faint limit and
    ``dex`` decades above it, each from its own stream ``(seed, FLUX_STREAM, i)``.
    """
    u = np.array([random_stream(seed, FLUX_STREAM, i).random() for i in range(start, stop)])
    span = 1.0 - 10.0 ** (-COUNTS_SLOPE * dex)

    def flux(q):  # the inverse of the truncated counts' distribution, from the faint limit
        return (1.0 - q * span) ** (-1.0 / COUNTS_SLOPE)

    return flux(u) / flux(0.5)


def bank_choice(row: dict, size: int) -> int:
    """The bank PSF (of ``size``) the galaxy's ``bank_draw`` picks."""
    return min(int(row["bank_draw"] * size), size - 1)


def model_chunk(start: int, stop: int, config: dict, bank=None) -> tuple:
    """Galaxies ``start..stop-1`` under ``config["model"]``: start, truth, clean, psfs, rows.

    ``bank`` is ``(images, rows)`` of the PSFs the galaxies choose from (a bank or a
    file), or None for one PSF per galaxy at its field position. With sky-limited noise
    the truth and the clean images are scaled by the galaxies' fluxes (``flux`` in the
    rows; 1 otherwise).
    """
    if config["model"] == "galsim":
        truth, clean, psfs, rows = render_chunk(start, stop, config, bank)
    else:
        _, truth, psfs, rows = draw_chunk(start, stop, config)
        if psfs is None:
            psfs = assign_psfs(rows, *bank)
        clean = Convolution(psfs, truth.shape[1:], "periodic").op(truth)
    fluxes = np.ones(stop - start)
    if config["noise_mode"] == "sky":
        fluxes = galaxy_fluxes(config["seed"], start, stop, config["flux_dex"])
        truth *= fluxes[:, None, None]
        clean *= fluxes[:, None, None]
    for row, flux in zip(rows, fluxes, strict=True):
        row["flux"] = float(flux)
    return start, truth, clean, psfs, rows


def assign_psfs(rows: list[dict], bank: np.ndarray, bank_rows: list[dict]) -> np.ndarray:
    """Give each galaxy the bank PSF its ``bank_draw`` picks; record it in its row."""
    choice = [bank_choice(row, bank.shape[0]) for row in rows]
    for row, b in zip(rows, choice, strict=True):
        row |= bank_rows[b] | {"psf_index": b}
    return bank[choice]


def render_chunk(start: int, stop: int, config: dict, bank=None) -> tuple:
    """GalSim's render of galaxies ``start..stop-1``: truth, clean, psfs, catalogue rows.

    Truth and observation are divided by the same number, the truth's flux in the stamp,
    so the truth sums to 1 and the observation holds what the PSF leaves in the stamp.
    """
    galsim = galsim_import.galsim("simulated data")
    population, optics = Population(**config["population"]), Optics(**config["optics"])
    size, scale, seed = config["stamp_size"], config["pixel_scale"], config["seed"]
    psf_shape = (size, size) if bank is None else bank[0].shape[1:]
    truth, clean = np.empty((2, stop - start, size, size))
    psfs = np.empty((stop - start, *psf_shape))
    rows, profiles = [], {}
    for j, index in enumerate(range(start, stop)):
        params = galaxy_parameters(seed, index, population)
        components = scene_components(params, population, size, scale)
        image = draw_truth(components, size, scale)
        psf, psfs[j] = _galaxy_psf(params, index, bank, profiles, optics, size, scale)
        galaxy = components[0] if len(components) == 1 else galsim.Add(components)
        observed = galsim.Convolve([galaxy, psf]).drawImage(
            nx=size, ny=size, scale=scale, dtype=np.float64,
            offset=centre_offset(size)).array
        params["flux_in_stamp"] = float(image.sum())
        truth[j] = image / params["flux_in_stamp"]
        clean[j] = observed / params["flux_in_stamp"]
        rows.append(params)
    return truth, clean, psfs, rows


def _galaxy_psf(params: dict, index: int, bank, profiles: dict, optics: Optics, size: int,
                scale: float):
    """The PSF profile a galaxy is seen through and the image the solver gets of it."""
    if bank is None:
        params |= field_aberrations(params["field_x"], params["field_y"], optics)
        psf = psf_profile({k: params[k] for k in ABERRATIONS}, optics, scale)
        image, params["psf_flux_in_stamp"] = draw_psf_image(psf, size, scale)
        params["psf_index"] = index
        return psf, image
    images, bank_rows = bank
    b = bank_choice(params, images.shape[0])
    params |= bank_rows[b] | {"psf_index": b}
    if b not in profiles:  # one profile per bank PSF a chunk uses
        profiles[b] = bank_profile(images[b], bank_rows[b], optics, scale)
    return profiles[b], images[b]


def bank_profile(image: np.ndarray, row: dict, optics: Optics, scale: float):
    """The profile of a bank PSF: its optics when known, else its image interpolated.

    A PSF from a file is taken to be what the solver gets, sampled without the pixel
    (the observation adds the pixel once); its origin is pixel ``(k//2, k//2)`` as for
    galdecon, and its flux is its sum, used as given.
    """
    if all(np.isfinite(row.get(k, np.nan)) for k in ABERRATIONS):
        return psf_profile({k: row[k] for k in ABERRATIONS}, optics, scale)
    galsim = galsim_import.galsim("simulated data")
    return galsim.InterpolatedImage(galsim.Image(np.ascontiguousarray(image), scale=scale),
                                    use_true_center=False, normalization="flux")
