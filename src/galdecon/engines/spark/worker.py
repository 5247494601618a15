"""What the Spark engine runs on the executors: the partition functions and worker state.

A tile travels as two records zipped together (one JVM record each, see
:data:`TILE_SERIALIZER`): its *state* — a dict of ``start`` and :data:`STATE_FIELDS`, plus
any of :data:`STATIC_FIELDS` a map replaced — and its *static* data, the pickled
:data:`STATIC_FIELDS` as bytes. Each Python worker process keeps the unpickled static data
it has seen (:data:`STATIC`, keyed by scatter id and tile start) and the operators built
from it (:data:`OPERATORS`), so that on a hit the static bytes are read past, not
unpickled, and nothing is rebuilt; a fresh worker (restarted, another executor) unpickles
the bytes that came with the tile — the same data, so the result is the same.

Module level, so that the functions pickle by reference. Each Python worker also keeps its
BLAS single-threaded and its heap frozen.
"""

from __future__ import annotations

import gc
import pickle

import numpy as np

from galdecon.core.solver import Block, OperatorCache

# Per Python worker: operators derived from a tile's static data, reused across maps.
OPERATOR_CACHE_BYTES = 1 << 30
# Per Python worker: the unpickled static data of the tiles it has run (any worker may get
# any partition's task, so each may see them all).
STATIC_CACHE_BYTES = 1 << 30
#: Block attributes that no map changes in a run (unless it replaces them, see module doc).
STATIC_FIELDS = ("images", "psfs", "pixel_weights")
#: Block attributes that move through the JVM at every map.
STATE_FIELDS = ("primal", "dual", "weights", "weights0", "pending")
_WORKER_READY = False
#: This worker's operators, keyed by (scatter id, tile start).
OPERATORS = OperatorCache(OPERATOR_CACHE_BYTES)


def tile_serializer():
    """One tile per JVM record: zipped RDDs must batch alike, and a tile streams alone."""
    from pyspark.serializers import BatchedSerializer, CPickleSerializer

    return BatchedSerializer(CPickleSerializer(), 1)


class StaticCache:
    """The unpickled static data of tiles, keyed by (scatter id, tile start).

    Entries of other scatters are dropped first; beyond ``max_bytes`` new entries are not
    kept (rather than evicting: tiles come round in a cycle, which defeats an LRU).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._entries: dict = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every entry (as a restarted worker would have)."""
        self._entries.clear()
        self._bytes = 0

    def get(self, key):
        """The static fields remembered under ``key``, or None."""
        return self._entries.get(key)

    def put(self, key, static: dict) -> None:
        """Remember ``static`` under ``key`` if there is room (after dropping old scatters)."""
        size = sum(np.asarray(v).nbytes for v in static.values() if v is not None)
        stale = [k for k in self._entries if k[0] != key[0]]
        for old in stale:
            self._bytes -= _static_bytes(self._entries.pop(old))
        if self._bytes + size <= self.max_bytes:
            self._entries[key] = static
            self._bytes += size


def _static_bytes(static: dict) -> int:
    return sum(np.asarray(v).nbytes for v in static.values() if v is not None)


#: This worker's static data.
STATIC = StaticCache(STATIC_CACHE_BYTES)


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


# -- the two halves of a tile -------------------------------------------------------------
def split_block(block: Block) -> tuple[dict, bytes]:
    """A block as its state record and its pickled static fields (at scatter)."""
    static = {name: getattr(block, name) for name in STATIC_FIELDS}
    return state_record(block, static), pickle.dumps(static, protocol=pickle.HIGHEST_PROTOCOL)


def state_record(block: Block, static: dict) -> dict:
    """What of ``block`` goes through the JVM: its state and any static field replaced."""
    record = {"start": block.start}
    for name in STATE_FIELDS:
        record[name] = getattr(block, name)
    for name in STATIC_FIELDS:
        value = getattr(block, name)
        if not _same_array(value, static.get(name)):  # e.g. images cast to another dtype
            record[name] = value
    return record


