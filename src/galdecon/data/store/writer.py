"""Writing a new store: :class:`StoreWriter`, :func:`create_store`, :func:`write_store`."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from galdecon.data.digest import chunk_sha256
from galdecon.data.output import fsync_dir, json_default
from galdecon.data.store.location import Where
from galdecon.data.store.manifest import normalize_provenance
from galdecon.data.store.reader import Store, open_store
from galdecon.data.store.schema import (
    DEFAULT_CHUNK,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    NAME_PATTERN,
    NDIM,
    RESERVED,
    ZARR_FORMAT,
    bounds,
    check_store_dtype,
    storage_layout,
    to_storage,
)
from galdecon.data.store.zarrio import (
    compressor,
    create_array,
    create_group,
    open_array,
    open_group_rw,
    zarr_module,
)
from galdecon.errors import ConfigError, EngineError, OutputError


def looks_like_store(path: Path) -> bool:
    """Whether a local path holds a store (a manifest or Zarr group metadata)."""
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

    def __init__(self, where: Where, work: Where, provenance: dict, replace: bool,
                 publish: bool = True):
        self._where = where
        self._work = work
        self._provenance = provenance
        self._replace = replace
        self._publish = publish
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

    @property
    def work_path(self) -> Path | None:
        """The local temporary directory (None for a remote store, written in place)."""
        return self._work.local if self._where.local is not None else None

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
        if not isinstance(name, str) or not NAME_PATTERN.match(name) or name in RESERVED:
            raise ConfigError(f"{what}: expected a name of letters, digits, '_', '.', '-'")
        if name in self._arrays:
            raise ConfigError(f"{what}: already created")
        shape = tuple(int(v) for v in shape)
        if not shape or min(shape) < 1:
            raise ConfigError(f"{what}: shape {shape}; expected at least one axis, no empty "
                              "axis")
        if name in NDIM and len(shape) not in NDIM[name]:
            expected = " or ".join(str(d) for d in NDIM[name])
            raise ConfigError(f"{what}: shape {shape} has {len(shape)} dimensions; expected "
                              f"{expected}")
        dtype = check_store_dtype(dtype, what)
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
        compressor(compression)  # validates
        spec = {"shape": list(shape), "dtype": np.lib.format.dtype_to_descr(dtype),
                "chunk": chunk, "per_galaxy": bool(per_galaxy),
                "storage": "records" if dtype.names is not None else "plain",
                "compression": compression}
        storage_shape, storage_dtype = storage_layout(spec)
        if self._group is None:
            self._group = open_group_rw(self._work)
        create_array(self._group, name, storage_shape, storage_dtype,
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
        return bounds(spec["shape"][0], spec["chunk"])

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
            self._zcache[name] = open_array(self._work, name, "r+")
        self._zcache[name][start:stop] = to_storage(data, spec)
        sums = {a // chunk: chunk_sha256(data[a - start:b - start])
                for a, b in bounds(shape[0], chunk) if start <= a < stop}
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
            The finished store, opened (at :attr:`work_path` when made with
            ``publish=False``: the caller renames it, with the other files of its set).

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
            n_chunks = len(bounds(spec["shape"][0], spec["chunk"]))
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
        if self._where.local is not None and not self._publish:
            self._done = True  # complete; its owner renames or removes it from now on
            return open_store(self._work.local)
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
            if not looks_like_store(target):
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


def create_store(url, overwrite: bool = False, provenance: dict | None = None,
                 storage_options: dict | None = None, publish: bool = True) -> StoreWriter:
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
    publish : bool
        Rename the finished local store onto ``url`` in :meth:`StoreWriter.finalize`; False
        leaves it, complete, in its temporary directory (:attr:`StoreWriter.work_path`) for
        the caller to rename together with other files
        (:class:`galdecon.data.outputset.OutputSet`). No effect on a remote store.

    Returns
    -------
    StoreWriter

    Raises
    ------
    OutputError
        The target exists (without ``overwrite``), is not a store, or its directory is
        missing or not writable.
    """
    zarr_module()
    where = Where(url, storage_options)
    provenance = normalize_provenance(provenance)
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
            if not looks_like_store(target):
                raise OutputError(f"{target}: exists and is not a galdecon store; refusing "
                                  "to replace it")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
        work = Where(tmp)
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
    writer = StoreWriter(where, work, provenance, replace=overwrite, publish=publish)
    try:
        writer._group = create_group(work)
    except Exception:
        writer.abort()
        raise
    return writer


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
