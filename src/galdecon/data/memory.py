"""How much memory a run needs, how much this machine has, and refusing runs that cannot fit.

:func:`estimate_bytes` counts the arrays a deconvolution holds at its peak from the sizes
alone (nothing is allocated), following what the solver really keeps:

* the inputs as read and their working-dtype copies (images, PSFs, initial primal, truth);
* the operators cached per block: the PSF transfer functions and, for the periodic
  boundary, the image spectra, HᵀY and the PSF gains (:class:`~galdecon.core.solver.FourierFidelity`);
* the solver state, twice: the primal (n, N0, N1) and the dual — (n, J, N0, N1) in sparse
  mode, (n, N0, N1) in low rank — of the blocks being replaced and of their successors
  (the engine keeps the previous state as a snapshot while a step runs);
* the sparse weights, (n, J, N0, N1) float64 once reweighted (twice while a second
  reweighting replaces them);
* the per-thread scratch of the sparse loop and the temporaries of the blocks in flight;
* the low-rank matrix: the n × N0·N1 float64 rows, plus the n × n or p × p Gram and its
  eigen-decomposition (:func:`~galdecon.core.operators.prox.low_rank_form`), and the two pending
  arrays (x̃, ỹ) of each low-rank iteration;
* the exact noise estimate (1.4826 · MAD) when σ is not given: a float64 copy of all
  pixels and their deviations;
* the gathered outputs (primal and dual) while the blocks are still held.

The run's peak is the largest of its phases (set-up, iterations, reweighting, gather),
plus a 20 % margin for what is not counted (Python objects, FFT plans, BLAS buffers,
fragmentation). :func:`check_memory` compares it with :func:`available_bytes`.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

from galdecon.errors import ConfigError

log = logging.getLogger("galdecon")

#: Fraction added to the counted peak for what is not counted.
MARGIN = 0.20
#: Galaxies per block of the local engine and per chunk of the sparse loop (see
#: :mod:`galdecon.engines.local` and :data:`galdecon.core.solver.CHUNK_SIZE`).
BLOCK_SIZE = 64
CHUNK_SIZE = 32
#: In local mode the Spark block cache lives in the driver JVM, whose heap is
#: ``spark.driver.memory`` (4 GiB unless set); what does not fit spills to disk.
SPARK_JVM_BYTES = 4 * 2**30
#: Each Spark Python worker keeps at most this much of rebuilt operators.
SPARK_OPERATOR_CACHE_BYTES = 2**30
MODES = ("sparse", "lowr")
ENGINES = ("local", "spark")
BOUNDARIES = ("periodic", "zero")


def format_bytes(n_bytes: float) -> str:
    """Return a size in binary units: ``'512 B'``, ``'3.2 MiB'``, ``'54.3 GiB'``."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"


def _next_fast_len(n: int) -> int:
    import scipy.fft

    return int(scipy.fft.next_fast_len(int(n), real=True))


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


