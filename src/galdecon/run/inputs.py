"""The first step of a run: the inputs, validated, as in-memory stacks or a StoreStack."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from galdecon.data import io
from galdecon.data.sources import StoreStack
from galdecon.errors import ConfigError


def prepare_inputs(images, psfs, initial_primal=None, truth=None, dtype="float64",
                   names: dict | None = None, weights=None) -> dict:
    """Validate arrays (already read) and return them as working stacks.

    ``names`` maps ``images``/``psfs``/``primal``/``truth`` to the file names used in
    error messages (default: ``<images array>`` etc.). Anything that is not an array of
    real numbers (ragged lists, strings, complex, object arrays) is an InputError; the
    arrays given are never modified.
    """
    names = {k: f"<{k} array>" for k in ("images", "psfs", "primal", "truth", "weights")} \
        | (names or {})
    images = io.as_stack(io.as_array(images, names["images"], "image stack"), names["images"],
                         "image stack", dtype)
    psfs = io.validate_psfs(io.as_array(psfs, names["psfs"], "PSF array"), images.shape[0],
                            images.shape[1:], names["psfs"], dtype)
    out = {"images": images, "psfs": psfs, "primal": None, "truth": None, "weights": None}
    if weights is not None:
        out["weights"] = io.validate_weights(
            io.as_array(weights, names["weights"], "weights"), images, names["weights"])
    if initial_primal is not None:
        out["primal"] = io.validate_like(
            io.as_array(initial_primal, names["primal"], "initial primal"), images,
            names["primal"], "initial primal", dtype)
    if truth is not None:
        out["truth"] = io.validate_like(
            io.as_array(truth, names["truth"], "clean (truth) stack"), images, names["truth"],
            "clean (truth) stack", np.float64)
    return out


@dataclass
class Inputs:
    """A run's data: in-memory stacks, or a StoreStack the workers read block by block.

    Attributes
    ----------
    images, psfs, primal, truth : ndarray or None
        The validated in-memory stacks (None with a ``source``; ``truth`` is optional).
    weights : ndarray or None
        Per-pixel inverse variances (0 = masked), the images' shape, float64.
    source : StoreStack or None
        The stores, in the run's working dtype.
    """

    images: np.ndarray | None = None
    psfs: np.ndarray | None = None
    primal: np.ndarray | None = None
    truth: np.ndarray | None = None
    source: StoreStack | None = None
    weights: np.ndarray | None = None

    @property
    def n(self) -> int:
        """Number of galaxies."""
        return self.source.n if self.source is not None else self.images.shape[0]

    @property
    def shape(self) -> tuple:
        """Stamp shape (N0, N1)."""
        return self.source.shape if self.source is not None else self.images.shape[1:]

    @property
    def psfs_shape(self) -> tuple:
        """Shape of the PSF array ((k0, k1) when one PSF is shared)."""
        return self.source.psf_shape if self.source is not None else self.psfs.shape

    @property
    def chunk(self) -> int | None:
        """Galaxies per chunk of the stores (None in memory)."""
        return None if self.source is None else self.source.chunk

    def digests(self) -> dict:
        """Checksums of the images and PSFs (what a checkpoint must be resumed with)."""
        if self.source is not None:
            return self.source.digests()
        digests = {"images": io.array_digest(self.images), "psfs": io.array_digest(self.psfs)}
        if self.weights is not None:
            digests["weights"] = io.array_digest(self.weights)
        return digests


def read_inputs(images, psfs, initial_primal, truth, dtype: str,
                names: dict | None = None, weights=None) -> Inputs:
    """Validate in-memory arrays, or take a StoreStack (in ``dtype``, the caller's unchanged)."""
    if isinstance(images, StoreStack):  # read by the workers, block by block
        if psfs is not None or initial_primal is not None or truth is not None \
                or weights is not None:
            raise ConfigError("with stacks in chunked stores, the PSFs, the weights and the "
                              "initial primal come from the StoreStack (psfs=None); truth is "
                              "not supported")
        return Inputs(source=images.with_dtype(dtype))
    return Inputs(**prepare_inputs(images, psfs, initial_primal, truth, dtype, names, weights))
