"""Output sets: the files of a run appear together or not at all.

A run writes several files (primal, dual, run record, figures; or a chunked store and its
record). Each is written atomically (:func:`~galdecon.data.output.atomic_path`), but that
alone leaves a primal without its dual when the disk fills between them. An
:class:`OutputSet` writes every member under a temporary name beside its target and renames
them onto their targets only once all are written (:meth:`OutputSet.commit`); on any failure
the temporaries are removed and, if a rename fails half-way, the targets already renamed are
taken back and the files they replaced restored.

Before a run computes anything, :func:`probe_writable` proves the output directory takes a
new file (``os.access`` says yes for ``/proc`` to root), :func:`check_free_space` compares
the size of the outputs with the free space, and :class:`StemLock` makes sure one process
at a time writes the outputs of a stem.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from galdecon.data.memory import format_bytes
from galdecon.data.output import fsync_dir
from galdecon.errors import OutputError

log = logging.getLogger("galdecon")


def _reason(exc: OSError) -> str:
    if exc.strerror:
        return exc.strerror
    # numpy reports a short write without errno: "50430 requested and 24984 written"
    return f"{exc or type(exc).__name__}: the disk is full or a file-size limit was reached"


def _remove(path: Path) -> None:
    """Remove a file, link or directory tree; what is already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


def _normal_mode(path: Path, directory: bool = False) -> None:
    # mkstemp/mkdtemp create 0600/0700; the outputs get the permissions of ordinary files.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


class OutputSet:
    """Files written under temporary names, then renamed onto their targets together.

    Parameters
    ----------
    paths : mapping
        ``{key: target path}`` of every member; adding an output is adding a key.
    overwrite : bool
        Replace targets that exist (only once every member is written).
    directories : mapping, optional
        ``{key: predicate}`` for members that are directories (a chunked store): the
        predicate says whether an existing target may be replaced (e.g. it is a store).

    Used as a context manager, whatever was not committed is removed on exit.

    Examples
    --------
    >>> with OutputSet({"a": tmp / "r_a.txt", "b": tmp / "r_b.txt"}) as out:  # doctest: +SKIP
    ...     out.write("a", lambda p: p.write_text("1"))
    ...     out.write("b", lambda p: p.write_text("2"))
    ...     out.commit()
    """

    def __init__(self, paths: Mapping[str, Path], overwrite: bool = False,
                 directories: Mapping[str, Callable[[Path], bool]] | None = None):
        self.paths = {key: Path(path) for key, path in paths.items()}
        self.overwrite = overwrite
        self.directories = dict(directories or {})
        self._temps: dict[str, Path] = {}
        self.committed = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.committed:
            self.discard()

    def check(self) -> None:
        """Refuse, before anything is written, targets that :meth:`commit` would refuse."""
        for key, target in self.paths.items():
            if not (target.exists() or target.is_symlink()):
                continue
            if not self.overwrite:
                raise OutputError(f"{target}: exists; pass --overwrite to replace it")
            if key in self.directories:
                if not self.directories[key](target):
                    raise OutputError(f"{target}: exists and is not a galdecon store; "
                                      "refusing to replace it")
            elif target.is_dir() and not target.is_symlink():
                raise OutputError(f"{target}: exists and is a directory; refusing to replace "
                                  "it with a file")

    def temp(self, key: str) -> Path:
        """Create and return an empty temporary file beside the target of ``key``."""
        target = self.paths[key]
        self._drop(key)
        try:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                        dir=target.parent)
        except OSError as exc:
            raise OutputError(f"{target}: cannot be written ({_reason(exc)}); no output was "
                              "written") from None
        os.close(fd)
        self._temps[key] = Path(name)
        _normal_mode(Path(name))
        return Path(name)

    def temporary(self, key: str) -> Path | None:
        """Where member ``key`` is written until the commit (None before it is written)."""
        return self._temps.get(key)

    def adopt(self, key: str, path) -> None:
        """Make a temporary file or directory written elsewhere (beside the target) ``key``.

        From now on the set removes it unless it is committed (e.g. a chunked store's
        temporary directory, finished by its writer).
        """
        path = Path(path)
        if path.parent.resolve() != self.paths[key].parent.resolve():
            raise OutputError(f"{path}: not beside {self.paths[key]}; it could not be renamed "
                              "onto it atomically")
        self._drop(key)
        self._temps[key] = path

    def write(self, key: str, writer: Callable[[Path], object]) -> Path:
        """Write member ``key`` with ``writer(temporary_path)``; a failure names the target.

        Returns the target path (where the member will be once committed).
        """
        tmp = self.temp(key)
        try:
            writer(tmp)
        except OutputError:
            raise
        except OSError as exc:  # a full disk, a file-size limit, an I/O error
            raise OutputError(f"{self.paths[key]}: cannot be written ({_reason(exc)}); no "
                              "output was written") from None
        return self.paths[key]

    def _drop(self, key: str) -> None:
        old = self._temps.pop(key, None)
        if old is not None:
            _remove(old)

    def discard(self) -> None:
        """Remove every temporary (the targets are untouched)."""
        for key in list(self._temps):
            self._drop(key)

    def commit(self) -> dict[str, Path]:
        """Rename every member onto its target; all of them or (on failure) none.

        Returns
        -------
        dict
            ``{key: target}``.

        Raises
        ------
        OutputError
            A member was never written, a target appeared meanwhile (without ``overwrite``)
            or may not be replaced, or a rename failed; the targets are then as before.
        """
        missing = [key for key in self.paths if key not in self._temps]
        if missing:
            raise OutputError(f"{self.paths[missing[0]]}: was never written; no output was "
                              "written")
        self.check()  # again: another program may have created a target meanwhile
        backups: dict[str, Path] = {}
        placed: list[str] = []
        current = next(iter(self.paths.values()))
        try:
            for key, current in self.paths.items():
                if current.exists() or current.is_symlink():
                    backups[key] = current.with_name(f".{current.name}.old-"
                                                     f"{secrets.token_hex(4)}")
                    os.rename(current, backups[key])
            for key, current in self.paths.items():
                _place(self._temps[key], current)
                placed.append(key)
        except BaseException as exc:
            for key in placed:  # take the new members back, then restore what they replaced
                with contextlib.suppress(OSError):
                    os.rename(self.paths[key], self._temps[key])
            for key, backup in backups.items():
                with contextlib.suppress(OSError):
                    os.rename(backup, self.paths[key])
            self.discard()
            if isinstance(exc, OSError) and not isinstance(exc, OutputError):
                raise OutputError(f"{current}: cannot be written ({_reason(exc)}); no output "
                                  "was written") from None
            raise
        self.committed = True
        self._temps.clear()
        for directory in {target.parent for target in self.paths.values()}:
            fsync_dir(directory)  # the renames themselves survive a crash
        for backup in backups.values():
            _remove(backup)
        return dict(self.paths)


