"""What the Spark engine runs on the executors: the partition functions and worker state.

Module level, so that the functions pickle by reference. Each Python worker process
keeps its BLAS single-threaded, its heap frozen and an :class:`OperatorCache` of the
operators it built for its tiles, which survive from one map to the next.
"""

from __future__ import annotations

import gc

import numpy as np

from galdecon.core.solver import Block, OperatorCache

# Per Python worker: operators derived from a tile's static data, reused across maps.
OPERATOR_CACHE_BYTES = 1 << 30
_WORKER_READY = False
#: This worker's operators, keyed by (scatter id, tile start).
OPERATORS = OperatorCache(OPERATOR_CACHE_BYTES)


def prepare_worker() -> None:
    """Once per Python worker process: single-threaded BLAS and a frozen heap.

    Spark runs one task per core, so BLAS threads would oversubscribe the cores. The
    reused Python worker runs ``gc.collect()`` after every task, which walks the whole heap
    (~13 ms each); ``gc.freeze()`` moves the imported modules out of its reach.
    """
    global _WORKER_READY
    if _WORKER_READY:
        return
    _WORKER_READY = True
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")
    except Exception:  # noqa: BLE001 - a speed hint only, never worth failing a task
        pass
    gc.freeze()


# -- functions shipped to the workers (module level so they pickle by reference) ---------
def map_partition(index, tiles, fn, results, generation, scatter_id, combine=None,
                  finish=None):
    """Replace every tile by ``fn(tile)[0]``; the ``[1]`` parts go to ``results``.

    With ``combine`` they are folded as the tiles are done, and only the partition's
    value goes, ``finish``-ed (a TSQR factor: one triangle, whatever the tiles). The
    operators built for a tile are remembered across maps (:data:`OPERATORS`).
    """
    prepare_worker()
    values, total = [], None
    for tile in tiles:
        OPERATORS.reuse(tile, (scatter_id, tile.start))
        new, value = fn(tile)
        OPERATORS.remember(new, (scatter_id, new.start))
        if combine is None:
            values.append(value)
        else:
            total = value if total is None else combine(total, value)
        yield new  # streamed: the JVM stores this tile while the next one computes
    if combine is not None:
        values = [total if finish is None else finish(total)]
    results.add({(generation, index): values})


def read_tile(bounds, source) -> Block:
    """The tile of galaxies ``bounds`` read from a store stack."""
    start, stop = bounds
    return Block(start=start, **source.read(start, stop))


def write_partition(tiles, writer, names):
    """Write a partition's galaxies of ``names``; yield ``(name, chunk digests)``."""
    tiles = list(tiles)
    if not tiles:
        return
    for name in names:
        block = np.concatenate([getattr(tile, name) for tile in tiles], axis=0)
        yield name, writer.write_block(name, tiles[0].start, block)


def worker_error(exc: BaseException) -> BaseException:
    """The galdecon error a Spark task raised (e.g. a corrupt chunk), as itself."""
    from galdecon import errors

    text = str(exc)
    for name in ("InputError", "OutputError", "ConfigError"):
        marker = f"galdecon.errors.{name}: "
        if marker in text:
            message = text.split(marker, 1)[1].splitlines()[0].strip()
            return getattr(errors, name)(message)
    return exc


def reduce_partition(tiles, fn, combine=None, finish=None):
    """``fn`` of every tile, in order; with ``combine``, folded into one value (finished)."""
    prepare_worker()
    if combine is None:
        for tile in tiles:
            yield fn(tile)
        return
    total = None
    for tile in tiles:
        value = fn(tile)
        total = value if total is None else combine(total, value)
    yield total if finish is None else finish(total)


def gather_partition(tiles, attribute):
    """One attribute of the partition's tiles, joined."""
    prepare_worker()
    yield np.concatenate([getattr(tile, attribute) for tile in tiles], axis=0)


class ResultsParam:
    """Accumulator of ``{(generation, partition): results}``; merging overwrites.

    A retried or recomputed task sends the same entry again, so overwriting (unlike
    adding) keeps the results exact under Spark's at-least-once accumulator updates.
    """

    def zero(self, value):
        return {}

    def addInPlace(self, value1, value2):  # noqa: N802 - PySpark's AccumulatorParam API
        value1.update(value2)
        return value1
