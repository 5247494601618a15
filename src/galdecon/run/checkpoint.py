"""Checkpoints: the whole solver state of a run, written atomically, and resuming from it.

A checkpoint is a directory (by default ``STEM_checkpoint`` beside the outputs) holding
one file, ``state.npz``: the primal, the dual and (sparse mode) the current and initial
weights of every galaxy (low rank: also the ỹ of the iteration begun, whose global
threshold the next synchronisation applies), and a JSON document with everything else the
run needs to go on exactly as if it had never stopped — the driver's position (round,
iterations, whether the round's reweighting is done), the convergence test's state, the
cost history, σ and β, the synchronisation interval, the settings, the digests of the
images and PSFs and, from the command line, its options. The file is written beside its
final name and renamed onto it, so a checkpoint is always complete: the previous one stays
until the new one is whole.

Resuming restores the blocks from the saved arrays and the driver from the document, so a
resumed run takes the same steps from the same state: on the same engine its result is
bit for bit that of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np

from galdecon.data.sources import PENDING, STATE_NAMES
from galdecon.errors import ConfigError, InputError, OutputError

log = logging.getLogger("galdecon")

FORMAT = "galdecon-checkpoint"
#: Version 2 may hold a low-rank ``pending`` array (version 1 never does, and is read as
#: well); a reader of version 1 would resume such a state wrongly, so it must refuse it.
VERSION = 2
READABLE = (1, 2)
STATE_FILE = "state.npz"
#: Default interval of automatic checkpoints, in seconds of run time (``checkpoint_every``
#: None): a long run loses at most this much work, a short one writes none.
AUTO_SECONDS = 600.0
#: ... and at least this many times the time the previous checkpoint took to write.
AUTO_OVERHEAD = 20.0


STATE_STORE = "state.zarr"


def state_names(driver) -> tuple:
    """The block attributes that make up the run's state now."""
    return STATE_NAMES[driver.settings.mode] + ((PENDING,) if driver.pending else ())


def state_arrays(engine, driver) -> dict[str, np.ndarray]:
    """The blocks' state, gathered in galaxy order."""
    return {name: engine.gather(name) for name in state_names(driver)}


