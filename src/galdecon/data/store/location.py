"""Where a store lives: a local directory, or a URL reached through fsspec."""

from __future__ import annotations

import os
import shutil
import urllib.parse
from pathlib import Path

from galdecon.data.store.schema import INSTALL_HINT, MANIFEST
from galdecon.errors import EngineError, InputError


def fsspec_module():
    """fsspec, or an EngineError naming the extra to install."""
    try:
        import fsspec
    except ImportError:
        raise EngineError(f"stores at URLs need fsspec: {INSTALL_HINT}") from None
    return fsspec


class Where:
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
            fs, path = fsspec_module().core.url_to_fs(self.url, **self.storage_options)
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
    where = Where(url)
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
