"""Chunked stacks on disk: a Zarr group chunked along the galaxy axis, with a manifest.

A **stack store** lives at a URL: a local path (a directory ``NAME.zarr``), a ``file://``
URL, or any URL an installed fsspec filesystem understands (``s3://`` with s3fs,
``gs://`` with gcsfs, ``hdfs://`` with pyarrow, ...). It holds

- one Zarr array (Zarr format 2, readable by zarr-python 2 and 3 and other Zarr
  libraries) per stack, among ``images``, ``psfs``, ``truth``, ``primal``, ``dual`` (and
  any other name, e.g. the ``clean`` and ``noisy_snr{S}`` stacks of a simulation), each
  chunked along axis 0 only — the galaxy axis — so that a worker reads the galaxies of its
  block and nothing else; ``psfs`` may instead be one shared 2-D PSF (a single chunk);
- ``galdecon.json``, the manifest, written last: the format and its version, for each
  array its shape, dtype, chunk length and a SHA-256 per chunk (of the chunk's galaxies as
  raw little-endian C-order bytes, so independent of the Zarr codecs), and the provenance
  (command, galdecon version, time of creation, source files and their SHA-256, a
  free-form ``run`` dict).

A store without its manifest is incomplete and is refused by :func:`open_store`. Locally,
:func:`create_store` writes into a temporary sibling directory ``.NAME.zarr.tmp-XXXX`` and
:meth:`StoreWriter.finalize` renames it onto ``NAME.zarr``, so a failed write never leaves
anything under the final name, and ``overwrite=True`` replaces an old store only once the
new one is complete. Object stores have no rename: a remote store is written in place and
is complete only when its manifest appears (``overwrite=True`` deletes the old store,
manifest first, before writing).

Structured arrays (a simulation's catalogue) are stored as their raw little-endian records,
``(n, itemsize)`` bytes, with the numpy dtype in the manifest.

zarr and fsspec are an optional extra (``pip install 'galdecon[chunked]'``), imported only
when a store is opened or written.

Examples
--------
>>> writer = create_store("stack.zarr")                          # doctest: +SKIP
>>> writer.create_array("images", images.shape, images.dtype, chunk=1000)  # doctest: +SKIP
>>> for start, stop in writer.chunk_bounds("images"):            # doctest: +SKIP
...     writer.write_block("images", start, images[start:stop])
>>> store = writer.finalize()                                    # doctest: +SKIP
>>> store.read("images", 2500, 3000).shape                       # doctest: +SKIP
(500, 41, 41)
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from galdecon.errors import ConfigError, EngineError, InputError, OutputError
from galdecon.data.digest import chunk_sha256, sha256
from galdecon.data.output import fsync_dir, json_default

FORMAT = "galdecon-stack"
FORMAT_VERSION = 1
MANIFEST = "galdecon.json"
DEFAULT_CHUNK = 1024
KNOWN_ARRAYS = ("images", "psfs", "truth", "primal", "dual")
COMPRESSIONS = ("zstd", "none")
INSTALL_HINT = "pip install 'galdecon[chunked]'"
ZARR_FORMAT = 2
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_RESERVED = {MANIFEST, ".zgroup", ".zattrs", ".zarray", "zarr.json"}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# Dimensions of the arrays with a fixed meaning (3 = (n, N0, N1)).
_NDIM = {"images": (3,), "truth": (3,), "primal": (3,), "psfs": (2, 3)}
_DTYPE_KINDS = "biufc"

__all__ = ["DEFAULT_CHUNK", "FORMAT", "FORMAT_VERSION", "KNOWN_ARRAYS", "MANIFEST", "Store",
           "StoreWriter", "create_store", "is_store", "make_provenance", "open_store",
           "write_store"]


# -- optional dependencies -----------------------------------------------------------------

def _zarr():
    try:
        import zarr
    except ImportError:
        raise EngineError(f"chunked stacks (.zarr) need zarr and fsspec: {INSTALL_HINT}"
                          ) from None
    return zarr


def _zarr_major() -> int:
    return int(_zarr().__version__.split(".")[0])


def _fsspec():
    try:
        import fsspec
    except ImportError:
        raise EngineError(f"stores at URLs need fsspec: {INSTALL_HINT}") from None
    return fsspec


# -- where a store lives -----------------------------------------------------------------

class _Where:
    """A store location: a local directory, or a URL reached through fsspec."""

    def __init__(self, url, storage_options: dict | None = None):
        text = os.fspath(url)
        self.url = text
        self.storage_options = dict(storage_options or {})
        self.local: Path | None = None
        if "://" not in text:
            self.local = Path(text)
        else:
            parsed = urllib.parse.urlsplit(text)
            if parsed.scheme == "file":
                if parsed.netloc not in ("", "localhost"):
                    raise InputError(f"{text}: a file:// URL cannot name a host; "
                                     "expected file:///absolute/path")
                self.local = Path(urllib.parse.unquote(parsed.path))
        self._fs = None

    @property
    def root(self) -> str:
        """What zarr is given: the local path, or the URL."""
        return str(self.local) if self.local is not None else self.url.rstrip("/")

    def _remote(self):
        if self._fs is None:
            fs, path = _fsspec().core.url_to_fs(self.url, **self.storage_options)
            self._fs = (fs, path.rstrip("/"))
        return self._fs

    def exists(self, rel: str = "") -> bool:
        if self.local is not None:
            return (self.local / rel).exists() if rel else self.local.exists()
        fs, path = self._remote()
        return fs.exists(f"{path}/{rel}" if rel else path)

    def read_bytes(self, rel: str) -> bytes:
        """Read a file of the store (FileNotFoundError when absent)."""
        if self.local is not None:
            return (self.local / rel).read_bytes()
        fs, path = self._remote()
        return fs.cat_file(f"{path}/{rel}")

    def write_bytes(self, rel: str, data: bytes) -> None:
        if self.local is not None:
            with open(self.local / rel, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            return
        fs, path = self._remote()
        fs.pipe_file(f"{path}/{rel}", data)

    def remove(self, rel: str) -> None:
        if self.local is not None:
            (self.local / rel).unlink(missing_ok=True)
            return
        fs, path = self._remote()
        if fs.exists(f"{path}/{rel}"):
            fs.rm_file(f"{path}/{rel}")

    def remove_tree(self) -> None:
        if self.local is not None:
            shutil.rmtree(self.local, ignore_errors=True)
            return
        fs, path = self._remote()
        if fs.exists(path):
            fs.rm(path, recursive=True)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_fs"} | {"_fs": None}


def is_store(url) -> bool:
    """Whether ``url`` names a chunked stack store rather than an npy/FITS/npz file.

    Decided by the name or the content, without validating it (:func:`open_store` does):
    a name ending in ``.zarr``, an existing local directory holding a ``galdecon.json``
    manifest or Zarr group metadata, or any URL with a scheme other than ``file://``
    (galdecon reads and writes only stores at URLs).

    Parameters
    ----------
    url : str or path
        Local path, ``file://`` URL or fsspec URL. A remote filesystem is not contacted.

    Returns
    -------
    bool
    """
    where = _Where(url)
    if where.url.rstrip("/").lower().endswith(".zarr"):
        return True
    if where.local is None:
        return True
    local = where.local
    try:
        return local.is_dir() and any((local / name).is_file()
                                      for name in (MANIFEST, ".zgroup", "zarr.json"))
    except (OSError, ValueError):  # a name too long, a NUL byte: not a store
        return False


# -- helpers on arrays -------------------------------------------------------------------

def _little(dtype: np.dtype) -> np.dtype:
    return np.dtype(dtype).newbyteorder("<")


def _check_dtype(dtype, what: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.names is not None:
        if dtype.hasobject or any(dtype.fields[f][0].base.kind not in _DTYPE_KINDS
                                  for f in dtype.names):
            raise ConfigError(f"{what}: structured dtype {dtype} has non-numeric fields; "
                              "only numbers (and records of numbers) are stored")
        return _little(dtype)
    if dtype.kind not in _DTYPE_KINDS or dtype.subdtype is not None:
        raise ConfigError(f"{what}: data type {dtype} is not supported; expected numbers "
                          "(bool, integer, float or complex) or records of numbers")
    return _little(dtype)


def _bounds(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(a, min(a + chunk, n)) for a in range(0, n, chunk)]


def _galaxies(a: int, b: int) -> str:
    return f"galaxy {a}" if b - a == 1 else f"galaxies {a} to {b - 1}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def make_provenance(command: str | None = None, sources=(), run: dict | None = None) -> dict:
    """The provenance recorded in a store's manifest.

    Parameters
    ----------
    command : str, optional
        The command line (or call) that made the store.
    sources : iterable
        Source files: paths (checksummed here; a store's manifest is checksummed, a file
        ``path[HDU]`` names its file) or ready ``{"path": ..., "sha256": ...}`` dicts.
    run : dict, optional
        Free-form, JSON-serialisable facts of the run (e.g. a simulation's settings).

    Returns
    -------
    dict
        ``command``, ``galdecon_version``, ``created`` (UTC, ISO 8601), ``sources`` and
        ``run``.
    """
    from galdecon.version import __version__

    listed = []
    for source in sources:
        if isinstance(source, Mapping):
            listed.append(dict(source))
            continue
        text = os.fspath(source)
        if is_store(text):
            where = _Where(text)
            try:
                digest = hashlib.sha256(where.read_bytes(MANIFEST)).hexdigest()
            except (OSError, ValueError):
                digest = None
            listed.append({"path": text, "sha256": digest, "of": MANIFEST})
        else:
            listed.append({"path": text, "sha256": sha256(text)})
    return {"command": command, "galdecon_version": __version__, "created": _now(),
            "sources": listed, "run": dict(run or {})}


# -- the Zarr calls (zarr-python 2 and 3) --------------------------------------------------

def _compressor(compression):
    if compression in (None, "none"):
        return None
    if compression != "zstd":
        raise ConfigError(f"compression {compression!r}: expected one of "
                          f"{', '.join(COMPRESSIONS)}")
    _zarr()
    import numcodecs

    return numcodecs.Zstd(level=1)


def _zarr_kwargs(where: _Where) -> dict:
    return {"storage_options": where.storage_options} if where.storage_options else {}


def _zarr_create_group(where: _Where):
    zarr = _zarr()
    if _zarr_major() >= 3:
        return zarr.open_group(store=where.root, mode="w", zarr_format=ZARR_FORMAT,
                               **_zarr_kwargs(where))
    return zarr.open_group(store=where.root, mode="w", **_zarr_kwargs(where))


def _zarr_create_array(group, name, shape, dtype, chunks, compression) -> None:
    compressor = _compressor(compression)
    if _zarr_major() >= 3:
        group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                           compressors=compressor)
    else:
        group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                             compressor=compressor, write_empty_chunks=True)


def _zarr_open_array(where: _Where, name: str, mode: str):
    zarr = _zarr()
    if _zarr_major() >= 3:
        # Every chunk is stored, even one of zeros, so that a missing chunk file is an error.
        with zarr.config.set({"array.write_empty_chunks": True}):
            return zarr.open_array(store=where.root, path=name, mode=mode,
                                   zarr_format=ZARR_FORMAT, **_zarr_kwargs(where))
    return zarr.open_array(store=where.root, path=name, mode=mode, write_empty_chunks=True,
                           **_zarr_kwargs(where))


def _chunk_key(name: str, index: int, ndim: int) -> str:
    # Zarr format 2, dimension separator ".": chunk (i, 0, ..., 0) is the file "i.0...0".
    return f"{name}/" + ".".join([str(index)] + ["0"] * (ndim - 1))


# -- array specification -----------------------------------------------------------------

def _storage(spec: dict) -> tuple[tuple, np.dtype]:
    """Shape and dtype of the Zarr array holding an array of ``spec``."""
    dtype = np.lib.format.descr_to_dtype(spec["dtype"])
    shape = tuple(spec["shape"])
    if spec["storage"] == "records":
        return shape + (dtype.itemsize,), np.dtype(np.uint8)
    return shape, dtype


def _to_storage(data: np.ndarray, spec: dict) -> np.ndarray:
    if spec["storage"] == "records":
        data = np.ascontiguousarray(data)
        return data.reshape(-1).view(np.uint8).reshape(data.shape + (data.dtype.itemsize,))
    return data


def _from_storage(raw: np.ndarray, spec: dict) -> np.ndarray:
    dtype = np.lib.format.descr_to_dtype(spec["dtype"])
    if spec["storage"] == "records":
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        return raw.reshape(-1).view(dtype).reshape(raw.shape[:-1])
    return np.asarray(raw, dtype=dtype)


def _validate_manifest(manifest, url: str) -> dict:
    def bad(what):
        return InputError(f"{url}: {MANIFEST} is malformed: {what}")

    if not isinstance(manifest, dict):
        raise bad("not a JSON object")
    if manifest.get("format") != FORMAT:
        raise InputError(f"{url}: {MANIFEST} has format {manifest.get('format')!r}; "
                         f"expected {FORMAT!r}")
    version = manifest.get("version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise InputError(f"{url}: {MANIFEST} is format version {version!r}; this galdecon "
                         f"reads versions 1 to {FORMAT_VERSION} (upgrade galdecon)")
    arrays = manifest.get("arrays")
    if not isinstance(arrays, dict) or not arrays:
        raise bad("no arrays")
    lengths = set()
    for name, spec in arrays.items():
        try:
            shape = tuple(int(v) for v in spec["shape"])
            np.lib.format.descr_to_dtype(spec["dtype"])
            chunk = int(spec["chunk"])
            sums = spec["sha256"]
            per_galaxy = spec["per_galaxy"]
            storage = spec["storage"]
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"array {name!r}: {type(exc).__name__}: {exc}") from None
        if not _NAME.match(name) or not shape or min(shape) < 1 or chunk < 1:
            raise bad(f"array {name!r}: name, shape {shape} or chunk {chunk} invalid")
        if storage not in ("plain", "records") or not isinstance(per_galaxy, bool):
            raise bad(f"array {name!r}: storage {storage!r} or per_galaxy {per_galaxy!r}")
        n_chunks = -(-shape[0] // chunk)
        if (not isinstance(sums, list) or len(sums) != n_chunks
                or not all(isinstance(s, str) and _HEX64.match(s) for s in sums)):
            raise bad(f"array {name!r}: expected {n_chunks} SHA-256 hex digests")
        if per_galaxy:
            lengths.add(shape[0])
    if len(lengths) > 1 or manifest.get("n_galaxies") != (lengths.pop() if lengths else None):
        raise bad(f"n_galaxies {manifest.get('n_galaxies')!r} does not match the arrays")
    if not isinstance(manifest.get("provenance", {}), dict):
        raise bad("provenance is not an object")
    return manifest


# -- reading -----------------------------------------------------------------------------

class Store:
    """A complete stack store, opened by :func:`open_store`; reads blocks of galaxies.

    A Store is small and picklable (it holds the manifest, not the data), so it can be
    shipped to workers that each read their own block.
    """

    def __init__(self, where: _Where, manifest: dict):
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
        return _bounds(self.shape(name)[0], self.chunk(name))

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
                array = _zarr_open_array(self._where, name, "r")
            except EngineError:
                raise
            except Exception as exc:  # zarr/fsspec raise many kinds
                raise InputError(f"{self.url}: array {name!r} cannot be opened "
                                 f"({type(exc).__name__}: {exc})") from None
            shape, dtype = _storage(spec)
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
        key = _chunk_key(name, index, len(_storage(spec)[0]))
        try:
            present = self._where.exists(key)
        except Exception as exc:
            raise InputError(f"{where}: cannot be checked ({type(exc).__name__}: {exc})"
                             ) from None
        if not present:
            raise InputError(f"{where} is missing (no {key})")
        array = self._zarray(name)
        try:
            data = _from_storage(np.asarray(array[a:b]), spec)
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
                out[...] = _from_storage(np.asarray(self._zarray(name)[start:stop]), spec)
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
    where = _Where(url, storage_options)
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
    return Store(where, _validate_manifest(manifest, os.fspath(url)))


# -- writing -----------------------------------------------------------------------------

def _looks_like_store(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists()
                                 for name in (MANIFEST, ".zgroup", "zarr.json"))


class StoreWriter:
    """Writes a new store; made by :func:`create_store`.

    Create every array first (:meth:`create_array`), then write blocks of whole chunks
    (:meth:`write_block`) — from this process or from others: the writer is picklable, and
    each :meth:`write_block` returns the checksums of the chunks it wrote, which
    :meth:`finalize` merges before it writes the manifest. Used as a context manager, the
    store is removed (:meth:`abort`) when the block raises before :meth:`finalize`.
    """

    def __init__(self, where: _Where, work: _Where, provenance: dict, replace: bool):
        self._where = where
        self._work = work
        self._provenance = provenance
        self._replace = replace
        self._arrays: dict[str, dict] = {}
        self._sums: dict[str, dict[int, str]] = {}
        self._zcache: dict = {}
        self._group = None
        self._done = False

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_zcache={}, _group=None, _sums={k: {} for k in self._sums})
        return state

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and not self._done:
            self.abort()

    @property
    def url(self) -> str:
        """The final location of the store."""
        return self._where.url

    @property
    def work_url(self) -> str:
        """Where the data are written until :meth:`finalize` (a temporary sibling locally)."""
        return self._work.root

    def _check_open(self):
        if self._done:
            raise OutputError(f"{self.url}: the store is already finalized or aborted")

    def create_array(self, name: str, shape, dtype, chunk: int = DEFAULT_CHUNK,
                     compression: str | None = "zstd", per_galaxy: bool | None = None) -> None:
        """Declare an array of the store.

        Parameters
        ----------
        name : str
            ``images``, ``psfs``, ``truth``, ``primal``, ``dual`` or another name (letters,
            digits, ``_``, ``.``, ``-``).
        shape : tuple of int
            Full shape; axis 0 is the galaxy axis (``images``, ``truth``, ``primal`` are
            (n, N0, N1); ``psfs`` is (n, k0, k1) or one shared (k0, k1) PSF).
        dtype : numpy dtype
            Numbers, or records of numbers; stored little-endian.
        chunk : int
            Galaxies per chunk.
        compression : {'zstd', 'none', None}
            Codec of the chunks (the checksums do not depend on it).
        per_galaxy : bool, optional
            Whether axis 0 is the galaxy axis (default: yes, except for a 2-D ``psfs``). An
            array that is not is stored as one chunk.

        Raises
        ------
        ConfigError
            Bad name, shape, dtype or chunk, or a galaxy count that differs from the other
            arrays'.
        """
        self._check_open()
        what = f"{self.url}: array {name!r}"
        if not isinstance(name, str) or not _NAME.match(name) or name in _RESERVED:
            raise ConfigError(f"{what}: expected a name of letters, digits, '_', '.', '-'")
        if name in self._arrays:
            raise ConfigError(f"{what}: already created")
        shape = tuple(int(v) for v in shape)
        if not shape or min(shape) < 1:
            raise ConfigError(f"{what}: shape {shape}; expected at least one axis, no empty "
                              "axis")
        if name in _NDIM and len(shape) not in _NDIM[name]:
            expected = " or ".join(str(d) for d in _NDIM[name])
            raise ConfigError(f"{what}: shape {shape} has {len(shape)} dimensions; expected "
                              f"{expected}")
        dtype = _check_dtype(dtype, what)
        if per_galaxy is None:
            per_galaxy = not (name == "psfs" and len(shape) == 2)
        if per_galaxy:
            if int(chunk) < 1:
                raise ConfigError(f"{what}: chunk {chunk}; expected galaxies per chunk >= 1")
            chunk = min(int(chunk), shape[0])
            others = {k: v["shape"][0] for k, v in self._arrays.items() if v["per_galaxy"]}
            if others and set(others.values()) != {shape[0]}:
                first = next(iter(others))
                raise ConfigError(f"{what}: {shape[0]} galaxies, but {first!r} has "
                                  f"{others[first]}; every per-galaxy array of a store has "
                                  "the same galaxies")
        else:
            chunk = shape[0]
        compression = "none" if compression is None else compression
        _compressor(compression)  # validates
        spec = {"shape": list(shape), "dtype": np.lib.format.dtype_to_descr(dtype),
                "chunk": chunk, "per_galaxy": bool(per_galaxy),
                "storage": "records" if dtype.names is not None else "plain",
                "compression": compression}
        storage_shape, storage_dtype = _storage(spec)
        if self._group is None:
            self._group = _zarr_open_group_rw(self._work)
        _zarr_create_array(self._group, name, storage_shape, storage_dtype,
                           (chunk,) + storage_shape[1:], compression)
        self._arrays[name] = spec
        self._sums[name] = {}

    def _spec(self, name: str) -> dict:
        try:
            return self._arrays[name]
        except KeyError:
            raise ConfigError(f"{self.url}: no array {name!r} was created (created: "
                              f"{', '.join(self._arrays) or 'none'})") from None

    def chunk_bounds(self, name: str) -> list[tuple[int, int]]:
        """``(start, stop)`` of every chunk of ``name`` along axis 0."""
        spec = self._spec(name)
        return _bounds(spec["shape"][0], spec["chunk"])

    def write_block(self, name: str, start: int, array) -> dict[int, str]:
        """Write galaxies ``[start, start + len(array))`` of ``name``: one or more whole chunks.

        May be called from different processes for different chunks (on a pickled copy of
        this writer); each chunk must be written exactly once.

        Parameters
        ----------
        name : str
            A created array.
        start : int
            First galaxy: a multiple of the chunk length.
        array : array_like
            The block; its length ends on a chunk boundary or at the end of the array.

        Returns
        -------
        dict
            ``{chunk_index: sha256}`` of the chunks written, for :meth:`finalize`.
        """
        self._check_open()
        spec = self._spec(name)
        shape, chunk = tuple(spec["shape"]), int(spec["chunk"])
        dtype = np.lib.format.descr_to_dtype(spec["dtype"])
        array = np.asarray(array)
        what = f"{self.url}: array {name!r}"
        if array.ndim != len(shape) or tuple(array.shape[1:]) != shape[1:]:
            raise ConfigError(f"{what}: block of shape {array.shape} does not fit shape "
                              f"{shape}")
        if not np.can_cast(array.dtype, dtype, "same_kind"):
            raise ConfigError(f"{what}: block of dtype {array.dtype} cannot be stored as "
                              f"{dtype}")
        start = int(start)
        stop = start + len(array)
        if (start < 0 or stop > shape[0] or stop == start or start % chunk
                or (stop % chunk and stop != shape[0])):
            raise ConfigError(f"{what}: block [{start}, {stop}) is not whole chunks of "
                              f"{chunk} galaxies within [0, {shape[0]})")
        data = np.ascontiguousarray(array, dtype=dtype)
        if name not in self._zcache:
            self._zcache[name] = _zarr_open_array(self._work, name, "r+")
        self._zcache[name][start:stop] = _to_storage(data, spec)
        sums = {a // chunk: chunk_sha256(data[a - start:b - start])
                for a, b in _bounds(shape[0], chunk) if start <= a < stop}
        self._sums[name].update(sums)
        return sums

    def finalize(self, checksums: Mapping | None = None) -> Store:
        """Write the manifest (last) and, locally, rename the store onto its final name.

        Parameters
        ----------
        checksums : mapping, optional
            ``{name: {chunk_index: sha256}}`` returned by :meth:`write_block` calls made in
            other processes (those made on this writer are known already).

        Returns
        -------
        Store
            The finished store, opened.

        Raises
        ------
        OutputError
            A chunk was never written (nothing is published), or the final name is taken.
        """
        self._check_open()
        for name, sums in (checksums or {}).items():
            self._spec(name)
            self._sums[name].update({int(k): v for k, v in sums.items()})
        arrays = {}
        for name, spec in self._arrays.items():
            n_chunks = len(_bounds(spec["shape"][0], spec["chunk"]))
            missing = [i for i in range(n_chunks) if i not in self._sums[name]]
            if missing:
                shown = ", ".join(str(i) for i in missing[:10]) + (
                    "..." if len(missing) > 10 else "")
                raise OutputError(f"{self.url}: array {name!r}: chunk(s) {shown} of "
                                  f"{n_chunks} were never written; the store is incomplete")
            arrays[name] = spec | {"sha256": [self._sums[name][i] for i in range(n_chunks)]}
        galaxy_lengths = {s["shape"][0] for s in arrays.values() if s["per_galaxy"]}
        manifest = {"format": FORMAT, "version": FORMAT_VERSION, "zarr_format": ZARR_FORMAT,
                    "n_galaxies": galaxy_lengths.pop() if galaxy_lengths else None,
                    "arrays": arrays, "provenance": self._provenance}
        text = json.dumps(manifest, indent=1, default=json_default) + "\n"
        self._work.write_bytes(MANIFEST, text.encode("utf-8"))
        if self._where.local is not None:
            self._publish_local()
        self._done = True
        return open_store(self._where.url, self._where.storage_options)

    def _publish_local(self) -> None:
        target, tmp = self._where.local, self._work.local
        if target.exists() or target.is_symlink():
            if not self._replace:
                raise OutputError(f"{target}: appeared while the store was written; pass "
                                  "--overwrite to replace it")
            if not _looks_like_store(target):
                raise OutputError(f"{target}: exists and is not a galdecon store; refusing "
                                  "to replace it")
            old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
            try:
                os.rename(target, old)
                try:
                    os.rename(tmp, target)
                except OSError:
                    os.rename(old, target)
                    raise
            except OSError as exc:
                raise OutputError(f"{target}: cannot replace the store ({exc})") from None
            if old.is_symlink():
                old.unlink()
            else:
                shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, target)
            except OSError as exc:
                raise OutputError(f"{target}: cannot publish the store ({exc})") from None
        fsync_dir(target.parent)

    def abort(self) -> None:
        """Remove what was written (the temporary directory, or a remote partial store)."""
        if self._done:
            return
        self._done = True
        self._work.remove_tree()


def _zarr_open_group_rw(where: _Where):
    zarr = _zarr()
    if _zarr_major() >= 3:
        return zarr.open_group(store=where.root, mode="r+", zarr_format=ZARR_FORMAT,
                               **_zarr_kwargs(where))
    return zarr.open_group(store=where.root, mode="r+", **_zarr_kwargs(where))


def create_store(url, overwrite: bool = False, provenance: dict | None = None,
                 storage_options: dict | None = None) -> StoreWriter:
    """Start writing a new stack store at ``url``.

    Parameters
    ----------
    url : str or path
        Local path (conventionally ``NAME.zarr``), ``file://`` URL or fsspec URL.
    overwrite : bool
        Replace an existing store (locally: only once the new one is complete; remotely:
        the old one is deleted first, manifest first). Something at ``url`` that is not a
        store is never replaced.
    provenance : dict, optional
        ``command``, ``sources``, ``run`` (see :func:`make_provenance`), or the output of
        :func:`make_provenance`.
    storage_options : dict, optional
        Passed to the fsspec filesystem.

    Returns
    -------
    StoreWriter

    Raises
    ------
    OutputError
        The target exists (without ``overwrite``), is not a store, or its directory is
        missing or not writable.
    """
    _zarr()
    where = _Where(url, storage_options)
    provenance = _provenance(provenance)
    if where.local is not None:
        target = where.local
        parent = target.absolute().parent
        if not parent.is_dir():
            raise OutputError(f"{target}: output directory {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise OutputError(f"{target}: output directory {parent} is not writable")
        if target.exists() or target.is_symlink():
            if not overwrite:
                raise OutputError(f"{target}: exists; pass --overwrite to replace it")
            if not _looks_like_store(target):
                raise OutputError(f"{target}: exists and is not a galdecon store; refusing "
                                  "to replace it")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
        work = _Where(tmp)
    else:
        try:
            taken = where.exists()
        except (ImportError, ValueError) as exc:  # fsspec: not installed, or unknown
            raise EngineError(f"{url}: no filesystem for this URL ({exc}); install the "
                              "fsspec filesystem package of its scheme (s3fs, gcsfs, ...)"
                              ) from None
        if taken:
            if not overwrite:
                raise OutputError(f"{url}: exists; pass --overwrite to replace it")
            if not (where.exists(MANIFEST) or where.exists(".zgroup")):
                raise OutputError(f"{url}: exists and is not a galdecon store; refusing to "
                                  "replace it")
            where.remove(MANIFEST)  # readers refuse it from now on
            where.remove_tree()
        work = where
    writer = StoreWriter(where, work, provenance, replace=overwrite)
    try:
        writer._group = _zarr_create_group(work)
    except Exception:
        writer.abort()
        raise
    return writer


def _provenance(given) -> dict:
    if given is None:
        return make_provenance()
    if not isinstance(given, Mapping):
        raise ConfigError(f"provenance: expected a dict, got {type(given).__name__}")
    known = {"command", "sources", "run", "galdecon_version", "created"}
    extra = set(given) - known
    if extra:
        raise ConfigError(f"provenance: unknown key(s) {', '.join(sorted(extra))}; expected "
                          f"{', '.join(sorted(known))}")
    made = make_provenance(given.get("command"), given.get("sources", ()), given.get("run"))
    for key in ("galdecon_version", "created"):
        if key in given:
            made[key] = given[key]
    try:
        json.dumps(made, default=json_default)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"provenance: not JSON-serialisable ({exc})") from None
    return made


def write_store(url, arrays: Mapping, chunk: int = DEFAULT_CHUNK, overwrite: bool = False,
                provenance: dict | None = None, compression: str | None = "zstd",
                storage_options: dict | None = None, progress=None) -> Store:
    """Write arrays into a new store, one chunk at a time.

    Parameters
    ----------
    url : str or path
        Where (see :func:`create_store`).
    arrays : mapping
        ``{name: array}``; an array is anything with ``shape``, ``dtype`` and slicing
        along axis 0 (an ndarray, a memory map, a lazy reader), read one chunk at a time.
    chunk : int
        Galaxies per chunk.
    overwrite, provenance, compression, storage_options
        As for :func:`create_store` and :meth:`StoreWriter.create_array`.
    progress : callable, optional
        ``progress(name, stop, total)`` after each chunk.

    Returns
    -------
    Store
        The finished store. On any error nothing is left under ``url``.
    """
    with create_store(url, overwrite, provenance, storage_options) as writer:
        for name, array in arrays.items():
            writer.create_array(name, array.shape, array.dtype, chunk, compression)
        for name, array in arrays.items():
            for start, stop in writer.chunk_bounds(name):
                writer.write_block(name, start, array[start:stop])
                if progress is not None:
                    progress(name, stop, array.shape[0])
        return writer.finalize()
