"""The Spark engine's RDDs of tiles: record format, zip, storage and footprint.

Every RDD of tiles (static data or state) holds one tile per JVM record
(:func:`~galdecon.engines.spark.worker.tile_serializer`), so that two of them pair record
for record in a JVM zip.
"""

from __future__ import annotations

from galdecon.engines.base import block_bounds
from galdecon.engines.spark.worker import (
    OPERATOR_CACHE_BYTES,
    STATIC_CACHE_BYTES,
    tile_serializer,
)

DEFAULT_BLOCK_SIZE = 64
# In local mode the block cache lives in the driver JVM, whose heap is spark.driver.memory;
# what does not fit spills to disk.
DRIVER_JVM_BYTES = 4 * 2**30
# Spark's storage memory in that heap: 0.6 of what is left beyond its reserved 300 MiB.
DRIVER_STORAGE_BYTES = int(0.6 * (DRIVER_JVM_BYTES - 300 * 2**20))
#: Where the tiles are persisted (:func:`choose_storage`).
STORAGE_CHOICES = ("auto", "memory", "disk")
#: Stamp-sized float64 arrays a galaxy's tiles hold (images, PSFs, primal, a 3-band dual,
#: full weights), for the storage choice.
STATE_ARRAYS_PER_GALAXY = 8


def tile_rdd(rdd, fn=None):
    """``rdd`` mapped by ``fn`` (or as it is), written one tile per JVM record.

    The result is a new pipelined RDD: its serializer is set before its Java RDD exists,
    so the same Python pass that computes the records writes them so.
    """
    out = rdd.map(fn) if fn is not None else rdd.mapPartitions(iter, preservesPartitioning=True)
    out._jrdd_deserializer = tile_serializer()
    return out


def zip_tiles(sc, state, static):
    """The RDD of (state record, static bytes) pairs of two RDDs of tiles.

    The JVM pairs the records; each side is one tile per record, so PySpark's own zip
    (which re-batches both sides in an extra Python pass when they batch automatically)
    is not needed.
    """
    from pyspark import RDD
    from pyspark.serializers import PairDeserializer

    return RDD(state._jrdd.zip(static._jrdd), sc,
               PairDeserializer(state._jrdd_deserializer, static._jrdd_deserializer))


def tile_layout(bounds, block_size: int | None) -> tuple[list, list]:
    """The tiles' (start, stop) in galaxy order and each partition's tile sizes.

    Every partition of ``bounds`` gets the same number of tiles (of at most
    ``block_size`` galaxies where the smallest partition allows), so that parallelize
    (which slices a list evenly) puts exactly the tiles of slice p into partition p.
    """
    sizes = [stop - start for start, stop in bounds]
    per_part = min(min(sizes), -(-max(sizes) // (block_size or max(sizes))))
    tiles, tile_sizes = [], []
    for start, stop in bounds:
        part = [(start + a, start + b) for a, b in block_bounds(stop - start, per_part)]
        tiles.extend(part)
        tile_sizes.append([hi - lo for lo, hi in part])
    return tiles, tile_sizes


def tiles_bytes(n_images: int, stamp_pixels: int) -> int:
    """Rough bytes of one generation of a run's tiles (STATE_ARRAYS_PER_GALAXY a galaxy)."""
    return int(n_images) * int(stamp_pixels) * 8 * STATE_ARRAYS_PER_GALAXY


def choose_storage(storage: str, cache_bytes: int, memory: int) -> str:
    """``memory`` (the JVM heap) or ``disk`` (the local directories only) for the tiles.

    ``auto`` picks disk when what the run caches, ``cache_bytes`` (two generations of the
    state — the current one and a map's new one — with the static data), exceeds
    ``memory``, the block managers' storage memory: beyond it, blocks kept
    ``MEMORY_AND_DISK`` are evicted and spilled one by one while the heap stays full.
    ``DISK_ONLY`` writes each generation once (the page cache serves the reads). Measured
    on this project's 2-core machine (benchmarks/store_scale.py): at n = 100,000, 10.6 s an
    iteration with a 1.2 GiB JVM against 14.6 s with 7.7 GiB; at n = 10,000, where
    everything fits, the heap is 1.4x faster.
    """
    if storage != "auto":
        return storage
    return "disk" if cache_bytes > memory else "memory"


def storage_memory(sc) -> int:
    """Bytes the block managers may use for storage, all executors together."""
    values = sc._jsc.sc().getExecutorMemoryStatus().values().iterator()
    total = 0
    while values.hasNext():
        total += int(values.next()._1())
    return total


def footprint(n_images: int, parts: dict, threads: int,
              block_size: int = DEFAULT_BLOCK_SIZE) -> dict:
    """Bytes a Spark run holds outside the driver's Python, from its array groups.

    Parameters
    ----------
    n_images : int
    parts : dict
        Bytes of the whole stack's ``images``, ``psfs``, ``initial_primal``, ``state``,
        ``operators`` and (sparse) ``weights`` and ``scratch`` (all threads together).
    threads : int
        Python workers.
    block_size : int
        Galaxies per tile.

    Returns
    -------
    dict
        ``jvm`` (the pickled static data once, the current state and its successor or
        snapshot, when they fit in the default heap's storage memory), ``disk`` (all of
        it when they do not: :func:`choose_storage`), ``workers`` (each
        holds its tile twice — the state unpickled and its successor — the static data and
        operators it caches, up to their bounds, and its scratch) and ``scatter`` (the
        pickled tiles a scatter sends).
    """
    n = int(n_images)
    tile = min(n, int(block_size))
    per_galaxy_state = (parts["state"] + parts.get("weights", 0)) / n
    static = parts["images"] + parts["psfs"]
    cache = static + 2 * n * per_galaxy_state
    # With the default heap, what the storage choice keeps in it ("auto": all or nothing).
    jvm = cache if choose_storage("auto", cache, DRIVER_STORAGE_BYTES) == "memory" else 0
    # Any worker may run any partition's task: each may cache every tile, up to its bounds.
    workers = threads * (2 * tile * per_galaxy_state + min(STATIC_CACHE_BYTES, static)
                         + min(OPERATOR_CACHE_BYTES, parts["operators"])
                         + parts.get("scratch", 0) / threads)
    return {"jvm": jvm, "disk": cache - jvm, "workers": workers,
            "scatter": static + parts["initial_primal"]}
