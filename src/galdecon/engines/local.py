"""The local engine: blocks held in this process, mapped over a small thread pool.

The stack is cut into blocks that are shared among ``threads`` threads (numpy and BLAS
release the GIL); within a block the solver works through cache-sized chunks. BLAS is
single-threaded while blocks run — also when they run one at a time: the products are
small, and a multi-threaded BLAS on small products mostly waits for its threads (on a
busy machine, by orders of magnitude).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from galdecon.core.solver import Block
from galdecon.core.threads import blas_single_thread
from galdecon.engines.base import Engine, block_bounds, make_block
from galdecon.errors import Cancelled

DEFAULT_BLOCK_SIZE = 64


def galaxies_in_flight(n_images: int, threads: int, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """Galaxies whose temporaries are live at once: a block on every thread."""
    return min(int(n_images), int(threads) * int(block_size))


def default_threads() -> int:
    """Cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class LocalEngine(Engine):
    """Blocks in this process.

    Parameters
    ----------
    threads : int, optional
        Worker threads (default: the cores available to this process).
    block_size : int, optional
        Galaxies per block (default 64). ``n_blocks`` overrides it.
    n_blocks : int, optional
        Number of blocks to cut the stack into.
    """

    name = "local"

    def __init__(self, threads: int | None = None, block_size: int | None = None,
                 n_blocks: int | None = None):
        self.threads = int(threads) if threads else default_threads()
        self.block_size = int(block_size or DEFAULT_BLOCK_SIZE)
        self.n_blocks = n_blocks
        self.blocks: list[Block] = []
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self._cancel = threading.Event()

    def scatter(self, arrays: dict, n_images: int) -> None:
        n_blocks = self.n_blocks or -(-n_images // self.block_size)
        self.blocks = [make_block(arrays, start, stop)
                       for start, stop in block_bounds(n_images, n_blocks)]

    def scatter_source(self, source, n_images: int) -> None:
        n_blocks = self.n_blocks or -(-n_images // self.block_size)
        self.blocks = [Block(start=start, **source.read(start, stop))
                       for start, stop in block_bounds(n_images, n_blocks)]

    def first(self, fn):
        return fn(self.blocks[0])

    def cancel(self) -> None:
        self._cancel.set()

    def _run(self, fn, blocks):
        cancel = self._cancel

        def guarded(block):
            if cancel.is_set():
                raise Cancelled("cancelled")
            return fn(block)

        with blas_single_thread():
            if self._pool is None or len(blocks) == 1:
                return [guarded(b) for b in blocks]
            return list(self._pool.map(guarded, blocks))

    def map(self, fn) -> list:
        out = self._run(fn, self.blocks)
        self.blocks = [b for b, _ in out]
        return [r for _, r in out]

    def reduce(self, fn, combine, tree=False, finish=None):
        if tree:
            return self._grouped(lambda block: (None, fn(block)), combine, finish)[1]
        results = self._run(fn, self.blocks)
        total = results[0]
        for value in results[1:]:
            total = combine(total, value)
        return total

    def map_reduce(self, fn, combine, finish=None):
        blocks, total = self._grouped(fn, combine, finish)
        self.blocks = blocks
        return total

    def _grouped(self, fn, combine, finish=None):
        """``fn`` on every block, the values folded within contiguous groups of blocks.

        One group per thread, each folded (and ``finish``-ed) in its thread as its blocks
        are done — a TSQR factor folds its rows there, in parallel, with one BLAS thread —
        then the groups' values in order on this thread. Returns (the new blocks, the
        total).
        """
        cancel = self._cancel
        groups = [self.blocks[a:b] for a, b in block_bounds(len(self.blocks), self.threads)]

        def run_group(group):
            news, total = [], None
            for block in group:
                if cancel.is_set():
                    raise Cancelled("cancelled")
                new, value = fn(block)
                news.append(new)
                total = value if total is None else combine(total, value)
            return news, (total if finish is None else finish(total))

        with blas_single_thread():
            if self._pool is None or len(groups) == 1:
                done = [run_group(g) for g in groups]
            else:
                done = list(self._pool.map(run_group, groups))
        total = done[0][1]
        for _, value in done[1:]:
            total = combine(total, value)
        return [b for news, _ in done for b in news], total

    def snapshot(self):
        return list(self.blocks)

    def restore(self, token) -> None:
        self.blocks = list(token)

    def gather(self, attribute: str) -> np.ndarray:
        return np.concatenate([getattr(b, attribute) for b in self.blocks], axis=0)

    def facts(self) -> dict:
        return {"engine": self.name, "threads": self.threads, "blocks": len(self.blocks)}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