def _place(tmp: Path, target: Path) -> None:
    """Move ``tmp`` onto ``target``, never over a file that appeared meanwhile.

    A file is hard-linked, which fails if the target exists (rename would silently replace
    it), then its temporary name removed; filesystems without hard links, and
    directories (a rename never replaces a non-empty directory), are renamed.
    """
    if not tmp.is_dir():
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise OutputError(f"{target}: appeared while the outputs were written; no output "
                              "was written") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK,
                                 errno.ENOSYS, errno.EACCES):
                raise
        else:
            os.unlink(tmp)
            return
        if target.exists() or target.is_symlink():
            raise OutputError(f"{target}: appeared while the outputs were written; no output "
                              "was written")
    os.rename(tmp, target)


def probe_writable(directory, what: str = "output directory") -> None:
    """Prove that a file can be created in ``directory`` by creating and removing one.

    ``os.access(W_OK)`` is not enough: to root it says yes for ``/proc`` and read-only
    mounts, and it knows nothing of quotas or full inode tables.

    Raises
    ------
    OutputError
        The directory is missing or no file can be created there (with the system's reason).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise OutputError(f"{directory}: {what} does not exist")
    try:
        fd, name = tempfile.mkstemp(prefix=".galdecon-probe-", dir=directory)
    except OSError as exc:
        raise OutputError(f"{directory}: {what} is not writable (creating a file there "
                          f"failed: {_reason(exc)})") from None
    os.close(fd)
    os.unlink(name)


def free_bytes(directory) -> int:
    """Bytes an unprivileged process may still write on the filesystem of ``directory``."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def check_free_space(directory, sizes: Mapping[str, int], force: bool = False,
                     hint: str = "pass --force to try anyway",
                     available: int | None = None) -> None:
    """Refuse when the outputs' estimated ``sizes`` exceed the free space of ``directory``.

    Parameters
    ----------
    directory : path
        Where the outputs go.
    sizes : mapping
        ``{key: bytes}`` estimated for each output.
    force : bool
        Log a warning instead of refusing (a write that then fails leaves nothing behind).
    hint : str
        What the user can do, ending the message.
    available : int, optional
        Free bytes (default: :func:`free_bytes` of ``directory``).

    Raises
    ------
    OutputError
        "DIR: the outputs need about 1.2 GiB (primal 400.0 MiB, dual 800.0 MiB, ...); the
        file system has 300.0 MiB free; ...".
    """
    need = int(sum(sizes.values()))
    have = free_bytes(directory) if available is None else int(available)
    if need <= have:
        return
    parts = ", ".join(f"{key} {format_bytes(size)}" for key, size in sizes.items())
    message = (f"{directory}: the outputs need about {format_bytes(need)} ({parts}); the file "
               f"system has {format_bytes(have)} free")
    if force:
        log.warning("%s; writing anyway (--force)", message)
        return
    raise OutputError(f"{message}; {hint}")


class StemLock:
    """An exclusive lock on an output stem: ``STEM.lock``, held until :meth:`release`.

    ``fcntl.flock`` dies with its process, so a lock left by a killed run never blocks the
    next one (the stale file is taken over). The file holds the holder's pid, for the
    refusal message, and is removed on release.

    Parameters
    ----------
    path : path
        The lock file.
    what : str
        What it protects, for the refusal message (e.g. "the outputs of results/run").
    hint : str
        What the user can do when it is held.
    """

    def __init__(self, path, what: str, hint: str = "wait for it to finish"):
        self.path = Path(path)
        self.what = what
        self.hint = hint
        self._fd: int | None = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.release()

    def acquire(self) -> None:
        """Take the lock, or refuse at once (never wait) if another process holds it."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"{self.path}: cannot create the lock file of {self.what} "
                                  f"({_reason(exc)})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_pid(fd)
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise OutputError(f"{self.path}: cannot lock {self.what} "
                                      f"({_reason(exc)})") from None
                by = f" (pid {holder})" if holder else ""
                raise OutputError(f"{self.path}: another galdecon process{by} is writing "
                                  f"{self.what}; {self.hint}") from None
            # The holder may have removed the file between our open and our lock: then we
            # hold a lock on a deleted file, and must lock the one now at the path instead.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        with contextlib.suppress(OSError):  # the pid is for messages only (a full disk)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        """Remove the lock file and release the lock (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still locked: nobody takes a file about to vanish
        os.close(self._fd)
        self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