def save(directory, driver, engine, digests: dict, extra: dict | None = None,
         chunk: int | None = None) -> Path:
    """Write the run's state to ``directory/state.npz`` atomically; return the directory.

    Parameters
    ----------
    directory : path
        The checkpoint directory (created if missing).
    driver : Driver
        The run's driver, between synchronisations.
    engine : Engine
        Holds the blocks.
    digests : dict
        :func:`~galdecon.data.digest.array_digest` of the ``images`` and ``psfs`` the run
        was started with.
    extra : dict, optional
        JSON-friendly facts stored alongside (the command line's options).
    chunk : int, optional
        Write the arrays as a chunked store ``state.zarr`` of this many galaxies per
        chunk, each chunk by the worker that holds it (for runs on chunked stores: the
        state never passes the driver); the document is the store's provenance.
    """
    from galdecon.data.io import atomic_path
    from galdecon.version import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    settings = driver.settings
    names = state_names(driver)
    meta = {
        "format": FORMAT, "version": VERSION, "galdecon": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": dataclasses.asdict(settings),
        "n_images": driver.n_images, "stamp_shape": list(driver.shape),
        "digests": dict(digests), "engine": engine.name,
        "driver": driver.state(), "arrays": sorted(names), "extra": extra or {},
    }
    if chunk is not None:
        from galdecon.data import chunked

        writer = chunked.create_store(directory / STATE_STORE, overwrite=True,
                                      provenance={"command": "checkpoint", "run": meta})
        with writer:
            writer.finalize(engine.write_arrays(writer, names, driver.n_images, chunk))
        if (directory / STATE_FILE).exists():
            (directory / STATE_FILE).unlink()
        log.info("checkpoint: %d iterations saved to %s", driver.position.done_total,
                 directory)
        return directory
    arrays = state_arrays(engine, driver)
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    target = directory / STATE_FILE
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, meta=blob, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    log.info("checkpoint: %d iterations saved to %s", driver.position.done_total, directory)
    return directory


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint read back: its JSON document and (lazily) its arrays."""

    path: Path
    meta: dict

    @property
    def iteration(self) -> int:
        """Iterations done when it was written."""
        return int(self.meta["driver"]["position"]["done_total"])

    @property
    def extra(self) -> dict:
        """The facts stored by the caller (the command line's options)."""
        return self.meta.get("extra", {})

    @property
    def chunked(self) -> bool:
        """Whether the arrays are a chunked store (a run on chunked stores)."""
        return (self.path / STATE_STORE).exists() and not (self.path / STATE_FILE).exists()

    def store(self):
        """The saved arrays as a chunked store (read block by block by the workers)."""
        from galdecon.data import chunked

        if not self.chunked:
            raise ConfigError(f"{self.path}: the checkpoint of a run on in-memory stacks; "
                              "resume it with the same (npy/FITS) inputs")
        return chunked.open_store(self.path / STATE_STORE)

    def arrays(self) -> dict[str, np.ndarray]:
        """The saved block state: primal, dual (and weights, weights0 in sparse mode;
        pending, in low rank between synchronisations)."""
        if self.chunked:
            store = self.store()
            return {name: store.read(name) for name in self.meta["arrays"]}
        file = self.path / STATE_FILE
        try:
            with np.load(file, allow_pickle=False) as data:
                out = {name: data[name] for name in self.meta["arrays"]}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise InputError(f"{file}: checkpoint arrays unreadable ({exc})") from None
        return out

    def check_shapes(self, arrays: dict, settings) -> None:
        """Refuse saved arrays whose shapes are not those of this run's state."""
        expected = state_shapes(settings, self.meta["n_images"], self.meta["stamp_shape"])
        for name, array in arrays.items():
            if tuple(array.shape) not in expected[name] or array.dtype.kind != "f":
                shapes = " or ".join(map(str, expected[name]))
                raise InputError(f"{self.path / STATE_FILE}: checkpoint array {name!r} is "
                                 f"{array.dtype} {tuple(array.shape)}; expected floating "
                                 f"point {shapes}")


def checkpoint_dir(spec) -> Path:
    """The checkpoint directory named by ``spec`` (the directory or its state file)."""
    path = Path(spec)
    return path.parent if path.name == STATE_FILE else path


def load(spec) -> Checkpoint:
    """Read a checkpoint's document (the arrays are read by :meth:`Checkpoint.arrays`).

    Raises
    ------
    InputError
        No checkpoint there, or not one this version can resume.
    """
    directory = checkpoint_dir(spec)
    file = directory / STATE_FILE
    if not file.is_file() and (directory / STATE_STORE).is_dir():
        from galdecon.data import chunked

        meta = chunked.open_store(directory / STATE_STORE).provenance.get("run")
        return _checked(Checkpoint(directory, meta), directory / STATE_STORE)
    if not file.is_file():
        raise InputError(f"{directory}: no checkpoint here (expected {file})")
    try:
        with np.load(file, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes().decode())
    except (OSError, ValueError, KeyError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        raise InputError(f"{file}: not a readable galdecon checkpoint ({exc})") from None
    return _checked(Checkpoint(directory, meta), file)


def _checked(found: Checkpoint, file) -> Checkpoint:
    meta = found.meta
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{file}: not a galdecon checkpoint")
    if meta.get("version") not in READABLE:
        raise InputError(f"{file}: checkpoint format version {meta.get('version')!r}; this "
                         f"galdecon resumes versions {', '.join(map(str, READABLE))}")
    return found


def check_compatible(checkpoint: Checkpoint, settings, digests: dict, n_images: int,
                     shape) -> None:
    """Refuse to resume with other data or other settings than the checkpoint's.

    Raises
    ------
    InputError
        The images or PSFs differ from those the run started with.
    ConfigError
        A setting differs.
    """
    meta = checkpoint.meta
    where = checkpoint.path
    if meta["n_images"] != n_images or list(meta["stamp_shape"]) != list(shape):
        raise InputError(f"{where}: the checkpoint is of {meta['n_images']} stamps "
                         f"{tuple(meta['stamp_shape'])}; the input has {n_images} stamps "
                         f"{tuple(shape)}")
    for name in sorted(set(meta["digests"]) | set(digests)):
        if meta["digests"].get(name) != digests.get(name):
            raise InputError(f"{where}: the {name} differ from those the checkpointed run "
                             "started with (checksum mismatch); resume with the same inputs")
    saved = meta["settings"]
    current = json.loads(json.dumps(dataclasses.asdict(settings)))
    differ = [f"{key} {current.get(key)!r} (checkpoint: {saved.get(key)!r})"
              for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]
    if differ:
        raise ConfigError(f"{where}: cannot resume with other settings than the checkpoint's: "
                          + "; ".join(differ))


def check_contents(checkpoint: Checkpoint, settings) -> None:
    """Refuse a checkpoint whose counters or driver state no run with ``settings`` has.

    A checkpoint is written whole (atomically), so a failure here means it was edited or
    written by something else: resuming it would report a false count or compute from
    nonsense, so it is refused before any work.

    Raises
    ------
    InputError
        Naming the field, its value and what was expected.
    """
    where = checkpoint.path
    try:
        driver = checkpoint.meta["driver"]
        pos = driver["position"]
        fields = {"round": pos["round"], "done_round": pos["done_round"],
                  "done_total": pos["done_total"], "sync_every": driver["sync_every"],
                  "noise_sigma": driver["noise_sigma"], "beta": driver["beta"]}
        arrays = set(checkpoint.meta["arrays"])
    except (KeyError, TypeError) as exc:
        raise InputError(f"{where}: the checkpoint's document lacks {exc}; it is not one "
                         "galdecon wrote") from None
    rounds = settings.n_reweights + 1 if settings.mode == "sparse" else 1
    n_iter = settings.n_iter
    limits = {"round": (0, rounds - 1), "done_round": (0, n_iter),
              "done_total": (fields["done_round"], n_iter * rounds),
              "sync_every": (1, None)}
    for name, (low, high) in limits.items():
        value = fields[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low \
                or (high is not None and value > high):
            span = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
            raise InputError(f"{where}: the checkpoint's {name} is {value!r}; a run with "
                             f"--n-iter {n_iter} has {span}")
    for name in ("noise_sigma", "beta"):
        value = fields[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not np.isfinite(value) or value <= 0:
            raise InputError(f"{where}: the checkpoint's {name} is {value!r}; expected a "
                             "finite positive number")
    required = set(STATE_NAMES[settings.mode])
    allowed = required | {PENDING} if settings.mode == "lowr" else required
    if not required <= arrays <= allowed:
        raise InputError(f"{where}: the checkpoint holds the arrays {sorted(arrays)}; a "
                         f"{settings.mode} run saves {sorted(required)}")


def state_shapes(settings, n_images: int, shape) -> dict[str, tuple]:
    """The shapes each state array of a run of ``n_images`` stamps of ``shape`` may have.

    Sparse weights are one per galaxy and band until a reweighting makes them per pixel.
    """
    image = (n_images,) + tuple(shape)
    if settings.mode == "lowr":
        return {"primal": (image,), "dual": (image,), PENDING: (image,)}
    bands = (n_images, settings.n_bands)
    weights = (bands, bands + tuple(shape))
    return {"primal": (image,), "dual": (bands + tuple(shape),), "weights": weights,
            "weights0": weights}


def bad_state(block, names) -> dict[str, int]:
    """The first galaxy (global index) of ``block`` with a non-finite value, per array."""
    found = {}
    for name in names:
        values = getattr(block, name)
        if values is None:
            continue
        ok = np.isfinite(np.asarray(values)).reshape(len(values), -1).all(axis=1)
        if not ok.all():
            found[name] = block.start + int(np.argmin(ok))
    return found


def first_bad(left: dict, right: dict) -> dict:
    """Combine :func:`bad_state` values in galaxy order (the first galaxy wins)."""
    return {**right, **left}


def refuse_bad_state(checkpoint: Checkpoint, bad: dict) -> None:
    """Raise if any saved array holds a non-finite value (``bad`` from the blocks)."""
    if bad:
        name, index = next(iter(sorted(bad.items(), key=lambda item: item[1])))
        raise InputError(f"{checkpoint.path}: the checkpoint's {name} is not finite (galaxy "
                         f"{index}); it cannot be resumed: start the run again without "
                         "--resume")


def remove(directory) -> None:
    """Delete a checkpoint's state file, and its directory if nothing else is in it."""
    directory = Path(directory)
    file = directory / STATE_FILE
    if file.exists():
        file.unlink()
    if (directory / STATE_STORE).is_dir():
        shutil.rmtree(directory / STATE_STORE)
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


class Checkpointer:
    """Writes a run's checkpoints: every ``every`` iterations, or by time when ``every`` is None.

    Parameters
    ----------
    directory : path
        Where checkpoints go.
    engine : Engine
    digests : dict
        Digests of the images and PSFs.
    every : int or None
        Iterations between checkpoints (0: only when asked, e.g. on a signal); None:
        every :data:`AUTO_SECONDS` of run time (and at least :data:`AUTO_OVERHEAD` times
        the time one write takes).
    extra : dict, optional
        Stored in every checkpoint.
    chunk : int, optional
        Write chunked-store checkpoints (see :func:`save`).
    base : int
        Iterations the run starts from (a resumed run's checkpoint): the first checkpoint
        is due ``every`` iterations after it.
    """

    def __init__(self, directory, engine, digests: dict, every: int | None = None,
                 extra: dict | None = None, chunk: int | None = None, base: int = 0):
        self.directory = Path(directory)
        self.chunk = chunk
        self.engine = engine
        self.digests = digests
        self.every = every
        self.extra = extra
        self.written: int | None = None  # iterations at the last checkpoint written here
        self.base = int(base)
        self.writes = 0
        self.write_seconds = 0.0
        self._last_time = time.monotonic()
        self._last_cost = 0.0

    def due(self, driver) -> bool:
        """Whether a checkpoint is due after this synchronisation."""
        done = driver.position.done_total
        last = self.written if self.written is not None else self.base
        if done == last:
            return False
        if self.every is None:
            wait = max(AUTO_SECONDS, AUTO_OVERHEAD * self._last_cost)
            return time.monotonic() - self._last_time >= wait
        return self.every > 0 and done - last >= self.every

    def __call__(self, driver) -> None:
        """The driver's ``on_sync`` hook."""
        if self.due(driver):
            self.write(driver)

    def write(self, driver) -> Path:
        """Write a checkpoint now."""
        t0 = time.perf_counter()
        try:
            save(self.directory, driver, self.engine, self.digests, self.extra, self.chunk)
        except OSError as exc:
            kept = (f"the checkpoint after {self.written} iterations is intact"
                    if self.written is not None else "no earlier checkpoint exists")
            raise OutputError(f"{self.directory}: cannot write the checkpoint ({exc}); "
                              f"{kept}") from exc
        self._last_cost = time.perf_counter() - t0
        self.write_seconds += self._last_cost
        self.writes += 1
        self.written = driver.position.done_total
        self._last_time = time.monotonic()
        return self.directory

    def facts(self) -> dict:
        """For the run record."""
        return {"directory": str(self.directory), "every": self.every, "writes": self.writes,
                "write_seconds": self.write_seconds, "last_iteration": self.written}