def estimate_bytes(n_images: int, stamp_shape, psf_shape, shared_psf: bool, mode: str,
                   n_bands: int, dtype, engine: str = "local", *, boundary: str = "periodic",
                   n_reweights: int = 1, input_dtype=None, psf_dtype=None,
                   initial_primal: bool = False, truth: bool = False,
                   noise_given: bool = False, threads: int | None = None,
                   block_size: int = BLOCK_SIZE) -> dict:
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
    initial_primal, truth : bool
        Whether an initial primal (``-k``) or the true images (``-c``) are given.
    noise_given : bool
        Whether σ is given (``--noise-est``); otherwise its exact estimate copies the pixels.
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
    n = _positive_int("n_images", n_images)
    n0, n1 = _shape2("stamp_shape", stamp_shape)
    k0, k1 = _shape2("psf_shape", psf_shape)
    if mode not in MODES:
        raise ConfigError(f"memory estimate: mode={mode!r}: expected one of {', '.join(MODES)}")
    if engine not in ENGINES:
        raise ConfigError(f"memory estimate: engine={engine!r}: expected one of "
                          f"{', '.join(ENGINES)}")
    if boundary not in BOUNDARIES:
        raise ConfigError(f"memory estimate: boundary={boundary!r}: expected one of "
                          f"{', '.join(BOUNDARIES)}")
    bands = _positive_int("n_bands", n_bands) if mode == "sparse" else 0
    reweights = _positive_int("n_reweights", n_reweights, 0) if mode == "sparse" else 0
    try:
        work = np.dtype(dtype)
        read = np.dtype(input_dtype) if input_dtype is not None else work
        psf_read = np.dtype(psf_dtype) if psf_dtype is not None else work
    except TypeError as exc:
        raise ConfigError(f"memory estimate: unknown dtype ({exc})") from None
    if work.kind != "f":
        raise ConfigError(f"memory estimate: dtype={work}: expected float64 or float32")
    if threads is None:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - non-Linux
            threads = os.cpu_count() or 1
    threads = _positive_int("threads", threads)
    block_size = _positive_int("block_size", block_size)

    w = work.itemsize
    c = 2 * w  # the matching complex type
    p = n0 * n1
    n_psfs = 1 if shared_psf else n
    stack = n * p * w  # one (n, N0, N1) array in the working dtype
    dual = n * (bands if mode == "sparse" else 1) * p * w
    if boundary == "periodic":
        spectrum = n0 * (n1 // 2 + 1)  # rfft2 on the stamp grid
    else:
        spectrum = _next_fast_len(n0 + k0 // 2) * (_next_fast_len(n1 + k1 // 2) // 2 + 1)
    in_flight = min(n, threads * block_size)  # galaxies whose temporaries are live at once

    parts = {
        "images": n * p * read.itemsize + (stack if read != work else 0),
        "psfs": n_psfs * k0 * k1 * (psf_read.itemsize + (w if psf_read != work else 0)),
        "initial_primal": stack * (1 + (read != work)) if initial_primal else 0,
        "truth": n * p * 8 * (1 + (read != np.float64)) if truth else 0,
    }
    if boundary == "periodic":  # image spectra and HᵀY per stamp; transfer, gain per PSF
        parts["operators"] = n * 2 * spectrum * c + n_psfs * spectrum * (c + 3 * w)
    else:  # the PSF transfer functions on the padded grid
        parts["operators"] = n_psfs * spectrum * c
    parts["state"] = stack + dual
    inputs = sum(parts.values()) - parts["state"]

    phases = {}
    # Set-up: β and the initial weights per block in flight; σ from all pixels.
    setup = inputs + in_flight * (4 * spectrum * 8 + 2 * p * 8 + (bands + 1) * spectrum * 8)
    if not noise_given:
        setup += n * p * w + 3 * n * p * 8  # concatenated pixels, float64, |Y − m|, median
    phases["setup"] = setup
    if mode == "sparse":
        weights = n * bands * p * 8 if reweights else n * bands * 8
        chunk = min(n, CHUNK_SIZE)
        scratch = threads * chunk * ((6 * bands + 3) * p * w + 3 * spectrum * c)
        parts["weights"] = weights
        parts["scratch"] = scratch
        phases["iterations"] = inputs + 2 * parts["state"] + weights + scratch
        if reweights:
            temporaries = in_flight * bands * p * (2 * w + 3 * 8)
            held = 2 * weights if reweights > 1 else weights + n * bands * 8
            phases["reweighting"] = inputs + parts["state"] + held + scratch + temporaries
        phases["gather"] = inputs + 2 * parts["state"] + weights + scratch
    else:
        form_rows = n < p
        matrix = n * p * 8
        gram = (n * n if form_rows else p * p) * 8
        parts["low_rank_matrix"] = matrix + 2 * gram  # rows, Gram, eigensolver copy
        pending = 2 * stack  # x̃ and ỹ of every block between the two halves
        temporaries = in_flight * (p * w + 2 * spectrum * c)
        begin = inputs + parts["state"] + pending + parts["low_rank_matrix"] + temporaries
        finish = inputs + 2 * parts["state"] + pending + in_flight * p * w
        phases["iterations"] = max(begin, finish)
        phases["gather"] = inputs + 2 * parts["state"]
    if truth:  # the metrics: float64 copies of the estimate (windowed) beside the truth
        phases["gather"] += 2 * n * p * 8

    disk = 0
    if engine == "spark":
        # The driver keeps the inputs and assembles the gathered arrays (parts + the
        # concatenation); the blocks live pickled in the JVM cache (current state and the
        # snapshot), spilling to disk beyond its heap; each Python worker holds its tile
        # twice (unpickled and its successor) and its operator cache.
        tile = min(n, block_size)
        per_galaxy_state = (parts["state"] + parts.get("weights", 0)) / n
        per_galaxy_static = (parts["images"] + parts["psfs"] + parts["initial_primal"]) / n
        cache = 2 * n * (per_galaxy_state + per_galaxy_static)
        jvm = min(cache, SPARK_JVM_BYTES)
        disk = cache - jvm
        operators_per_tile = parts["operators"] / n * tile
        workers = threads * (2 * tile * (per_galaxy_state + per_galaxy_static)
                             + min(SPARK_OPERATOR_CACHE_BYTES, operators_per_tile * n / threads)
                             + parts.get("scratch", 0) / threads)
        driver_inputs = parts["images"] + parts["psfs"] + parts["initial_primal"] + \
            parts["truth"]
        gathered = stack + 2 * dual
        low_rank = parts.get("low_rank_matrix", 0)
        parts.update(spark_jvm_cache=jvm, spark_workers=workers)
        phases = {
            "setup": driver_inputs + n * (per_galaxy_static) + jvm,  # the pickled scatter
            "iterations": driver_inputs + jvm + workers + low_rank,
            "gather": driver_inputs + jvm + workers + gathered,
        }
        if truth:
            phases["gather"] += 2 * n * p * 8
    phase = max(phases, key=phases.get)
    counted = int(phases[phase])
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
        "n_images": n, "stamp_shape": (n0, n1), "psf_shape": (k0, k1),
        "shared_psf": bool(shared_psf), "mode": mode, "n_bands": bands,
        "dtype": work.name, "engine": engine, "boundary": boundary, "threads": threads,
    }


def _cgroup_limit() -> int | None:
    """Memory left under this process's cgroup (v2 or v1) limit, if there is one."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as handle:
                text = handle.read().strip()
            with open(usage_file) as handle:
                usage = int(handle.read().strip())
        except (OSError, ValueError):
            continue
        if text.isdigit() and int(text) < 2**60:
            return max(0, int(text) - usage)
    return None


def available_bytes() -> int:
    """Return the memory this process can still use, in bytes.

    ``psutil.virtual_memory().available`` (free plus reclaimable page cache), else
    ``MemAvailable`` of ``/proc/meminfo``, else the free pages (``os.sysconf``); capped by
    a cgroup memory limit when the process runs under one (containers).
    """
    value = None
    try:
        import psutil

        value = int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or unsupported: use the fallbacks
        value = None
    if value is None:
        try:
            with open("/proc/meminfo") as handle:
                for line in handle:
                    if line.startswith("MemAvailable:"):
                        value = int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            value = None
    if value is None:
        try:
            value = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
            value = 0
    limit = _cgroup_limit()
    return int(value if limit is None else min(value, limit))


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
        Bytes available (default: :func:`available_bytes`).

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
                 truth=None, engine: str = "local", threads: int | None = None) -> dict | None:
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
    initial_primal, truth : str or path, optional
        Given when ``-k`` / ``-c`` are (counted as arrays of the images' size).
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
    from galdecon.data import io  # io imports this module

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
        noise_given=settings.noise_est is not None, threads=threads)
    check_memory(estimate, force, estimate["description"])
    return estimate
