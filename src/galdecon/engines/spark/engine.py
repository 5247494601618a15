"""The Spark engine: blocks as the partitions of persisted RDDs (classic RDD API).

Partition ``p`` holds the contiguous slice of galaxies ``block_bounds(n, partitions)[p]``
as a few records, its *tiles*: blocks of at most ``block_size`` galaxies (as the local
engine's blocks), in galaxy order. Tiles because one batched step over thousands of stamps
runs about half as fast as over a few dozen (measured, 10,000 stamps 41×41), because a
partition streams tile by tile (the JVM stores one tile while the next computes) and
because no single pickle approaches the JVM's 2 GiB array limit.

A tile is two records in two RDDs of the same partitioning: its static data (images,
PSFs; pickled once, persisted once per scatter) and its state (primal, dual, weights,
pending ỹ), the RDD each map replaces. Every job reads the two zipped in the JVM; a
Python worker reuses the static data it has unpickled (:mod:`~galdecon.engines.spark.worker`),
and a map writes back the state alone — at n = 10,000 sparse, 0.54 GB a synchronisation
instead of 0.81 GB, and no images or PSFs pickled. Every engine call is one Spark job:

- ``map`` runs ``fn`` on every tile in a single pass and persists the new RDD; the small
  results come back through an accumulator keyed by (generation, partition), read after a
  JVM-side ``count`` — so no second Python pass unpickles the blocks, and a retried task
  overwrites its own entry instead of double counting;
- ``reduce`` folds the per-tile values within each partition and then over the
  partitions in galaxy order; ``map_reduce`` (a low-rank iteration) is a ``map`` whose
  per-tile values are folded within each partition as the tiles are done, one value per
  partition coming back with the task results.

Superseded states are unpersisted (a :meth:`SparkEngine.snapshot` pins one until
:meth:`SparkEngine.release`) and the lineage is cut with ``localCheckpoint`` every
``lineage_every`` maps, so a thousand iterations neither overflow the driver's stack nor
slow down. Measured Spark facts behind these choices are in ``design/SPARK_NOTES.md``.
What runs on the executors is in :mod:`galdecon.engines.spark.worker`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from functools import partial

import numpy as np

from galdecon.engines.base import Engine, block_bounds, make_block
from galdecon.engines.spark.cluster import active_session, start_session
from galdecon.engines.spark.tiles import (  # noqa: F401 - footprint: run.preflight's
    DEFAULT_BLOCK_SIZE,
    DRIVER_JVM_BYTES,
    STORAGE_CHOICES,
    choose_storage,
    footprint,
    storage_memory,
    tile_layout,
    tile_rdd,
    tiles_bytes,
    zip_tiles,
)
from galdecon.engines.spark.worker import (
    STATE_FIELDS,
    ResultsParam,
    blocks_of,
    gather_partition,
    map_partition,
    reduce_partition,
    split_block,
    state_tile,
    static_tile,
    worker_error,
    write_partition,
)
from galdecon.errors import EngineError

log = logging.getLogger("galdecon")

# Default partitions hold at most this much state (tiles.tiles_bytes).
PARTITION_BYTES = 256 * 2**20
# Every core, and a failed task (a Python worker that died) retried up to 3 times, as the
# standalone scheduler does by default (spark.task.maxFailures = 4).
DEFAULT_MASTER = "local[*,4]"
# Keep each gather job's result well under spark.driver.maxResultSize (1 GiB by default).
GATHER_CHUNK_BYTES = 256 * 2**20
DEFAULT_DRIVER_MEMORY = "4g"


def _fold(values: list, combine):
    total = values[0]
    for value in values[1:]:
        total = combine(total, value)
    return total


class _State:
    """One generation of the block RDD and its maps since the last lineage cut."""

    __slots__ = ("rdd", "depth")

    def __init__(self, rdd, depth: int):
        self.rdd, self.depth = rdd, depth


class SparkEngine(Engine):
    """Blocks as the partitions of a persisted Spark RDD.

    Parameters
    ----------
    master : str, optional
        Spark master URL (default ``local[*,4]``: every core, a failed task retried up
        to 3 times): ``local[n]``, ``local[n,maxFailures]``, ``spark://host:port``,
        ``yarn``, ... Ignored when ``spark`` is given.
    partitions : int, optional
        Number of partitions (blocks of contiguous galaxies); default: Spark's default
        parallelism. Capped at the number of galaxies.
    spark : pyspark.sql.SparkSession, optional
        An existing classic (not Spark Connect) session to use; it is left running at
        :meth:`close`. Without it the session active in this process is joined (and
        also left running), or a new one is started (and stopped at :meth:`close`).
    app_name : str, optional
    verbose : bool, optional
        Spark's log level WARN and its progress bar instead of ERROR and silence.
    lineage_every : int, optional
        Cut the lineage with ``localCheckpoint`` every this many maps (0: never).
    local_dir : str, optional
        Parent of the scratch directory given to ``spark.local.dir`` (removed at
        :meth:`close`); default: the system temporary directory.
    block_size : int, optional
        Galaxies per tile inside a partition (default 64); None keeps one tile per
        partition.
    ui : bool, optional
        Enable the Spark web UI (off by default).
    driver_memory : str, optional
        ``spark.driver.memory`` for a session created here (default ``4g``: in local mode
        the cached blocks live in the driver JVM).
    conf : dict, optional
        Extra Spark configuration for a session created here.
    storage : {"auto", "memory", "disk"}, optional
        Where the tiles are persisted: ``memory`` (the JVM heap, ``MEMORY_AND_DISK``),
        ``disk`` (the local directories, ``DISK_ONLY``), or ``auto`` (default): disk when
        two generations of the state would not fit in the executors' storage memory.

    Raises
    ------
    EngineError
        If pyspark or Java 17+ is not installed, or the session is not a classic one.
    """

    name = "spark"
    # Each sync is a Spark job that passes every block through the JVM (SPARK_NOTES);
    # K = 16 brings Spark local[2] within ~10% of the local engine at n = 10,000
    # (benchmarks/spark_overhead.py), where K = 4 costs ~35% more.
    sync_multiple = 4
    recoverable = True

    def __init__(self, master: str | None = None, partitions: int | None = None, spark=None,
                 app_name: str = "galdecon", verbose: bool = False, lineage_every: int = 20,
                 local_dir: str | None = None, block_size: int | None = DEFAULT_BLOCK_SIZE,
                 ui: bool = False, driver_memory: str = DEFAULT_DRIVER_MEMORY,
                 conf: dict | None = None, storage: str = "auto"):
        if storage not in STORAGE_CHOICES:
            raise EngineError(f"option storage={storage!r}: expected one of "
                              f"{', '.join(STORAGE_CHOICES)}")
        self.storage, self.storage_used = storage, None
        master = master or DEFAULT_MASTER
        self.partitions = int(partitions) if partitions else None
        self.lineage_every = int(lineage_every or 0)
        self.block_size = int(block_size) if block_size else None
        self._scratch = None
        if spark is None:
            spark = active_session()  # joined, never stopped: it is somebody else's
            if spark is not None:
                log.info("Spark: joining the active session (master %s)",
                         spark.sparkContext.master)
        self._owns_session = spark is None
        if spark is None:
            self._scratch = tempfile.mkdtemp(prefix="galdecon-spark-", dir=local_dir)
            try:
                spark = start_session(master, app_name, self._scratch, verbose=verbose, ui=ui,
                                      driver_memory=driver_memory, conf=conf)
            except BaseException:
                shutil.rmtree(self._scratch, ignore_errors=True)
                raise
        try:
            self._sc = spark.sparkContext
        except Exception as exc:  # Spark Connect sessions have no SparkContext
            raise EngineError("the Spark engine needs a classic SparkSession (RDD API); "
                              f"Spark Connect sessions are not supported ({exc})") from exc
        self.spark = spark
        if self._sc.getConf().get("spark.python.unix.domain.socket.enabled", "false") != "true":
            log.info("Spark: spark.python.unix.domain.socket.enabled=true saves ~20 ms a task")
        self._state: _State | None = None
        self._static = None  # the RDD of the tiles' pickled static data, persisted once
        self._pinned: dict[int, list] = {}  # id(state) -> [state, snapshot count]
        self._bounds: list[tuple[int, int]] = []
        self._tile_sizes: list[list[int]] = []
        self._generation, self._scatter_id, self._stamp_pixels = 0, "", 0
        from pyspark import StorageLevel

        # Disk as well as memory: under memory pressure a block spills instead of being
        # dropped, since recomputing it would replay maps back to the last checkpoint.
        # "Deserialized" keeps PySpark's pickled batches as JVM byte arrays, sparing a Java
        # serialisation copy on every store and read (they are pickles either way).
        self._levels = {"memory": StorageLevel.MEMORY_AND_DISK_DESER,
                        "disk": StorageLevel.DISK_ONLY}  # see tiles.choose_storage
        self._results = self._sc.accumulator({}, ResultsParam())

    # -- state bookkeeping ----------------------------------------------------------------
    @property
    def n_partitions(self) -> int:
        """Number of partitions of the block RDD."""
        return len(self._bounds)

    @property
    def tile_bounds(self) -> list[tuple[int, int]]:
        """The (start, stop) of every tile, in galaxy order."""
        bounds = []
        for (start, _), sizes in zip(self._bounds, self._tile_sizes, strict=True):
            for size in sizes:
                bounds.append((start, start + size))
                start += size
        return bounds

    def _require(self) -> _State:
        if self._state is None:
            raise EngineError("the Spark engine holds no blocks: call scatter() first")
        return self._state

    def _drop(self, state: _State | None) -> None:
        """Unpersist a superseded state unless it is current or pinned by a snapshot."""
        if state is None or state is self._state or id(state) in self._pinned:
            return
        state.rdd.unpersist(blocking=False)

    def _set_state(self, state: _State) -> None:
        old, self._state = self._state, state
        self._drop(old)

    # -- the contract -------------------------------------------------------------------
    def scatter(self, arrays: dict, n_images: int) -> None:
        """Cut the stacks into contiguous slices, one per partition, and persist them."""
        images = arrays["images"]
        self._stamp_pixels = int(np.prod(images.shape[1:]))
        self._choose_storage(n_images)
        n_parts = self._default_partitions(n_images)
        states, statics = [], []
        for lo, hi in self._layout(block_bounds(n_images, n_parts)):
            state, static = split_block(make_block(arrays, lo, hi))
            states.append(state)
            statics.append(static)
        static = self._tiles(self._sc.parallelize(statics, len(self._bounds)))
        state = self._tiles(self._sc.parallelize(states, len(self._bounds)))
        del states, statics
        # Once materialised, the tiles live in the block manager and the driver's copy
        # of the input (held by the parallelized collection's partitions for as long as
        # any lineage reaches them, outside Spark's memory accounting) can be freed.
        static.localCheckpoint()
        state.localCheckpoint()
        self._adopt(static, state)

    def _tiles(self, rdd, fn=None):
        """``rdd`` (mapped by ``fn``) as persisted tiles (not yet computed)."""
        return tile_rdd(rdd, fn).persist(self._levels[self.storage_used])

    def _choose_storage(self, n_images: int) -> None:
        """Persist the tiles where :func:`~galdecon.engines.spark.tiles.choose_storage` says."""
        self.storage_used = choose_storage(
            self.storage, 2 * tiles_bytes(n_images, self._stamp_pixels), storage_memory(self._sc))
        log.info("Spark: tiles kept in %s", self.storage_used)

    def _default_partitions(self, n_images: int) -> int:
        """The partitions asked for, or Spark's default parallelism, or more.

        Enough that no partition's state exceeds :data:`PARTITION_BYTES`: Spark caches a
        partition as one block, and a block of gigabytes exhausts the JVM heap however
        it spills.
        """
        if self.partitions:
            return self.partitions
        state = tiles_bytes(n_images, self._stamp_pixels)
        return max(self._sc.defaultParallelism, -(-state // PARTITION_BYTES))

    def _layout(self, bounds) -> list[tuple[int, int]]:
        """Set the partitions' galaxy ranges and return the tiles' bounds, in order."""
        self._bounds = list(bounds)
        tiles, self._tile_sizes = tile_layout(self._bounds, self.block_size)
        return tiles

    def scatter_source(self, source, n_images: int) -> None:
        """Each partition reads its own galaxies from the store (none pass the driver).

        Partitions are whole chunks of the images (at most one per chunk), so that the
        outputs can be written chunk by chunk by the partitions that hold them. The blocks
        are not lineage-cut: a lost partition is read again from the store.
        """
        self._stamp_pixels = int(np.prod(source.shape))
        self._choose_storage(n_images)
        n_parts = self._default_partitions(n_images)
        if n_parts > source.n_chunks:
            log.info("Spark: %d partitions for %d chunks of the images: one per chunk",
                     n_parts, source.n_chunks)
        tiles = self._layout(source.bounds(n_parts))
        bounds = self._sc.parallelize(tiles, len(self._bounds))
        static = self._tiles(bounds, partial(static_tile, source=source))
        if source.primal is None and source.state is None:  # nothing to read: a fresh state
            state = self._tiles(self._sc.parallelize(
                [dict.fromkeys(STATE_FIELDS, None) | {"start": start} for start, _ in tiles],
                len(self._bounds)))
        else:
            state = self._tiles(bounds, partial(state_tile, source=source))
        try:
            static._jrdd.count()  # read now: a bad chunk is reported here, by name
            state._jrdd.count()
        except Exception as exc:
            static.unpersist(blocking=False)
            state.unpersist(blocking=False)
            raise worker_error(exc) from None
        self._adopt(static, state)

    def _adopt(self, static, state) -> None:
        """Make freshly scattered RDDs the static data and the state (a new scatter id)."""
        if self._static is not None:
            self._static.unpersist(blocking=False)
        self._static = static
        self._scatter_id = uuid.uuid4().hex
        self._set_state(_State(state, 0))

    def _pairs(self, state: _State | None = None):
        """The RDD of (state record, static bytes) of every tile: what every job reads."""
        return zip_tiles(self._sc, (state or self._require()).rdd, self._static)

    def blocks(self):
        """The RDD of the current tiles as blocks (state and static data joined), in order."""
        return self._pairs().mapPartitions(partial(blocks_of, scatter_id=self._scatter_id),
                                           preservesPartitioning=True)

    def first(self, fn):
        """``fn`` of the first tile: one task reads one tile, not the stack."""
        return self.blocks().map(fn).first()

    def _write_chunks(self, writer, names) -> dict:
        """Each partition writes its galaxies of ``names`` (whole chunks) to the store."""
        chunks = {writer.chunk_bounds(name)[0][1] for name in names}
        aligned = len(chunks) == 1 and all(
            start % next(iter(chunks)) == 0 for start, _ in self._bounds)
        if not aligned:  # partitions that share chunks cannot write them in parallel
            return super()._write_chunks(writer, names)
        rdd = self._pairs().mapPartitions(partial(write_partition, writer=writer,
                                                  names=tuple(names),
                                                  scatter_id=self._scatter_id))
        try:
            written = rdd.collect()
        except Exception as exc:
            raise worker_error(exc) from None
        sums: dict = {name: {} for name in names}
        for name, part in written:
            sums[name].update(part)
        return sums

    def usable(self) -> bool:
        """Whether the SparkContext is still running (a JVM out of memory stops it)."""
        try:
            return not self._sc._jsc.sc().isStopped()
        except Exception:
            return False

    def cancel(self) -> None:
        """Cancel the running job (PySpark's own SIGINT handler does the same)."""
        self._sc.cancelAllJobs()

    def map(self, fn) -> list:
        """Replace every tile by ``fn(tile)[0]`` in one job; return the ``[1]`` parts.

        The engine's blocks are the tiles: the results come one per tile, in galaxy order.
        """
        return self._map(fn, None)

    def map_reduce(self, fn, combine, finish=None):
        """:meth:`map`, folding the ``[1]`` parts with ``combine``: in each partition as its
        tiles are done, then the partitions' values in order on the driver.

        The values ride with the task results (no shuffle, nothing spilled to disk): one
        per partition — for the low-rank TSQR factors, one packed triangle of at most
        p(p+1)/2 float64 whatever the partition's size.
        """
        return _fold(self._map(fn, combine, finish), combine)

    def _map(self, fn, combine, finish=None) -> list:
        state = self._require()
        self._generation += 1
        generation = self._generation
        self._results.value = {}
        new = self._pairs(state).mapPartitionsWithIndex(
            partial(map_partition, fn=fn, results=self._results, generation=generation,
                    scatter_id=self._scatter_id, combine=combine, finish=finish),
            preservesPartitioning=True)
        new = tile_rdd(new).persist(self._levels[self.storage_used])
        depth = state.depth + 1
        if self.lineage_every and depth >= self.lineage_every:
            new.localCheckpoint()  # takes effect when the job below materialises `new`
            depth = 0
        try:
            # A JVM-side count materialises and caches every partition without sending the
            # blocks through Python a second time; the results arrive with the task results.
            new._jrdd.count()
            got = self._results.value
            out = []
            for index in range(self.n_partitions):
                if (generation, index) not in got:
                    raise EngineError(f"Spark map: no result from partition {index}")
                out.extend(got[(generation, index)])
        except BaseException:
            new.unpersist(blocking=False)  # the current state stays as it was
            raise
        self._set_state(_State(new, depth))
        return out

    def reduce(self, fn, combine, tree=False, finish=None):
        """Fold ``combine`` over ``fn(tile)`` for every tile, in galaxy order.

        With ``tree``, each partition folds its tiles' values where they live and the
        driver folds the partitions' values in order, exactly as :meth:`map_reduce`
        (a shuffle-based tree aggregation would write the values to disk at every level).
        """
        rdd, scatter_id = self._pairs(), self._scatter_id
        if not tree:
            return rdd.mapPartitions(partial(reduce_partition, fn=fn,
                                             scatter_id=scatter_id)).reduce(combine)
        values = rdd.mapPartitions(partial(reduce_partition, fn=fn, scatter_id=scatter_id,
                                           combine=combine, finish=finish))
        return _fold(values.collect(), combine)

    def snapshot(self):
        """Pin the current state (its RDD stays persisted until :meth:`release`)."""
        state = self._require()
        self._pinned.setdefault(id(state), [state, 0])[1] += 1
        return state

    def restore(self, token) -> None:
        """Make a snapshot's state current again (the current one is dropped)."""
        self._set_state(token)

    def release(self, token) -> None:
        """Unpin a snapshot; its RDD is unpersisted unless it is the current state."""
        pin = self._pinned.get(id(token))
        if pin is not None:
            pin[1] -= 1
            if pin[1] > 0:
                return
            del self._pinned[id(token)]
        self._drop(token)

    def gather(self, attribute: str) -> np.ndarray:
        """Collect one attribute in galaxy order, a few hundred MB per job at most."""
        rdd = self._pairs()
        fetch = partial(gather_partition, attribute=attribute, scatter_id=self._scatter_id)
        parts = self._sc.runJob(rdd, fetch, [0])
        per_galaxy = parts[0].nbytes / max(1, parts[0].shape[0])
        group, group_bytes = [], 0.0
        for index in range(1, self.n_partitions):
            size = (self._bounds[index][1] - self._bounds[index][0]) * per_galaxy
            if group and group_bytes + size > GATHER_CHUNK_BYTES:
                parts.extend(self._sc.runJob(rdd, fetch, group))
                group, group_bytes = [], 0.0
            group.append(index)
            group_bytes += size
        if group:
            parts.extend(self._sc.runJob(rdd, fetch, group))
        return np.concatenate(parts, axis=0)

    # -- facts and clean-up -------------------------------------------------------------
    def facts(self) -> dict:
        """Engine name, master, partitions, Spark version and default parallelism."""
        return {"engine": self.name, "master": self._sc.master,
                "partitions": self.n_partitions, "tiles": sum(map(len, self._tile_sizes)),
                "spark_version": self._sc.version,
                "default_parallelism": self._sc.defaultParallelism,
                "lineage_every": self.lineage_every, "storage": self.storage_used}

    def close(self) -> None:
        """Unpersist the blocks; stop the session if this engine started it."""
        live = [pin[0] for pin in self._pinned.values()] + [self._state]
        for state in live:
            if state is not None:
                try:
                    state.rdd.unpersist(blocking=False)
                except Exception:  # noqa: BLE001 - the context may already be stopped
                    pass
        if self._static is not None:
            try:
                self._static.unpersist(blocking=False)
            except Exception:  # noqa: BLE001 - the context may already be stopped
                pass
        self._state = self._static = None
        self._pinned.clear()
        if self._owns_session and self.spark is not None:
            self.spark.stop()
            self.spark = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
