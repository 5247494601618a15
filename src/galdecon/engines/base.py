"""The engine contract: what the driver may ask of any engine (ARCHITECTURE.md).

1. scatter: place blocks built from stacks (contiguous slices of the galaxy axis);
2. map / reduce / map_reduce: run a function on every block, combining its results (the
   maths layer builds its global reductions — σ, the low-rank factors — from these
   alone); map_reduce replaces the blocks and reduces a value of each in one pass, the
   one synchronisation of a low-rank iteration;
3. step: replace every block by ``f(block)`` keeping big arrays where they are, returning
   only small per-block results;
4. broadcast: small driver-side objects are passed as function arguments;
5. gather: bring one array back in the original galaxy order.

An engine also keeps a cheap snapshot of the previous state so the driver can roll back
a multi-iteration step to the exact iteration where the convergence test fired.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from functools import partial

import numpy as np


def block_bounds(n_images: int, n_blocks: int) -> list[tuple[int, int]]:
    """Split ``range(n_images)`` into ``n_blocks`` contiguous, nearly equal slices.

    More blocks than images gives one image per block (empty blocks are never made).
    """
    n_blocks = max(1, min(int(n_blocks), int(n_images)))
    edges = np.linspace(0, n_images, n_blocks + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


class Engine(abc.ABC):
    """Where the blocks of a run live (see module docstring for the contract)."""

    name = "engine"
    #: Default synchronisation interval, in units of ``4 * cost_window`` (the interval at
    #: which the convergence test can fire): an engine whose syncs are costly asks for more.
    sync_multiple = 1
    #: Whether a failed map may be retried from scratch or a checkpoint (a cluster that
    #: lost a worker); a failure of the local engine is a bug or lack of memory.
    recoverable = False

    @abc.abstractmethod
    def scatter(self, arrays: dict, n_images: int) -> None:
        """Build the blocks from whole-stack arrays (``images``, ``psfs``, ``primal``).

        ``psfs`` may be 2-D (one PSF shared by all); ``primal`` may be None. A resumed run
        also passes its solver state: ``dual``, ``weights`` and ``weights0``.
        """

    def scatter_source(self, source, n_images: int) -> None:
        """Build the blocks by reading them from ``source``, a chunked-store stack.

        ``source`` is a :class:`~galdecon.data.sources.StoreStack`. This default reads it in
        this process; a distributed engine reads each block where it will live.
        """
        self.scatter(source.read(0, n_images), n_images)

    def write_arrays(self, writer, names, n_images: int, chunk: int | None = None) -> dict:
        """Write block attributes ``names`` as new arrays of a chunked-store writer.

        The arrays are created with the blocks' shapes and dtypes (read off the first
        block), ``chunk`` galaxies per chunk (default: the writer's own default), then
        written. Returns the ``{name: {chunk: sha256}}`` of the chunks written elsewhere,
        for :meth:`~galdecon.data.chunked.StoreWriter.finalize`.
        """
        layout = self.first(partial(_layout, names=tuple(names)))
        # The writer knows its default chunk: engines do not depend on the data layer.
        options = {"chunk": int(chunk)} if chunk else {}
        for name in names:
            tail, dtype = layout[name]
            writer.create_array(name, (int(n_images), *tail), np.dtype(dtype), **options)
        return self._write_chunks(writer, names)

    def _write_chunks(self, writer, names) -> dict:
        """Write created arrays: this default gathers one at a time, then chunk by chunk."""
        for name in names:
            array = self.gather(name)
            for start, stop in writer.chunk_bounds(name):
                writer.write_block(name, start, array[start:stop])
            del array
        return {}

    def first(self, fn: Callable):
        """``fn`` of the first block only (e.g. to learn the blocks' shapes cheaply)."""
        return self.reduce(fn, lambda a, b: a)

    def usable(self) -> bool:
        """Whether the engine can still run jobs (a Spark session may have stopped)."""
        return True

    def cancel(self) -> None:  # noqa: B027 - optional hook
        """Ask the running map (if any) to stop soon; it then raises and changes nothing.

        Called from a signal handler: it must only set flags or ask the cluster.
        """

    @abc.abstractmethod
    def map(self, fn: Callable) -> list:
        """Replace every block by ``fn(block)[0]``; return the ``[1]`` parts in block order."""

    @abc.abstractmethod
    def reduce(self, fn: Callable, combine: Callable, tree: bool = False,
               finish: Callable | None = None):
        """Return ``combine`` folded over ``fn(block)`` for every block (blocks unchanged).

        The fold runs in galaxy order. With ``tree``, ``combine`` is commutative and the
        values are large (TSQR factors): the engine folds them as :meth:`map_reduce`
        does — first within groups of blocks, where they live and in parallel, applying
        ``finish`` to each group's value there, then the groups' values in order — so
        that equal blocks give equal results either way.
        """

    def map_reduce(self, fn: Callable, combine: Callable, finish: Callable | None = None):
        """Replace every block by ``fn(block)[0]``; return ``combine`` folded over the ``[1]``.

        One pass over the blocks, with the tree fold of :meth:`reduce` (``combine`` is
        commutative; ``finish``, e.g. completing lazy work, is applied to each group's
        value where it was folded). This default maps, then folds in galaxy order.
        """
        values = self.map(fn)
        total = values[0]
        for value in values[1:]:
            total = combine(total, value)
        return total if finish is None else finish(total)

    @abc.abstractmethod
    def snapshot(self):
        """Return a token for the current state (cheap: references, not copies)."""

    @abc.abstractmethod
    def restore(self, token) -> None:
        """Go back to the state of a snapshot taken since the last :meth:`release`."""

    def release(self, token) -> None:  # noqa: B027 - optional hook
        """Tell the engine a snapshot is no longer needed."""

    @abc.abstractmethod
    def gather(self, attribute: str) -> np.ndarray:
        """Return one block attribute for the whole stack, in galaxy order."""

    def facts(self) -> dict:
        """Engine facts for the run record."""
        return {"engine": self.name}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


#: Block attributes a scatter may carry, one slice of the galaxy axis each.
SCATTERED = ("images", "psfs", "primal", "dual", "weights", "weights0", "pending",
             "pixel_weights")


def _layout(block, names) -> dict:
    """The per-galaxy shape and the dtype of each of a block's attributes ``names``."""
    return {name: (list(getattr(block, name).shape[1:]), getattr(block, name).dtype.str)
            for name in names}


def make_block(arrays: dict, start: int, stop: int):
    """The block of galaxies ``[start, stop)`` cut from whole-stack ``arrays``.

    ``psfs`` is shared when 2-D; arrays not given (or None) are left unset.
    """
    from galdecon.core.solver import Block

    fields = {}
    for name in SCATTERED:
        value = arrays.get(name)
        if value is None:
            fields[name] = None
        elif name == "psfs" and value.ndim == 2:
            fields[name] = value
        else:
            fields[name] = value[start:stop]
    return Block(start=start, **fields)
