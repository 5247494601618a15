"""The Python API: :func:`deconvolve`, mirroring ``galdecon deconvolve``."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import platform
import sys
import time
from dataclasses import dataclass

import numpy as np

from galdecon.run import checkpoint as ckpt
from galdecon.data import chunked, io
from galdecon.run.driver import Driver
from galdecon.engines import make_engine
from galdecon.errors import (
    ConfigError,
    EngineError,
    GalDeconError,
    RunInterrupted,
)
from galdecon.run.interrupt import StopRequest
from galdecon.science.metrics import evaluate
from galdecon.core.problem import Settings
from galdecon.data.sources import StoreStack

log = logging.getLogger("galdecon")

ENGINE_OPTIONS = ("master", "partitions", "spark", "threads", "block_size", "n_blocks",
                  "lineage_every", "verbose", "local_dir")


@dataclass
class Result:
    """What a deconvolution returns.

    Attributes
    ----------
    primal : ndarray, shape (n, N0, N1)
        The deconvolved images.
    dual : ndarray
        The final dual variable ((n, J, N0, N1) sparse, (n, N0, N1) low rank).
    record : dict
        The run record: settings, σ, β, λ, step sizes, iterations, convergence, cost
        history, timings, versions and (when the truth was given) metrics.
    store : Store or None
        With ``output``: the store the workers wrote ``primal`` and ``dual`` to (then
        ``primal`` and ``dual`` are None: they never pass the driver).
    """

    primal: np.ndarray | None
    dual: np.ndarray | None
    record: dict
    store: chunked.Store | None = None

    @property
    def costs(self) -> np.ndarray:
        """The cost history as an array of (iteration, cost) rows."""
        h = self.record["history"]
        return np.column_stack([h["cost_iterations"], h["costs"]])


def versions() -> dict:
    """Versions of galdecon and what it runs on."""
    import astropy
    import scipy

    from galdecon.version import __version__

    return {"galdecon": __version__, "python": sys.version.split()[0], "numpy": np.__version__,
            "scipy": scipy.__version__, "astropy": astropy.__version__,
            "platform": platform.platform()}


def prepare_inputs(images, psfs, initial_primal=None, truth=None, dtype="float64",
                   names: dict | None = None) -> dict:
    """Validate arrays (already read) and return them as working stacks.

    ``names`` maps ``images``/``psfs``/``primal``/``truth`` to the file names used in
    error messages (default: ``<images array>`` etc.). Anything that is not an array of
    real numbers (ragged lists, strings, complex, object arrays) is an InputError; the
    arrays given are never modified.
    """
    names = {k: f"<{k} array>" for k in ("images", "psfs", "primal", "truth")} | (names or {})
    images = io.as_stack(io.as_array(images, names["images"], "image stack"), names["images"],
                         "image stack", dtype)
    psfs = io.validate_psfs(io.as_array(psfs, names["psfs"], "PSF array"), images.shape[0],
                            images.shape[1:], names["psfs"], dtype)
    out = {"images": images, "psfs": psfs, "primal": None, "truth": None}
    if initial_primal is not None:
        out["primal"] = io.validate_like(
            io.as_array(initial_primal, names["primal"], "initial primal"), images,
            names["primal"], "initial primal", dtype)
    if truth is not None:
        out["truth"] = io.validate_like(
            io.as_array(truth, names["truth"], "clean (truth) stack"), images, names["truth"],
            "clean (truth) stack", np.float64)
    return out


def split_options(options: dict) -> tuple[dict, dict]:
    """Split keyword options into Settings fields and engine options; reject unknowns."""
    fields = {f.name for f in dataclasses.fields(Settings)}
    settings, engine = {}, {}
    for key, value in options.items():
        if key in fields:
            settings[key] = value
        elif key in ENGINE_OPTIONS:
            engine[key] = value
        else:
            raise ConfigError(f"unknown option {key!r}; expected one of "
                              f"{', '.join(sorted(fields | set(ENGINE_OPTIONS)))}")
    return settings, engine


def deconvolve(images, psfs, *, initial_primal=None, truth=None, engine: str = "local",
               sync_every: int | None = None, kernel: float | None = None, progress=None,
               settings: Settings | None = None, input_names: dict | None = None,
               checkpoint=None, checkpoint_every: int | None = None,
               checkpoint_extra: dict | None = None, resume=None,
               stop: StopRequest | None = None, recoveries: int = 2, output=None,
               **options) -> Result:
    r"""Deconvolve a stack of galaxy stamps from their PSFs.

    Solves :math:`\min_X \tfrac12\|Y - HX\|^2 + \iota_{X\ge0}(X) + K(LX)` with the
    Condat–Vũ primal–dual algorithm (sparse wavelet or low-rank regularisation).

    Parameters
    ----------
    images : array_like, shape (n, N0, N1) or (N0, N1), or StoreStack
        Observed stamps Y; or a :class:`~galdecon.data.sources.StoreStack` naming chunked
        stores, which the engine's workers read block by block (then ``psfs`` is None).
    psfs : array_like, shape (n, k0, k1) or (k0, k1)
        One PSF per stamp, or one PSF for all, centred at ``(k0//2, k1//2)``.
    initial_primal : array_like, optional
        Starting estimate (default: ones), e.g. a previous result.
    truth : array_like, optional
        True images; when given the record holds pixel error, ellipticity error and PSNR.
    engine : {'local', 'spark'}
        Where the blocks run.
    sync_every : int, optional
        Iterations per synchronisation (sparse mode); results do not depend on it.
    kernel : float, optional
        σ of a Gaussian window applied before computing metrics.
    progress : callable, optional
        ``progress(done, planned, cost)`` after each synchronisation.
    settings : Settings, optional
        A complete settings object (keyword options then override its fields).
    input_names : dict, optional
        File names for error messages and the record.
    checkpoint : path, optional
        Directory to write checkpoints to (see :mod:`galdecon.run.checkpoint`); none without.
    checkpoint_every : int, optional
        Iterations between checkpoints; 0 writes one only when stopped; default: every
        ten minutes of run time.
    checkpoint_extra : dict, optional
        JSON-friendly facts stored in every checkpoint (the command line's options).
    resume : path or Checkpoint, optional
        Continue the run saved there: the images, PSFs and settings must be those it was
        started with; the result is that of the uninterrupted run (bit for bit on the
        same engine).
    stop : StopRequest, optional
        When it is set (e.g. by a signal handler), the run stops at its last complete
        synchronisation, writes a checkpoint (when ``checkpoint`` is given) and raises
        :class:`~galdecon.errors.RunInterrupted`.
    recoveries : int
        On an engine that can lose workers (Spark), how many times a failed run is
        restarted from its last checkpoint (or its start) before the error is raised.
    output : StoreWriter, optional
        Write ``primal`` and ``dual`` into this new chunked store (from the workers, one
        chunk each) and finalize it, instead of returning them.
    **options
        Any :class:`~galdecon.core.problem.Settings` field (``mode``, ``wavelet``, ``n_iter``,
        ``tolerance``, ``n_reweights``, ``positivity``, ...) and engine options
        (``threads``, ``block_size``, ``master``, ``partitions``, ``spark``).

    Returns
    -------
    Result

    Raises
    ------
    InputError, ConfigError
        Invalid data or options, or a checkpoint that does not match them.
    RunInterrupted
        ``stop`` was set.
    EngineError
        The engine failed more than ``recoveries`` times.

    Examples
    --------
    >>> import numpy as np, galdecon
    >>> psf = np.zeros((5, 5)); psf[2, 2] = 1.0
    >>> images = np.ones((2, 9, 9))
    >>> result = galdecon.deconvolve(images, psf, n_iter=8, noise_est=0.1)
    >>> result.primal.shape, result.record["result"]["iterations"]
    ((2, 9, 9), 16)
    """
    t_start = time.perf_counter()
    setting_opts, engine_opts = split_options(options)
    settings = (settings or Settings()).replace(**setting_opts) if setting_opts or settings \
        else Settings()
    source = images if isinstance(images, StoreStack) else None
    if source is not None:  # read by the workers, block by block
        if psfs is not None or initial_primal is not None or truth is not None:
            raise ConfigError("with stacks in chunked stores, the PSFs and the initial primal "
                              "come from the StoreStack (psfs=None); truth is not supported")
        source.dtype = settings.dtype
        data = {"source": source, "psfs_shape": source.psf_shape, "truth": None}
        n, shape = source.n, source.shape
    else:
        data = prepare_inputs(images, psfs, initial_primal, truth, settings.dtype,
                              input_names)
        data["psfs_shape"] = data["psfs"].shape
        n, shape = data["images"].shape[0], data["images"].shape[1:]
    digests = None
    if checkpoint is not None or resume is not None:
        digests = source.digests() if source is not None else {
            "images": ckpt.array_digest(data["images"]),
            "psfs": ckpt.array_digest(data["psfs"])}
    start = None
    if resume is not None:
        start = resume if isinstance(resume, ckpt.Checkpoint) else ckpt.load(resume)
        ckpt.check_compatible(start, settings, digests, n, shape)
        if sync_every is None:
            sync_every = start.meta["driver"]["sync_every"]
        log.info("resuming from %s after %d iterations", start.path, start.iteration)
    resumed = None if start is None else {"checkpoint": str(start.path),
                                          "iteration": start.iteration}
    eng = make_engine(engine, **engine_opts)
    checkpointer = None
    try:
        if stop is not None:
            stop.reclaim_signals()  # a new SparkContext installs its own SIGINT handler
            stop.on_request(eng.cancel)
        if checkpoint is not None:
            checkpointer = ckpt.Checkpointer(checkpoint, eng, digests, checkpoint_every,
                                             checkpoint_extra,
                                             chunk=None if source is None else source.chunk)
            if stop is not None:
                stop.save = checkpointer.write
        t_scatter = time.perf_counter()
        failures = []
        while True:
            try:
                driver = Driver(eng, settings, n, shape, sync_every=sync_every,
                                progress=progress, on_sync=checkpointer, stop=stop)
                _start(eng, driver, data, start)
                if checkpointer is not None and start is not None:
                    checkpointer.base = start.iteration  # count from where the run resumed
                history = driver.run()
                break
            except RunInterrupted:
                raise
            except Exception as exc:
                if stop is not None and stop.requested:  # stopped during the set-up
                    raise stop.interrupted(driver if driver.ready else None) from None
                if isinstance(exc, GalDeconError) and not isinstance(exc, EngineError):
                    raise
                if not eng.recoverable:
                    raise
                failures.append(_first_line(exc))
                if len(failures) > recoveries or not eng.usable():
                    raise _engine_failure(eng, failures, checkpointer) from exc
                if checkpointer is not None and checkpointer.written is not None:
                    start = ckpt.load(checkpointer.directory)
                log.warning("%s engine failed (%s); restarting from %s", eng.name,
                            failures[-1], f"the checkpoint after {start.iteration} iterations"
                            if start is not None else "the start")
        if output is not None:  # each partition writes its own chunks
            primal = dual = None
            written = eng.write_arrays(output, ("primal", "dual"), n,
                                       None if source is None else source.chunk)
            if data["truth"] is not None:
                primal = eng.gather("primal")
        else:
            primal = eng.gather("primal")
            dual = eng.gather("dual")
        facts = eng.facts()
    finally:
        eng.close()
    total = time.perf_counter() - t_start
    seconds = np.asarray(history.iteration_seconds)
    record = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "deconvolve",
        "settings": dataclasses.asdict(settings),
        "problem": driver.problem.summary(),
        "data": {
            "n_images": int(n), "stamp_shape": list(shape),
            "psf_shape": list(data["psfs_shape"][-2:]),
            "shared_psf": len(data["psfs_shape"]) == 2, "inputs": input_names or {},
        },
        "engine": facts | {"sync_every": driver.sync_every},
        "result": {
            "iterations": int(sum(history.iterations_per_round)),
            "iterations_per_round": history.iterations_per_round,
            "converged_per_round": history.converged_per_round,
            "converged": bool(history.converged_per_round[-1]),
            "final_cost": history.costs[-1] if history.costs else None,
            "rollbacks": history.rollbacks,
            "convergence_test": driver.test.state(),
        },
        "history": {
            "cost_iterations": history.cost_iterations, "costs": history.costs,
            "iterations_per_round": history.iterations_per_round,
        },
        "timing": {
            "setup_s": driver.setup_seconds,
            "iterations_s": float(seconds.sum()),
            "median_iteration_s": float(np.median(seconds)) if seconds.size else None,
            "mean_iteration_s": float(seconds.mean()) if seconds.size else None,
            "scatter_to_end_s": time.perf_counter() - t_scatter,
            "total_s": total,
            "iteration_seconds": seconds.tolist(),
        },
        "versions": versions(),
        "reliability": {
            "resumed_from": resumed,
            "engine_failures": failures,
            "checkpoints": None if checkpointer is None else checkpointer.facts(),
        },
    }
    if data["truth"] is not None:
        metrics = evaluate(data["truth"], primal, kernel=kernel)
        metrics["kernel"] = kernel
        record["metrics"] = metrics
    store = None
    if output is not None:
        record["outputs_store"] = output.url
        store = output.finalize(written)
        if data["truth"] is not None:
            primal = None
    return Result(primal=primal, dual=dual, record=record, store=store)


def _start(eng, driver: Driver, data: dict, start) -> None:
    """Scatter the blocks (from the inputs, or a checkpoint's state) and set the run up."""
    source = data.get("source")
    if source is not None:
        if start is not None:
            source = source.with_state(start.store())
        eng.scatter_source(source, driver.n_images)
        if not source.shared_psf:
            warn_psf_sums(eng, source)
    else:
        arrays = {"images": data["images"], "psfs": data["psfs"], "primal": data["primal"]}
        if start is not None:
            arrays.update(start.arrays())
        eng.scatter(arrays, driver.n_images)
        del arrays
    driver.setup(saved=None if start is None else start.meta["driver"])


def _first_line(exc: BaseException) -> str:
    """One line saying what failed (for a Py4JJavaError: the Java exception's message)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    cause = next((line.lstrip(": ") for line in lines[1:] if "Exception" in line), None)
    text = cause or (lines[0] if lines else "")
    return f"{type(exc).__name__}: {text}"[:400]


def _engine_failure(eng, failures, checkpointer) -> EngineError:
    """The error of a run the engine could not finish, saying how to go on."""
    restarts = len(failures) - 1
    tries = f" after {restarts} restart(s)" if restarts else ""
    if not eng.usable():
        tries += " and cannot go on (its session has stopped)"
    cause = failures[-1] if len(set(failures)) == 1 else (
        f"{failures[-1]} (first failure: {failures[0]})")
    if checkpointer is not None and checkpointer.written is not None:
        hint = (f"; the state after {checkpointer.written} iterations is saved in "
                f"{checkpointer.directory} (resume with --resume {checkpointer.directory})")
    else:
        hint = "; no checkpoint was written"
    return EngineError(f"the {eng.name} engine failed{tries}: {cause}{hint}")


def _psf_sums(block) -> tuple[int, int, float]:
    return io.psf_sum_outliers(block.psfs, start=block.start)


def _first_bad(a, b):
    count = a[0] + b[0]
    first = a if a[0] and (not b[0] or a[1] < b[1]) else b
    return (count, first[1], first[2]) if count else a


def warn_psf_sums(eng, source) -> None:
    """Warn, as for in-memory PSFs, when PSFs held by the blocks do not sum to 1."""
    io.warn_psf_sums(f"{source.psfs[0].url}[{source.psfs[1]}]",
                     *eng.reduce(_psf_sums, _first_bad), stacklevel=3)
