"""The Python API: :func:`deconvolve`, mirroring ``galdecon deconvolve``.

A run is a short pipeline of steps, each in its own module: read the inputs
(:mod:`~galdecon.run.inputs`), plan the run — engine, checkpointer, where a resumed run
starts (:mod:`~galdecon.run.plan`) — execute it, restarting a failed engine
(:mod:`~galdecon.run.execute`), collect the outputs (:mod:`~galdecon.run.outputs`) and
build the record (:mod:`~galdecon.run.record`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from galdecon.core.problem import Settings
from galdecon.data import chunked
from galdecon.run.execute import execute
from galdecon.run.inputs import prepare_inputs, read_inputs
from galdecon.run.interrupt import StopRequest
from galdecon.run.options import ENGINE_OPTIONS, check_kernel, resolve_options, split_options
from galdecon.run.outputs import collect_outputs
from galdecon.run.plan import connect_stop, plan_run
from galdecon.run.record import RunRecord, build_record, versions
from galdecon.science.metrics import evaluate

__all__ = ["ENGINE_OPTIONS", "Result", "deconvolve", "prepare_inputs", "split_options",
           "versions"]


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
        history, timings, versions and (when the truth was given) metrics
        (``run_record.to_dict()``).
    store : Store or None
        With ``output``: the store the workers wrote ``primal`` and ``dual`` to (then
        ``primal`` and ``dual`` are None: they never pass the driver).
    run_record : RunRecord or None
        The record, typed.
    """

    primal: np.ndarray | None
    dual: np.ndarray | None
    record: dict
    store: chunked.Store | None = None
    run_record: RunRecord | None = None

    @property
    def costs(self) -> np.ndarray:
        """The cost history as an array of (iteration, cost) rows."""
        h = self.record["history"]
        return np.column_stack([h["cost_iterations"], h["costs"]])


def deconvolve(images, psfs, *, initial_primal=None, truth=None, weights=None,
               engine: str = "local",
               sync_every: int | None = None, kernel: float | None = None, progress=None,
               settings: Settings | None = None, input_names: dict | None = None,
               checkpoint=None, checkpoint_every: int | None = None,
               checkpoint_extra: dict | None = None, resume=None,
               stop: StopRequest | None = None, recoveries: int = 2, output=None,
               **options) -> Result:
    r"""Deconvolve a stack of galaxy stamps from their PSFs.

    Solves :math:`\min_X \tfrac12\|W^{1/2}(Y - HX)\|^2 + \iota_{X\ge0}(X) + K(LX)` with
    the Condat–Vũ primal–dual algorithm (sparse wavelet or low-rank regularisation);
    W = 1 unless per-pixel ``weights`` are given.

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
    weights : array_like, shape (n, N0, N1), optional
        Per-pixel inverse variances, 0 where a pixel is masked (bad pixels, cosmic rays,
        neighbours). Each stamp's pixels weigh relative to its median unmasked weight,
        whose 1/sqrt is then that stamp's noise σ_i for the sparse thresholds (unless
        ``noise_est`` is given); β grows by the largest relative weight.
    engine : {'local', 'spark'}
        Where the blocks run.
    sync_every : int, optional
        Iterations per synchronisation (sparse mode); results agree to rounding whatever
        it is.
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
        (any keyword of the LocalEngine or SparkEngine constructor: ``threads``,
        ``block_size``, ``master``, ``partitions``, ``spark``, ...).

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
    settings, engine_options = resolve_options(settings, options)
    kernel = check_kernel(kernel)
    inputs = read_inputs(images, psfs, initial_primal, truth, settings.dtype, input_names,
                         weights)
    plan = plan_run(inputs, settings, engine, engine_options, sync_every=sync_every,
                    checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                    checkpoint_extra=checkpoint_extra, resume=resume)
    try:
        connect_stop(stop, plan)
        execution = execute(plan, inputs, progress=progress, stop=stop, recoveries=recoveries)
        outputs = collect_outputs(plan.engine, inputs, output)
    finally:
        plan.engine.close()
    record = build_record(plan, inputs, execution, outputs.facts, t_start, input_names)
    return finish(record, outputs, inputs.truth, kernel, output)


def finish(record: RunRecord, outputs, truth=None, kernel: float | None = None,
           output=None) -> Result:
    """The last step: metrics against the truth, the output store finalized, the Result."""
    primal = outputs.primal
    if truth is not None:
        record.metrics = evaluate(truth, primal, kernel=kernel) | {"kernel": kernel}
    store = None
    if output is not None:
        record.outputs_store = output.url
        store = output.finalize(outputs.written)
        if truth is not None:
            primal = None
    return Result(primal=primal, dual=outputs.dual, record=record.to_dict(), store=store,
                  run_record=record)
