"""Stacks read block by block, by whichever process runs the block: chunked stores.

A :class:`StoreStack` names where a run's images, PSFs (and optionally initial primal, or
a checkpoint's state) are held — arrays of :mod:`galdecon.data.chunked` stores — and knows
their shapes from the manifests alone. It is small and picklable: an engine sends it to
its workers, each of which reads, checks and casts only the galaxies of its own blocks
(:meth:`StoreStack.read`), so the driver never holds a pixel of the stack.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

import numpy as np

from galdecon.data import chunked
from galdecon.data.spec import split_array
from galdecon.data.validate import check_psfs_not_zero, validate_weights
from galdecon.errors import InputError

#: The solver state a checkpoint saves, per mode: the arrays of every galaxy. A low-rank
#: checkpoint written between two synchronisations also holds the iteration begun, its
#: ``pending`` ỹ (:data:`PENDING`).
STATE_NAMES = {"sparse": ("primal", "dual", "weights", "weights0"),
               "lowr": ("primal", "dual")}
PENDING = "pending"
#: The arrays a checkpoint's state may hold.
STATE_ARRAYS = STATE_NAMES["sparse"] + (PENDING,)


def split_spec(spec, default: str) -> tuple[str, str]:
    """``URL[name]`` → (URL, name); a plain URL → (URL, ``default``)."""
    return split_array(spec, default)


def is_store_spec(spec) -> bool:
    """Whether ``spec`` (``URL`` or ``URL[name]``) names an array of a stack store."""
    if spec is None:
        return False
    url, _ = split_spec(spec, "images")
    return chunked.is_store(url)


@dataclass
class StoreStack:
    """Where a run's stacks are read from, block by block (see module docstring).

    Attributes
    ----------
    images, psfs : (Store, str)
        The store and array name of the observed stamps and of the PSFs.
    primal : (Store, str) or None
        An initial primal.
    state : Store or None
        A checkpoint's saved arrays (``primal``, ``dual``, ``weights``, ``weights0``,
        ``pending``).
    dtype : str
        Working precision of the images and the primal.
    weights : (Store, str) or None
        Per-pixel inverse variances (0 = masked), the images' shape.
    """

    images: tuple
    psfs: tuple
    primal: tuple | None = None
    state: chunked.Store | None = None
    dtype: str = "float64"
    weights: tuple | None = None

    @classmethod
    def open(cls, images, psfs=None, primal=None, dtype: str = "float64",
             weights=None) -> StoreStack:
        """Open the stores named ``URL[array]`` and check their shapes (no pixel is read).

        ``psfs`` defaults to the ``psfs`` array of the images' store; ``weights`` (a
        ``URL[array]``, default array ``weights``) are optional.
        """
        url, name = split_spec(images, "images")
        image_store = chunked.open_store(url)
        psf_url, psf_name = split_spec(psfs if psfs is not None else url, "psfs")
        psf_store = image_store if psf_url == url else chunked.open_store(psf_url)
        out = cls(images=(image_store, name), psfs=(psf_store, psf_name), dtype=dtype)
        if primal is not None:
            p_url, p_name = split_spec(primal, "primal")
            out.primal = (chunked.open_store(p_url), p_name)
        if weights is not None:
            w_url, w_name = split_spec(weights, "weights")
            out.weights = (image_store if w_url == url else chunked.open_store(w_url), w_name)
        out._check()
        return out

    # -- shapes, from the manifests -------------------------------------------------------
    def _shape(self, pair) -> tuple:
        store, name = pair
        if name not in store.names:
            raise InputError(f"{store.url}: holds no array {name!r} (arrays: "
                             f"{', '.join(store.names)})")
        return tuple(store.shape(name))

    def _check(self) -> None:
        shape = self._shape(self.images)
        where = f"{self.images[0].url}[{self.images[1]}]"
        if len(shape) != 3 or 0 in shape:
            raise InputError(f"{where}: image stack of shape {shape}; expected (n, N0, N1)")
        psf = self._shape(self.psfs)
        p_where = f"{self.psfs[0].url}[{self.psfs[1]}]"
        if len(psf) not in (2, 3):
            raise InputError(f"{p_where}: PSFs of shape {psf}; expected (k0, k1) or "
                             "(n, k0, k1)")
        if len(psf) == 3 and psf[0] != shape[0]:
            raise InputError(f"{p_where}: {psf[0]} PSFs for {shape[0]} images; expected "
                             "exactly one PSF per image (or a single 2-D PSF)")
        if psf[-2] > shape[1] or psf[-1] > shape[2]:
            raise InputError(f"{p_where}: PSF shape {psf[-2:]} is larger than the stamp "
                             f"{shape[1:]}; expected PSFs no larger than the stamps")
        for pair, what in ((self.primal, "initial primal"), (self.weights, "weights")):
            if pair is not None and self._shape(pair) != shape:
                raise InputError(f"{pair[0].url}[{pair[1]}]: {what} shape "
                                 f"{self._shape(pair)} does not match the images {shape}")

    @property
    def n(self) -> int:
        """Number of galaxies."""
        return self._shape(self.images)[0]

    @property
    def shape(self) -> tuple[int, int]:
        """Stamp shape."""
        return self._shape(self.images)[1:]

    @property
    def psf_shape(self) -> tuple:
        """Shape of the PSF array ((k0, k1) when one is shared)."""
        return self._shape(self.psfs)

    @property
    def shared_psf(self) -> bool:
        """Whether one 2-D PSF serves every galaxy."""
        return len(self.psf_shape) == 2

    @property
    def chunk(self) -> int:
        """Galaxies per chunk of the images."""
        return self.images[0].chunk(self.images[1])

    def bounds(self, n_blocks: int) -> list[tuple[int, int]]:
        """Contiguous blocks of galaxies aligned to the images' chunks."""
        return self.images[0].block_bounds(min(int(n_blocks), self.n_chunks), self.images[1])

    @property
    def n_chunks(self) -> int:
        """Chunks of the images."""
        return len(self.images[0].chunk_bounds(self.images[1]))

    def digests(self) -> dict:
        """Digests of the images and PSFs from the manifests' chunk checksums (no pixels)."""
        out = {}
        pairs = (("images", self.images), ("psfs", self.psfs), ("weights", self.weights))
        for key, (store, name) in ((k, pair) for k, pair in pairs if pair is not None):
            entry = store.manifest["arrays"][name]
            text = json.dumps({k: entry.get(k) for k in ("shape", "dtype", "chunk",
                                                         "sha256")}, sort_keys=True)
            out[key] = "store:" + hashlib.sha256(text.encode()).hexdigest()
        return out

    def with_state(self, state: chunked.Store) -> StoreStack:
        """The same stacks, with a checkpoint's arrays to start from."""
        return replace(self, primal=None, state=state)

    def with_dtype(self, dtype) -> StoreStack:
        """The same stacks, read in working precision ``dtype``."""
        return replace(self, dtype=str(np.dtype(dtype)))

    # -- reading a block (on a worker) ------------------------------------------------------
    def read(self, start: int, stop: int) -> dict:
        """The arrays of galaxies ``[start, stop)``, checked and in the working dtype.

        Raises
        ------
        InputError
            A chunk is missing or corrupt, or a value is NaN/Inf (naming the galaxy).
        """
        store, name = self.images
        images = _finite(store.read(name, start, stop), store.url, name, start, "image")
        out = {"images": np.ascontiguousarray(images, dtype=self.dtype)}
        p_store, p_name = self.psfs
        psfs = p_store.read(p_name) if self.shared_psf else p_store.read(p_name, start, stop)
        offset = 0 if self.shared_psf else start
        psfs = _finite(psfs, p_store.url, p_name, offset, "PSF")
        check_psfs_not_zero(psfs, f"{p_store.url}[{p_name}]", offset, whole=False)
        out["psfs"] = np.ascontiguousarray(psfs, dtype=self.dtype)
        out["primal"] = None
        if self.primal is not None:
            q_store, q_name = self.primal
            out["primal"] = np.ascontiguousarray(
                _finite(q_store.read(q_name, start, stop), q_store.url, q_name, start,
                        "initial primal"), dtype=self.dtype)
        out["pixel_weights"] = None
        if self.weights is not None:
            w_store, w_name = self.weights
            weights = _finite(w_store.read(w_name, start, stop), w_store.url, w_name, start,
                              "the weights of image")
            out["pixel_weights"] = validate_weights(weights, images,
                                                    f"{w_store.url}[{w_name}]", start)
        for key in STATE_ARRAYS:
            out.setdefault(key, None)
        if self.state is not None:
            for key in STATE_ARRAYS:
                if key in self.state.names:
                    out[key] = self.state.read(key, start, stop)
        return out


def _finite(array: np.ndarray, url: str, name: str, start: int, what: str) -> np.ndarray:
    if array.dtype.kind not in "fiu":
        raise InputError(f"{url}[{name}]: data type {array.dtype} is not supported; expected "
                         "real numbers")
    finite = np.isfinite(array)
    if not finite.all():
        per = finite.reshape(array.shape[0], -1).all(axis=1) if array.ndim == 3 else [False]
        index = start + int(np.argmin(per))
        raise InputError(f"{url}[{name}]: {what} {index} contains NaN or Inf")
    return array
