"""How much memory a run needs, and refusing runs that cannot fit, before anything is read.

:func:`estimate_bytes` counts the arrays a deconvolution holds at its peak from the sizes
alone (nothing is allocated). Each footprint is declared beside the code that allocates
it and only summed here:

* the inputs as read and their working-dtype copies (images, PSFs, initial primal, truth);
* the operators cached per block (:func:`galdecon.core.fidelity.operator_bytes`);
* the solver state, twice: the blocks being replaced and their successors (the engine
  keeps the previous state as a snapshot while a step runs;
  :func:`galdecon.core.solver.state_bytes`);
* the sparse weights (:func:`~galdecon.core.solver.weights_bytes`), twice while a
  second reweighting replaces them;
* the per-thread scratch of the sparse loop and the temporaries of the blocks in flight
  (:func:`galdecon.engines.local.galaxies_in_flight`);
* the low-rank reduction (:func:`galdecon.core.lowrank.low_rank_bytes`) and the pending
  ỹ of each low-rank iteration;
* the exact noise estimate when σ is not given (:func:`galdecon.core.noise.selection_bytes`
  on every block in flight);
* the gathered outputs (primal and dual) while the blocks are still held;
* on Spark, the JVM block cache and the Python workers
  (:func:`galdecon.engines.spark.engine.footprint`).

The run's peak is the largest of its phases (set-up, iterations, reweighting, gather),
plus a 20 % margin for what is not counted (Python objects, FFT plans, BLAS buffers,
fragmentation). :func:`check_memory` compares it with
:func:`galdecon.data.memory.available_bytes`.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

from galdecon.core import solver
from galdecon.core.fidelity import operator_bytes
from galdecon.core.lowrank import low_rank_bytes
from galdecon.core.noise import selection_bytes
from galdecon.core.operators.convolution import BOUNDARIES, spectrum_size
from galdecon.core.problem import MODES, setup_scratch_bytes
from galdecon.data import io
from galdecon.data.memory import available_bytes, format_bytes
from galdecon.engines.local import DEFAULT_BLOCK_SIZE, galaxies_in_flight
from galdecon.engines.spark import engine as spark_engine
from galdecon.errors import ConfigError

log = logging.getLogger("galdecon")

#: Fraction added to the counted peak for what is not counted.
MARGIN = 0.20
ENGINES = ("local", "spark")


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < minimum:
        raise ConfigError(f"memory estimate: {name}={value!r}: expected an integer >= "
                          f"{minimum}")
    return int(value)


def _shape2(name: str, shape) -> tuple[int, int]:
    try:
        values = tuple(shape)
    except TypeError:
        values = ()
    if len(values) != 2:
        raise ConfigError(f"memory estimate: {name}={shape!r}: expected two sizes (N0, N1)")
    return _positive_int(f"{name}[0]", values[0]), _positive_int(f"{name}[1]", values[1])


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"memory estimate: {name}={value!r}: expected one of "
                          f"{', '.join(choices)}")


def _dtypes(dtype, input_dtype, psf_dtype) -> tuple[np.dtype, np.dtype, np.dtype]:
    """The working, images-as-read and PSFs-as-read dtypes (refusing unknown ones)."""
    try:
        work = np.dtype(dtype)
        read = np.dtype(input_dtype) if input_dtype is not None else work
        psf_read = np.dtype(psf_dtype) if psf_dtype is not None else work
    except TypeError as exc:
        raise ConfigError(f"memory estimate: unknown dtype ({exc})") from None
    if work.kind != "f":
        raise ConfigError(f"memory estimate: dtype={work}: expected float64 or float32")
    return work, read, psf_read


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _parts(size: dict) -> dict:
    """Bytes of each array group of the whole stack (see the module docstring)."""
    n, p, w = size["n"], size["p"], size["work"].itemsize
    read, psf_read, work = size["read"], size["psf_read"], size["work"]
    stack = n * p * w  # one (n, N0, N1) array in the working dtype
    k0, k1 = size["psf_shape"]
    parts = {
        "images": n * p * read.itemsize + (stack if read != work else 0),
        "psfs": size["n_psfs"] * k0 * k1 * (psf_read.itemsize + (w if psf_read != work else 0)),
        "initial_primal": stack * (1 + (read != work)) if size["initial_primal"] else 0,
        "truth": n * p * 8 * (1 + (read != np.float64)) if size["truth"] else 0,
        # --weights: validated as float64, and the relative weights the data term holds
        "pixel_weights": n * p * (8 + w) if size.get("weights") else 0,
        "operators": operator_bytes(n, size["n_psfs"], size["spectrum"], w, size["boundary"]),
    }
    dual_bands = size["bands"] if size["mode"] == "sparse" else 1
    parts["state"] = solver.state_bytes(n, p, w, dual_bands)
    return parts


def _local_phases(size: dict, parts: dict) -> dict:
    """Bytes of each phase of a run on the local engine (``parts`` gains the extras)."""
    n, p, w, bands = size["n"], size["p"], size["work"].itemsize, size["bands"]
    spectrum, in_flight, threads = size["spectrum"], size["in_flight"], size["threads"]
    inputs = sum(parts.values()) - parts["state"]
    state = parts["state"]
    phases = {"setup": inputs + setup_scratch_bytes(in_flight, p, spectrum, bands)}
    if not size["noise_given"]:  # σ: the selection runs on every block in flight
        blocks = -(-in_flight // size["block_size"])
        phases["setup"] += blocks * selection_bytes(min(n, size["block_size"]) * p)
    if size["mode"] == "sparse":
        reweights = size["reweights"]
        weights = solver.weights_bytes(n, bands, p, reweighted=reweights > 0)
        scratch = threads * solver.sparse_scratch_bytes(n, bands, p, spectrum, w)
        parts.update(weights=weights, scratch=scratch)
        phases["iterations"] = inputs + 2 * state + weights + scratch
        if reweights:
            temporaries = solver.reweight_scratch_bytes(in_flight, bands, p, w)
            held = 2 * weights if reweights > 1 else (
                weights + solver.weights_bytes(n, bands, p, reweighted=False))
            phases["reweighting"] = inputs + state + held + scratch + temporaries
        phases["gather"] = inputs + 2 * state + weights + scratch
    else:
        parts["low_rank_matrix"] = low_rank_bytes(n, p, threads)
        pending = solver.lowr_pending_bytes(n, p, w)
        # the state and pending ỹ being replaced (the snapshot) and their successors
        phases["iterations"] = (inputs + 2 * (state + pending) + parts["low_rank_matrix"]
                                + solver.lowr_step_scratch_bytes(in_flight, p, spectrum, w))
        phases["gather"] = inputs + 2 * state
    return phases


def _spark_phases(size: dict, parts: dict) -> tuple[dict, float]:
    """Bytes of each phase of a Spark run on the driver machine, and of the disk spill.

    The driver keeps the inputs and assembles the gathered arrays; the blocks live
    pickled in the JVM cache and the Python workers (:func:`spark_engine.footprint`).
    """
    n, p, w = size["n"], size["p"], size["work"].itemsize
    spark = spark_engine.footprint(n, parts, size["threads"], size["block_size"])
    driver_inputs = (parts["images"] + parts["psfs"] + parts["initial_primal"] + parts["truth"]
                     + parts["pixel_weights"])
    stack = n * p * w
    dual = parts["state"] - stack
    gathered = stack + 2 * dual
    parts.update(spark_jvm_cache=spark["jvm"], spark_workers=spark["workers"])
    phases = {
        "setup": driver_inputs + spark["scatter"] + spark["jvm"],  # the pickled scatter
        "iterations": driver_inputs + spark["jvm"] + spark["workers"]
        + parts.get("low_rank_matrix", 0),
        "gather": driver_inputs + spark["jvm"] + spark["workers"] + gathered,
    }
    return phases, spark["disk"]


def _sizes(n_images, stamp_shape, psf_shape, shared_psf, mode, n_bands, dtype, engine,
           boundary, n_reweights, input_dtype, psf_dtype, threads, block_size) -> dict:
    """The estimate's arguments, checked and normalised, and the sizes derived from them."""
    n = _positive_int("n_images", n_images)
    n0, n1 = _shape2("stamp_shape", stamp_shape)
    k0, k1 = _shape2("psf_shape", psf_shape)
    _choice("mode", mode, MODES)
    _choice("engine", engine, ENGINES)
    _choice("boundary", boundary, BOUNDARIES)
    bands = _positive_int("n_bands", n_bands) if mode == "sparse" else 0
    reweights = _positive_int("n_reweights", n_reweights, 0) if mode == "sparse" else 0
    work, read, psf_read = _dtypes(dtype, input_dtype, psf_dtype)
    threads = _positive_int("threads", _default_threads() if threads is None else threads)
    block_size = _positive_int("block_size", block_size)
    # Only the blocks that exist run: more threads than blocks hold no scratch.
    threads = min(threads, -(-n // block_size))
    return {
        "n": n, "shape": (n0, n1), "psf_shape": (k0, k1), "p": n0 * n1, "mode": mode,
        "bands": bands, "reweights": reweights, "work": work, "read": read,
        "psf_read": psf_read, "threads": threads, "block_size": block_size,
        "engine": engine, "boundary": boundary, "n_psfs": 1 if shared_psf else n,
        "spectrum": spectrum_size((n0, n1), (k0, k1), boundary),
        "in_flight": galaxies_in_flight(n, threads, block_size),
    }


def estimate_bytes(n_images: int, stamp_shape, psf_shape, shared_psf: bool, mode: str,
                   n_bands: int, dtype, engine: str = "local", *, boundary: str = "periodic",
                   n_reweights: int = 1, input_dtype=None, psf_dtype=None,
                   initial_primal: bool = False, truth: bool = False, weights: bool = False,
                   noise_given: bool = False, threads: int | None = None,
                   block_size: int = DEFAULT_BLOCK_SIZE) -> dict:
    """Estimate the peak memory of a deconvolution from the sizes alone.

    Parameters
    ----------
    n_images : int
        Number of stamps n.
    stamp_shape : tuple of int
        Stamp shape (N0, N1).
    psf_shape : tuple of int
        PSF shape (k0, k1).
    shared_psf : bool
        One PSF for all stamps (a 2-D PSF array) instead of one per stamp.
    mode : {'sparse', 'lowr'}
    n_bands : int
        Wavelet detail scales J (``n_scales - 1``); only used in sparse mode.
    dtype : dtype
        Working precision (float64 or float32).
    engine : {'local', 'spark'}
    boundary : {'periodic', 'zero'}
    n_reweights : int
        Reweighting rounds (sparse mode): from the first the weights are full-size.
    input_dtype, psf_dtype : dtype, optional
        Types of the stacks as read (default: the working dtype); a different type means
        the working copy is held beside the array as read.
    initial_primal, truth, weights : bool
        Whether an initial primal (``-k``) or the true images (``-c``) are given.
    noise_given : bool
        Whether σ is given (``--noise-est``); otherwise it is estimated exactly.
    threads : int, optional
        Worker threads (Spark: Python workers); default the cores available.
    block_size : int
        Galaxies per block.

    Returns
    -------
    dict
        ``peak`` (bytes, margin included), ``counted`` (bytes, before the margin),
        ``margin``, ``phase`` (the phase that sets the peak), ``phases`` (bytes of each
        phase), ``parts`` (bytes of each array group), ``disk`` (bytes the Spark cache may
        spill), ``description`` (e.g. "a run on 1,000,000 stamps 41×41 (sparse, float64)")
        and the arguments.

    Raises
    ------
    ConfigError
        An argument out of range.

    Examples
    --------
    >>> est = estimate_bytes(1_000_000, (41, 41), (41, 41), False, "sparse", 3, "float64")
    >>> est["description"]
    'a run on 1,000,000 stamps 41×41 (sparse, float64)'
    >>> round(est["peak"] / 2**30), est["phase"]
    (265, 'iterations')
    """
    size = _sizes(n_images, stamp_shape, psf_shape, shared_psf, mode, n_bands, dtype, engine,
                  boundary, n_reweights, input_dtype, psf_dtype, threads, block_size)
    size.update(initial_primal=initial_primal, truth=truth, noise_given=noise_given,
                weights=weights)
    n, p = size["n"], size["p"]
    parts = _parts(size)
    phases = _local_phases(size, parts)
    disk = 0
    if engine == "spark":
        phases, disk = _spark_phases(size, parts)
    if truth:  # the metrics: float64 copies of the estimate (windowed) beside the truth
        phases["gather"] += 2 * n * p * 8
    phase = max(phases, key=phases.get)
    counted = int(phases[phase])
    n0, n1 = size["shape"]
    work = size["work"]
    description = (f"a run on {n:,} stamps {n0}×{n1} ({mode}, {work.name}"
                   + (", Spark" if engine == "spark" else "") + ")")
    return {
        "peak": int(math.ceil(counted * (1 + MARGIN))),
        "counted": counted,
        "margin": MARGIN,
        "phase": phase,
        "phases": {k: int(v) for k, v in phases.items()},
        "parts": {k: int(v) for k, v in parts.items()},
        "disk": int(disk),
        "description": description,
        "n_images": n, "stamp_shape": (n0, n1), "psf_shape": size["psf_shape"],
        "shared_psf": bool(shared_psf), "mode": mode, "n_bands": size["bands"],
        "dtype": work.name, "engine": engine, "boundary": boundary,
        "threads": size["threads"],
    }


def check_memory(estimate: dict, force: bool = False, what: str | None = None,
                 available: int | None = None) -> None:
    """Refuse a run whose estimated peak exceeds the memory available, unless ``force``.

    Parameters
    ----------
    estimate : dict
        From :func:`estimate_bytes`.
    force : bool
        Run anyway (a warning is logged instead).
    what : str, optional
        What is run, for the message (default: the estimate's description).
    available : int, optional
        Bytes available (default: :func:`galdecon.data.memory.available_bytes`).

    Raises
    ------
    ConfigError
        "a run on 1,000,000 stamps 41×41 (sparse, float64) needs about 264.7 GiB; this
        machine has 21.0 GiB available; pass --force to run anyway".
    """
    need = int(estimate["peak"])
    have = available_bytes() if available is None else int(available)
    if need <= have:
        return
    message = (f"{what or estimate['description']} needs about {format_bytes(need)}; this "
               f"machine has {format_bytes(have)} available")
    if force:
        log.warning("%s; running anyway (--force)", message)
        return
    raise ConfigError(message + "; pass --force to run anyway")


def check_inputs(images, psfs, settings, *, force: bool = False, initial_primal=None,
                 truth=None, engine: str = "local", threads: int | None = None,
                 weights=None) -> dict | None:
    """Estimate a run on input files from their headers alone and refuse it if it cannot fit.

    Call it after the options are validated and before anything is read: the headers are
    checked (:func:`galdecon.data.io.peek_shape`), so a truncated file is refused here too.

    Parameters
    ----------
    images, psfs : str or path
        The input files (``file.fits[HDU]`` allowed).
    settings : Settings
        The run's settings (mode, dtype, boundary, wavelet scales, reweights, noise_est).
    force : bool
        Run even if the estimate exceeds the memory available (a warning is logged).
    initial_primal, truth, weights : str or path, optional
        Given when ``-k`` / ``-c`` / ``--weights`` are (counted as arrays of the images'
        size).
    engine : {'local', 'spark'}
    threads : int, optional
        Worker threads (default: the cores available).

    Returns
    -------
    dict or None
        The estimate (:func:`estimate_bytes`), or None when the headers describe arrays the
        validation will refuse anyway (wrong number of dimensions, empty).

    Raises
    ------
    ConfigError
        The estimate exceeds the memory available and not ``force``.
    InputError
        An input's header is unreadable, damaged or promises more data than the file holds.
    """
    shape, image_dtype = io.peek_shape(images)
    psf_shape, psf_dtype = io.peek_shape(psfs)
    if len(shape) not in (2, 3) or len(psf_shape) not in (2, 3) or 0 in shape \
            or 0 in psf_shape:
        return None
    estimate = estimate_bytes(
        shape[0] if len(shape) == 3 else 1, shape[-2:], psf_shape[-2:], len(psf_shape) == 2,
        settings.mode, settings.n_bands, settings.dtype, engine, boundary=settings.boundary,
        n_reweights=settings.n_reweights, input_dtype=image_dtype, psf_dtype=psf_dtype,
        initial_primal=initial_primal is not None, truth=truth is not None,
        weights=weights is not None, noise_given=settings.noise_est is not None,
        threads=threads)
    check_memory(estimate, force, estimate["description"])
    return estimate
