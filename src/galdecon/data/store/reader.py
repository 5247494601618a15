"""Reading a complete store: :class:`Store` and :func:`open_store`."""

from __future__ import annotations

import json
import os

import numpy as np

from galdecon.data.digest import chunk_sha256
from galdecon.data.store.location import Where
from galdecon.data.store.manifest import validate_manifest
from galdecon.data.store.schema import MANIFEST, bounds, from_storage, storage_layout
from galdecon.data.store.zarrio import chunk_key, open_array
from galdecon.errors import ConfigError, EngineError, InputError


def _galaxies(a: int, b: int) -> str:
    return f"galaxy {a}" if b - a == 1 else f"galaxies {a} to {b - 1}"


class Store:
    """A complete stack store, opened by :func:`open_store`; reads blocks of galaxies.

    A Store is small and picklable (it holds the manifest, not the data), so it can be
    shipped to workers that each read their own block.
    """

    def __init__(self, where: Where, manifest: dict):
        self._where = where
        self.manifest = manifest
        self._zcache: dict = {}

    def __getstate__(self):
        return {"_where": self._where, "manifest": self.manifest, "_zcache": {}}

    def __repr__(self) -> str:
        arrays = ", ".join(f"{k}{tuple(v['shape'])}" for k, v in self._arrays.items())
        return f"Store({self.url!r}: {arrays})"

    @property
    def url(self) -> str:
        """The store's location, as given."""
        return self._where.url

    @property
    def _arrays(self) -> dict:
        return self.manifest["arrays"]

    @property
    def names(self) -> tuple[str, ...]:
        """The arrays held, in the order they were written."""
        return tuple(self._arrays)

    @property
    def n_galaxies(self) -> int | None:
        """Length of the galaxy axis (None when only a shared PSF is held)."""
        return self.manifest["n_galaxies"]

    @property
    def provenance(self) -> dict:
        """Command, galdecon version, creation time, sources and run facts."""
        return self.manifest.get("provenance", {})

    def _spec(self, name: str) -> dict:
        try:
            return self._arrays[name]
        except KeyError:
            raise InputError(f"{self.url}: no array {name!r} in the store (arrays: "
                             f"{', '.join(self.names)})") from None

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of array ``name``."""
        return tuple(self._spec(name)["shape"])

    def dtype(self, name: str) -> np.dtype:
        """Data type of array ``name`` (little-endian)."""
        return np.lib.format.descr_to_dtype(self._spec(name)["dtype"])

    def chunk(self, name: str) -> int:
        """Galaxies per chunk of array ``name``."""
        return int(self._spec(name)["chunk"])

    def per_galaxy(self, name: str) -> bool:
        """Whether axis 0 of ``name`` is the galaxy axis (False for a shared 2-D PSF)."""
        return bool(self._spec(name)["per_galaxy"])

    def chunk_bounds(self, name: str) -> list[tuple[int, int]]:
        """``(start, stop)`` of every chunk of ``name`` along axis 0."""
        return bounds(self.shape(name)[0], self.chunk(name))

    def block_bounds(self, n_blocks: int, name: str | None = None) -> list[tuple[int, int]]:
        """Split the galaxies into contiguous blocks, aligned to chunks where possible.

        Parameters
        ----------
        n_blocks : int
            Blocks wanted. Up to the number of chunks, whole chunks are dealt out as evenly
            as possible (every block reads only its own chunks); beyond it, the galaxies
            are split evenly (blocks may share a chunk); beyond the number of galaxies,
            one galaxy per block.
        name : str, optional
            The array whose chunks are followed (default: ``images`` if held, else the
            first per-galaxy array).

        Returns
        -------
        list of (int, int)
        """
        if int(n_blocks) < 1:
            raise ConfigError(f"n_blocks={n_blocks!r}: expected an integer >= 1")
        if name is None:
            galaxy_arrays = [k for k in self.names if self.per_galaxy(k)]
            if not galaxy_arrays:
                raise InputError(f"{self.url}: holds no per-galaxy array")
            name = "images" if "images" in galaxy_arrays else galaxy_arrays[0]
        chunks = self.chunk_bounds(name)
        n = self.shape(name)[0]
        if int(n_blocks) <= len(chunks):
            edges = np.linspace(0, len(chunks), int(n_blocks) + 1).round().astype(int)
            return [(chunks[a][0], chunks[b - 1][1]) for a, b in zip(edges[:-1], edges[1:],
                                                                      strict=True)]
        n_blocks = min(int(n_blocks), n)
        edges = np.linspace(0, n, n_blocks + 1).round().astype(int)
        return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]

    def _zarray(self, name: str):
        if name not in self._zcache:
            spec = self._spec(name)
            try:
                array = open_array(self._where, name, "r")
            except EngineError:
                raise
            except Exception as exc:  # zarr/fsspec raise many kinds
                raise InputError(f"{self.url}: array {name!r} cannot be opened "
                                 f"({type(exc).__name__}: {exc})") from None
            shape, dtype = storage_layout(spec)
            if (tuple(array.shape) != shape or np.dtype(array.dtype) != dtype
                    or int(array.chunks[0]) != int(spec["chunk"])
                    or tuple(array.chunks[1:]) != shape[1:]):
                raise InputError(f"{self.url}: array {name!r} is stored with shape "
                                 f"{tuple(array.shape)}, dtype {array.dtype}, chunks "
                                 f"{tuple(array.chunks)}; the manifest says shape {shape}, "
                                 f"dtype {dtype}, {spec['chunk']} galaxies per chunk")
            self._zcache[name] = array
        return self._zcache[name]

    def _read_chunk(self, name: str, index: int) -> np.ndarray:
        spec = self._spec(name)
        a, b = self.chunk_bounds(name)[index]
        where = (f"{self.url}: array {name!r} chunk {index} ("
                 + (_galaxies(a, b) if spec["per_galaxy"] else "the shared PSF") + ")")
        key = chunk_key(name, index, len(storage_layout(spec)[0]))
        try:
            present = self._where.exists(key)
        except Exception as exc:
            raise InputError(f"{where}: cannot be checked ({type(exc).__name__}: {exc})"
                             ) from None
        if not present:
            raise InputError(f"{where} is missing (no {key})")
        array = self._zarray(name)
        try:
            data = from_storage(np.asarray(array[a:b]), spec)
        except Exception as exc:  # a corrupt chunk fails in the codec
            raise InputError(f"{where} is unreadable ({type(exc).__name__}: {exc})") from None
        digest = chunk_sha256(data)
        if digest != spec["sha256"][index]:
            raise InputError(f"{where} is corrupt: its SHA-256 is {digest[:16]}..., the "
                             f"manifest says {spec['sha256'][index][:16]}...")
        return data

    def read(self, name: str, start: int | None = None, stop: int | None = None,
             verify: bool = True) -> np.ndarray:
        """Read galaxies ``[start, stop)`` of array ``name``, touching only their chunks.

        Parameters
        ----------
        name : str
            The array (``images``, ``psfs``, ...).
        start, stop : int, optional
            Galaxy range (default: all). Ignored for a shared 2-D PSF, which is returned
            whole.
        verify : bool
            Check that every chunk read is present and has the manifest's SHA-256 (whole
            chunks are read for this). ``False`` reads just the range, unchecked (a
            missing chunk then reads as zeros).

        Returns
        -------
        ndarray
            A new array of the stored dtype.

        Raises
        ------
        InputError
            Unknown array; a chunk missing, unreadable or whose checksum differs (naming
            the array, the chunk index and its galaxies).
        """
        spec = self._spec(name)
        n = int(spec["shape"][0])
        if not spec["per_galaxy"]:
            start, stop = 0, n
        start = 0 if start is None else int(start)
        stop = n if stop is None else int(stop)
        if not 0 <= start <= stop <= n:
            raise ConfigError(f"{self.url}: galaxies [{start}, {stop}) of {name!r}: expected "
                              f"0 <= start <= stop <= {n}")
        chunk = int(spec["chunk"])
        if verify and start % chunk == 0 and stop == min(start + chunk, n):
            return self._read_chunk(name, start // chunk)  # exactly one chunk: no copy
        out = np.empty((stop - start,) + tuple(spec["shape"][1:]), dtype=self.dtype(name))
        if stop == start:
            return out
        if not verify:
            try:
                out[...] = from_storage(np.asarray(self._zarray(name)[start:stop]), spec)
            except InputError:
                raise
            except Exception as exc:
                raise InputError(f"{self.url}: array {name!r}, {_galaxies(start, stop)} "
                                 f"unreadable ({type(exc).__name__}: {exc})") from None
            return out
        for index in range(start // chunk, (stop - 1) // chunk + 1):
            a = index * chunk
            data = self._read_chunk(name, index)
            lo, hi = max(a, start), min(a + len(data), stop)
            out[lo - start:hi - start] = data[lo - a:hi - a]
        return out


def open_store(url, storage_options: dict | None = None) -> Store:
    """Open a complete stack store: read and validate its manifest.

    Parameters
    ----------
    url : str or path
        Local path, ``file://`` URL or fsspec URL (``s3://``, ``gs://``, ``hdfs://``...).
    storage_options : dict, optional
        Passed to the fsspec filesystem (credentials, endpoint, ...).

    Returns
    -------
    Store

    Raises
    ------
    InputError
        No store there, no manifest (an incomplete store), or a garbled manifest.
    EngineError
        zarr/fsspec (or the URL's fsspec filesystem) not installed.
    """
    where = Where(url, storage_options)
    if where.local is not None and not where.local.exists():
        raise InputError(f"{url}: store not found")
    try:
        raw = where.read_bytes(MANIFEST)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise InputError(f"{url}: no {MANIFEST} manifest: not a galdecon stack store, or an "
                         "incomplete one (the manifest is written last)") from None
    except ImportError as exc:
        raise EngineError(f"{url}: no filesystem for this URL ({exc}); install the fsspec "
                          "filesystem package of its scheme (s3fs, gcsfs, ...)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{url}: cannot read {MANIFEST} ({type(exc).__name__}: {exc})"
                         ) from None
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{url}: {MANIFEST} is not valid JSON ({exc})") from None
    return Store(where, validate_manifest(manifest, os.fspath(url)))
