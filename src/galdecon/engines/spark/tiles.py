"""The Spark engine's RDDs of tiles: their record format, their zip, their footprint.

Every RDD of tiles (static data or state) holds one tile per JVM record
(:func:`~galdecon.engines.spark.worker.tile_serializer`), so that two of them pair record
for record in a JVM zip.
"""

from __future__ import annotations

from galdecon.engines.spark.worker import (
    OPERATOR_CACHE_BYTES,
    STATIC_CACHE_BYTES,
    tile_serializer,
)

DEFAULT_BLOCK_SIZE = 64
# In local mode the block cache lives in the driver JVM, whose heap is spark.driver.memory;
# what does not fit spills to disk.
DRIVER_JVM_BYTES = 4 * 2**30


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
        snapshot, up to the JVM heap), ``disk`` (what spills beyond it), ``workers`` (each
        holds its tile twice — the state unpickled and its successor — the static data and
        operators it caches, up to their bounds, and its scratch) and ``scatter`` (the
        pickled tiles a scatter sends).
    """
    n = int(n_images)
    tile = min(n, int(block_size))
    per_galaxy_state = (parts["state"] + parts.get("weights", 0)) / n
    static = parts["images"] + parts["psfs"]
    cache = static + 2 * n * per_galaxy_state
    jvm = min(cache, DRIVER_JVM_BYTES)
    # Any worker may run any partition's task: each may cache every tile, up to its bounds.
    workers = threads * (2 * tile * per_galaxy_state + min(STATIC_CACHE_BYTES, static)
                         + min(OPERATOR_CACHE_BYTES, parts["operators"])
                         + parts.get("scratch", 0) / threads)
    return {"jvm": jvm, "disk": cache - jvm, "workers": workers,
            "scatter": static + parts["initial_primal"]}