def _same_array(value, static) -> bool:
    """Whether ``value`` is ``static`` or a view of all of it (``np.asarray`` may return one)."""
    if value is static:
        return True
    return (isinstance(value, np.ndarray) and isinstance(static, np.ndarray)
            and value.dtype == static.dtype and value.shape == static.shape
            and value.strides == static.strides
            and value.__array_interface__["data"][0] == static.__array_interface__["data"][0])


def assemble(record: dict, static_bytes: bytes, scatter_id: str) -> tuple[Block, dict]:
    """The block of a state record and its static data (from this worker's cache)."""
    key = (scatter_id, record["start"])
    static = STATIC.get(key)
    if static is None:  # a fresh worker: the bytes that came with the tile
        static = pickle.loads(static_bytes)
        STATIC.put(key, static)
    fields = dict(static)
    fields.update(record)
    return Block(**fields), static


def blocks_of(pairs, scatter_id: str):
    """The blocks of a partition's (state, static bytes) pairs, in order."""
    prepare_worker()
    for record, static_bytes in pairs:
        yield assemble(record, static_bytes, scatter_id)[0]


def static_tile(bounds, source) -> bytes:
    """The pickled static fields of the tile of galaxies ``bounds`` read from a store."""
    start, stop = bounds
    arrays = source.read(start, stop)
    return pickle.dumps({name: arrays.get(name) for name in STATIC_FIELDS},
                        protocol=pickle.HIGHEST_PROTOCOL)


def state_tile(bounds, source) -> dict:
    """The state record of the tile ``bounds`` read from a store (a resumed run's state)."""
    start, stop = bounds
    arrays = source.read(start, stop)
    return {"start": start, **{name: arrays.get(name) for name in STATE_FIELDS}}


# -- functions shipped to the workers (module level so they pickle by reference) ---------
def map_partition(index, pairs, fn, results, generation, scatter_id, combine=None,
                  finish=None):
    """Replace every tile's state by that of ``fn(tile)[0]``; the ``[1]`` parts go to ``results``.

    With ``combine`` they are folded as the tiles are done, and only the partition's
    value goes, ``finish``-ed (a TSQR factor: one triangle, whatever the tiles). The
    operators built for a tile are remembered across maps (:data:`OPERATORS`).
    """
    prepare_worker()
    values, total = [], None
    for record, static_bytes in pairs:
        tile, static = assemble(record, static_bytes, scatter_id)
        OPERATORS.reuse(tile, (scatter_id, tile.start))
        new, value = fn(tile)
        OPERATORS.remember(new, (scatter_id, new.start))
        if combine is None:
            values.append(value)
        else:
            total = value if total is None else combine(total, value)
        yield state_record(new, static)  # streamed: the JVM stores it while the next computes
    if combine is not None:
        values = [total if finish is None else finish(total)]
    results.add({(generation, index): values})


def write_partition(pairs, writer, names, scatter_id):
    """Write a partition's galaxies of ``names``; yield ``(name, chunk digests)``."""
    tiles = list(blocks_of(pairs, scatter_id))
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


def reduce_partition(pairs, fn, scatter_id, combine=None, finish=None):
    """``fn`` of every tile, in order; with ``combine``, folded into one value (finished)."""
    tiles = blocks_of(pairs, scatter_id)
    if combine is None:
        for tile in tiles:
            yield fn(tile)
        return
    total = None
    for tile in tiles:
        value = fn(tile)
        total = value if total is None else combine(total, value)
    yield total if finish is None else finish(total)


def gather_partition(pairs, attribute, scatter_id):
    """One attribute of the partition's tiles, joined."""
    yield np.concatenate([getattr(tile, attribute) for tile in blocks_of(pairs, scatter_id)],
                         axis=0)


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
