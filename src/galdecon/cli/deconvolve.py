"""``galdecon deconvolve``: read, validate, solve, write — or resume a checkpointed run.

``galdecon deconvolve -i IMAGES -p PSFS [-o STEM] [options]`` accepts sf_deconvolve's option
set (both ``--n-iter`` and ``--n_iter`` spellings) and ``@file`` option files; errors a user
can cause raise :class:`~galdecon.errors.GalDeconError` (one line, exit status 2).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import signal
import sys
from pathlib import Path

from tqdm import tqdm

from galdecon.cli import notices, results
from galdecon.cli.options import (
    HelpFormatter,
    OptionFileParser,
    add_verbosity,
    aliases,
    count_or_auto,
    float_or_auto,
    noise_estimate,
    positive_float,
    positive_int,
    top_parser,
)
from galdecon.core.operators.convolution import BOUNDARIES
from galdecon.core.operators.wavelet import WAVELETS
from galdecon.core.problem import COST_WINDOWS, DTYPES, MODES, Settings
from galdecon.data import io
from galdecon.errors import ConfigError
from galdecon.run import preflight

DEFAULTS = Settings()
OUTPUT_FORMATS = (*io.OUTPUT_FORMATS, "zarr")


def add_deconvolve_parser(sub) -> argparse.ArgumentParser:
    """Define ``galdecon deconvolve`` and its options."""
    p = sub.add_parser(
        "deconvolve", help="deconvolve a stack of galaxy stamps",
        description="Deconvolve a stack of galaxy stamps from their PSFs (Condat-Vu "
                    "primal-dual; sparse wavelet or low-rank regularisation). "
                    "Options may be read from files: galdecon deconvolve @options.txt",
        formatter_class=HelpFormatter,
        fromfile_prefix_chars="@")
    p.__class__ = OptionFileParser
    _add_io_options(p)
    _add_optimisation_options(p)
    _add_mode_options(p)
    _add_evaluation_options(p)
    _add_checkpoint_options(p)
    _add_execution_options(p)
    add_verbosity(p)
    return p


def _add_io_options(p) -> None:
    """Input and output files."""
    io_group = p.add_argument_group("input and output")
    io_group.add_argument(*aliases("-i", "--input"), metavar="IMAGES",
                          help="observed stamps: .npy or FITS (file.fits[HDU] picks an HDU), "
                               "or a chunked store (URL[array], default array images; read "
                               "by the workers); shape (n, N0, N1) or (N0, N1) (required "
                               "unless --resume)")
    io_group.add_argument(*aliases("-p", "--psf"), metavar="PSFS",
                          help="PSFs: one per stamp (n, k0, k1) or one for all (k0, k1); with "
                               "a store input, default: its psfs array (required otherwise, "
                               "unless --resume)")
    io_group.add_argument(*aliases("-o", "--output"), metavar="STEM", default=None,
                          help="output stem: writes STEM_primal, STEM_dual, STEM_run.json, "
                               "STEM_cost.png and STEM_gallery.png, all or none, locking "
                               "STEM.lock meanwhile; a directory (or DIR/) writes inside it, "
                               "named after the input (default: the input file's stem in the "
                               "current directory)")
    io_group.add_argument(*aliases("--output-format"), choices=OUTPUT_FORMATS,
                          default=None,
                          help="format of the primal and dual: npy, fits, or zarr (one "
                               "chunked store STEM.zarr, written by the workers); default: "
                               "zarr when the input is a chunked store, else npy")
    io_group.add_argument(*aliases("-k", "--current-res"), metavar="PRIMAL", default=None,
                          help="initial primal (e.g. a previous result); default: ones")
    io_group.add_argument("--weights", metavar="WEIGHTS", default=None,
                          help="per-pixel inverse variances, the images' shape, 0 = masked "
                               "(bad pixels, neighbours); each stamp's median unmasked "
                               "weight gives its noise sigma unless --noise-est is given; "
                               "a store array with a store input (URL[array], default "
                               "array weights)")
    io_group.add_argument("--overwrite", action="store_true",
                          help="replace existing output files")
    io_group.add_argument(*aliases("--no-plots"), action="store_true",
                          help="do not write the cost-curve and gallery PNGs")


def _add_optimisation_options(p) -> None:
    """The solver's options."""
    opt = p.add_argument_group("optimisation")
    opt.add_argument(*aliases("-m", "--mode"), choices=MODES, default=DEFAULTS.mode,
                     help="regularisation: sparse wavelet or low rank")
    opt.add_argument(*aliases("--n-iter"), type=positive_int, default=DEFAULTS.n_iter,
                     help="maximum iterations per run and per reweighting")
    opt.add_argument(*aliases("--cost-window"), type=positive_int, default=None,
                     help="compute the cost every this many iterations (default: "
                          f"{COST_WINDOWS['sparse']} sparse, {COST_WINDOWS['lowr']} low rank; "
                          "1 is sf_deconvolve's)")
    opt.add_argument(*aliases("--convergence"), type=float, default=DEFAULTS.tolerance,
                     metavar="TOL", help="relative cost tolerance of the convergence test")
    opt.add_argument(*aliases("--no-pos"), action="store_true",
                     help="no positivity constraint")
    opt.add_argument(*aliases("--noise-est"), type=noise_estimate, default=None,
                     metavar="SIGMA|global|per-image|border",
                     help="noise standard deviation: a number for the whole stack; global "
                          "(default): 1.4826 x MAD of all pixels; per-image: one sigma a "
                          "stamp, from its MAD; border: one a stamp, from the MAD of its "
                          "border pixels (a tenth of the side); the sparse thresholds follow "
                          "each stamp's sigma")
    opt.add_argument(*aliases("--relax"), type=float, default=DEFAULTS.relax,
                     help="Condat relaxation parameter rho")
    opt.add_argument(*aliases("--condat-sigma"), type=float_or_auto,
                     default=DEFAULTS.condat_sigma, help="dual step size, or 'auto'")
    opt.add_argument(*aliases("--condat-tau"), type=float_or_auto,
                     default=DEFAULTS.condat_tau,
                     help="primal step size, or 'auto' (from the exact operator norms)")
    opt.add_argument(*aliases("--boundary"), choices=BOUNDARIES, default=DEFAULTS.boundary,
                     help="boundary of every convolution")
    opt.add_argument(*aliases("--dtype"), choices=DTYPES, default=DEFAULTS.dtype,
                     help="working precision")


def _add_mode_options(p) -> None:
    """Options of the sparse and of the low-rank mode."""
    sparse = p.add_argument_group("sparse mode")
    sparse.add_argument(*aliases("--wavelet"), choices=sorted(WAVELETS),
                        default=DEFAULTS.wavelet,
                        help="a trous smoothing kernel: starlet (B3 spline) or linear")
    sparse.add_argument(*aliases("--n-scales"), type=int, default=DEFAULTS.n_scales,
                        help="wavelet scales including the (dropped) coarse scale")
    sparse.add_argument(*aliases("--wave-thresh-factor"), type=float, nargs="+",
                        default=list(DEFAULTS.wave_thresh_factor), metavar="K",
                        help="threshold factor per detail scale (n-scales - 1 values)")
    sparse.add_argument(*aliases("--n-reweights"), type=int, default=DEFAULTS.n_reweights,
                        help="number of reweighting rounds")
    sparse.add_argument(*aliases("--reweight-min-snr"), type=float,
                        default=DEFAULTS.reweight_min_snr, metavar="SNR",
                        help="galaxies whose estimated SNR, std(H x)/sigma, is below this keep "
                             "their weights at a reweighting (default %(default)s; 0 "
                             "reweights every galaxy, as sf_deconvolve)")

    lowr = p.add_argument_group("low-rank mode")
    lowr.add_argument(*aliases("--lowr-thresh-factor"), type=float, default=None,
                      help="low-rank threshold factor f, lambda = f sigma sqrt(max(n + 1, "
                           "p)) beta (default: 0.1 for soft, 1 for hard, the reference's)")
    lowr.add_argument(*aliases("--lowr-type"), choices=("standard",),
                      default=DEFAULTS.lowr_type, help="low-rank formulation")
    lowr.add_argument(*aliases("--lowr-thresh-type"), choices=("hard", "soft"),
                      default=DEFAULTS.lowr_thresh_type,
                      help="singular-value threshold type (default soft: the nuclear norm, "
                           "which converges; hard, the reference's, oscillates)")


def _add_evaluation_options(p) -> None:
    """Metrics against the truth."""
    ev = p.add_argument_group("evaluation against the truth")
    ev.add_argument(*aliases("-c", "--clean-data"), metavar="TRUTH", default=None,
                    help="true images: print and record pixel error, ellipticity error, PSNR")
    ev.add_argument(*aliases("-r", "--random-seed"), type=int, default=None,
                    help="seed used to select the clean data (recorded only)")
    ev.add_argument(*aliases("--kernel"), type=positive_float, default=None,
                    metavar="SIGMA",
                    help="sigma (pixels) of a Gaussian window applied before the metrics")
    ev.add_argument(*aliases("--metric"), choices=("median", "mean"), default="median",
                    help="aggregate printed first")


def _add_checkpoint_options(p) -> None:
    """Checkpoints and resuming."""
    rel = p.add_argument_group("checkpoints and resuming")
    rel.add_argument("--resume", metavar="CHECKPOINT", default=None,
                     help="continue the run saved in this checkpoint directory, with the "
                          "options it was started with (options given here override "
                          "those that do not change the result, e.g. --engine); the result "
                          "is that of the uninterrupted run")
    rel.add_argument(*aliases("--checkpoint"), metavar="DIR", default=None,
                     help="checkpoint directory (default: STEM_checkpoint, or the resumed one)")
    rel.add_argument(*aliases("--checkpoint-every"), type=count_or_auto, default="auto",
                     metavar="M", help="write a checkpoint every M iterations (0: only when "
                                       "interrupted; default auto: every 10 minutes of run "
                                       "time); SIGINT/SIGTERM always write one")
    rel.add_argument(*aliases("--keep-checkpoint"), action="store_true",
                     help="keep the checkpoint directory after a successful run")


def _add_execution_options(p) -> None:
    """Engine, synchronisation, progress."""
    eng = p.add_argument_group("execution")
    eng.add_argument("--engine", choices=("local", "spark"), default="local",
                     help="where blocks run: this process, or Apache Spark")
    eng.add_argument("--master", default=None,
                     help="Spark master URL (default local[*,4]: every core, 4 attempts a task); "
                          "e.g. spark://host:7077")
    eng.add_argument("--partitions", "--pn", type=positive_int, default=None,
                     help="Spark partitions (blocks); default: Spark's default parallelism, "
                          "or more so that each holds at most 256 MiB of state")
    eng.add_argument("--spark-storage", choices=("auto", "memory", "disk"), default="auto",
                     help="where Spark keeps the blocks: the JVM heap, the local directories, "
                          "or auto (default): disk when two generations of the state would "
                          "not fit in the executors' storage memory")
    eng.add_argument(*aliases("--sync-every"), type=positive_int, default=None, metavar="K",
                     help="iterations per synchronisation (default 4 x cost-window locally, "
                          "16 x cost-window on Spark); results agree to rounding whatever K")
    eng.add_argument("--threads", type=positive_int, default=None,
                     help="threads of the local engine (default: available cores)")
    eng.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar on stderr (default: when stderr is a terminal)")
    eng.add_argument("--force", action="store_true",
                     help="run even when the memory estimate exceeds the memory available, "
                          "or the outputs' size the free disk space")


class ProgressBar:
    """A one-line progress bar with the cost and an ETA, on stderr."""

    def __init__(self, stream=None):
        # tqdm: a maintained bar (rates, ETA, terminal width) instead of our own formatting.
        self.bar = tqdm(total=0, unit="it", file=stream or sys.stderr, dynamic_ncols=True,
                        leave=True)

    def __call__(self, done: int, planned: int, cost: float) -> None:
        """The driver's progress hook: ``done`` of ``planned`` iterations, the last cost."""
        self.bar.total = planned
        self.bar.n = done  # not update(): a restarted run may go back to its checkpoint
        self.bar.set_postfix_str(f"cost {cost:.6g}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        """End the bar's line."""
        self.bar.close()


def settings_from_args(args) -> Settings:
    """Build validated Settings from parsed arguments."""
    return Settings(
        mode=args.mode, wavelet=args.wavelet, n_scales=args.n_scales,
        wave_thresh_factor=tuple(args.wave_thresh_factor), boundary=args.boundary,
        n_iter=args.n_iter, tolerance=args.convergence, cost_window=args.cost_window,
        n_reweights=args.n_reweights, reweight_min_snr=args.reweight_min_snr,
        relax=args.relax, condat_tau=args.condat_tau,
        condat_sigma=args.condat_sigma, positivity=not args.no_pos,
        lowr_thresh_factor=args.lowr_thresh_factor, lowr_thresh_type=args.lowr_thresh_type,
        lowr_type=args.lowr_type, noise_est=args.noise_est, dtype=args.dtype)


#: Options a resumed run takes from the checkpoint unless given again (all but these).
NOT_RESUMED = ("command", "resume", "quiet", "verbose", "progress")
#: Options naming files, stored absolute so a run resumes from any directory.
PATH_OPTIONS = ("input", "psf", "current_res", "clean_data", "weights", "output",
                "checkpoint")


def explicit_options(argv) -> dict:
    """The ``deconvolve`` options actually given in ``argv`` (``@files`` expanded)."""
    parser, sub = top_parser()
    for action in add_deconvolve_parser(sub)._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


def resumed_args(args, argv):
    """The options of a resumed run: the checkpoint's, overridden by those given now."""
    from galdecon.run import checkpoint

    saved = checkpoint.load(args.resume)
    stored = saved.extra.get("cli", {}).get("options")
    if not isinstance(stored, dict):
        raise ConfigError(f"{saved.path}: the checkpoint holds no command-line options; "
                          "resume it with galdecon.deconvolve(resume=...)")
    given = explicit_options(argv)
    merged = vars(args) | {k: v for k, v in stored.items() if k not in NOT_RESUMED}
    merged |= {k: v for k, v in given.items() if k in vars(args)}
    if "checkpoint" not in given and not stored.get("checkpoint_explicit"):
        merged["checkpoint"] = str(saved.path)
    merged["resume"] = saved
    return argparse.Namespace(**merged)


def cli_options(args) -> dict:
    """The options to store in checkpoints (JSON-friendly, file names absolute)."""
    out = {}
    for key, value in vars(args).items():
        if key in NOT_RESUMED:
            continue
        if key in PATH_OPTIONS and value is not None and "://" not in str(value):
            path, hdu = io.split_hdu(value)
            value = str(path.resolve()) + (f"[{hdu}]" if hdu is not None else "")
        out[key] = value
    return out




def run_deconvolve(args, argv=None) -> int:
    """``galdecon deconvolve``: read, validate, solve, write (or resume, then write)."""
    from galdecon.run import checkpoint
    from galdecon.run.interrupt import StopRequest, handle_signals

    argv = sys.argv[1:] if argv is None else list(argv)
    if args.resume:
        args = resumed_args(args, argv)
    files = check_files(args)
    stop = StopRequest()
    with handle_signals(stop), results.claim_outputs(args, files) as outputs:
        stacks, names = read_stacks(args, files)
        if not args.quiet:
            notices.engine_options(args, stacks[0])
        writer = output_store(args, files, names, outputs)
        with writer if writer is not None else contextlib.nullcontext():
            result = solve(args, files, stacks, names, stop, writer)
        record = results.write_results(result, args, files, stacks[0], names, argv, outputs)
        if not args.keep_checkpoint:  # under the stem's lock: no other run uses it now
            checkpoint.remove(files.checkpoint)
    report(record, args)
    if stop.requested:  # the signal came after the last iteration: the outputs are whole
        print(f"galdecon: {signal_name(stop.signum)} received after the run finished; the "
              "outputs are complete", file=sys.stderr)
        return 128 + stop.signum
    return 0


@dataclasses.dataclass
class RunFiles:
    """What a ``deconvolve`` command reads and writes, checked before anything is read."""

    settings: Settings
    stored: bool  # the input is a chunked store (read by the workers)
    fmt: str
    paths: dict
    checkpoint: Path
    stem: Path
    inputs: list  # the input files given, as typed


def check_files(args) -> RunFiles:
    """Decide and check the inputs, outputs and checkpoint directory (from headers alone)."""
    from galdecon.data.sources import is_store_spec

    stored = is_store_spec(args.input)
    if not args.resume and (args.input is None or (args.psf is None and not stored)):
        raise ConfigError("the following arguments are required: -i/--input, -p/--psf "
                          "(or --resume CHECKPOINT)")
    settings = settings_from_args(args)
    fmt = args.output_format or ("zarr" if stored else "npy")
    stem = results.output_stem(args.output, args.input)
    paths = results.output_paths(stem, fmt, plots=not args.no_plots)
    ckpt_dir = Path(args.checkpoint) if args.checkpoint else stem.with_name(
        stem.name + "_checkpoint")
    inputs = [args.input, args.psf, args.current_res, args.clean_data, args.weights]
    given = [spec for spec in inputs if spec is not None]
    io.check_inputs_exist([spec for spec in inputs if not is_store_spec(spec)])
    io.check_outputs(paths, given, args.overwrite)  # again, under the stem's lock, later
    if stored and (args.clean_data or not all(is_store_spec(s) for s in inputs if s)):
        raise ConfigError(f"{args.input} is a chunked store: give the PSFs (and -k) as "
                          "stores too; -c/--clean-data is not supported with stores "
                          "(galdecon convert STEM.zarr[primal] to .npy, then galdecon evaluate)")
    if not stored:  # from the headers alone, before anything is read
        preflight.check_inputs(args.input, args.psf, settings, force=args.force,
                               initial_primal=args.current_res, truth=args.clean_data,
                               engine=args.engine, threads=args.threads,
                               weights=args.weights)
    return RunFiles(settings, stored, fmt, paths, ckpt_dir, stem, given)


def read_stacks(args, files: RunFiles) -> tuple[tuple, dict]:
    """(images, psfs, primal, truth, weights) — a StoreStack and Nones with stores — and
    their names."""
    from galdecon.data.sources import StoreStack

    limit = math.inf if args.force else None  # read_array's default: the memory available
    resume = args.resume
    if files.stored:
        images = StoreStack.open(args.input, args.psf,
                                 args.current_res if not resume else None, args.dtype,
                                 weights=args.weights)
        stacks = (images, None, None, None, None)
    else:
        def optional(spec):
            return io.read_array(spec, max_bytes=limit) if spec else None

        stacks = (io.read_array(args.input, max_bytes=limit),
                  io.read_array(args.psf, max_bytes=limit),
                  optional(args.current_res) if not resume else None,
                  optional(args.clean_data), optional(args.weights))
    names = {"images": args.input, "psfs": args.psf, "primal": args.current_res,
             "truth": args.clean_data, "weights": args.weights}
    return stacks, {k: str(v) for k, v in names.items() if v}


def engine_options(args) -> dict:
    """The engine's options from the command line."""
    if args.engine == "spark":
        return {"master": args.master, "partitions": args.partitions,
                "verbose": args.verbose > 0, "storage": args.spark_storage}
    return {"threads": args.threads} if args.threads else {}


def output_store(args, files: RunFiles, names: dict, outputs):
    """The chunked store the workers write the outputs to (zarr format), or None.

    It is finished in its temporary directory and renamed with the run record
    (``outputs``, the run's output set), so neither appears without the other.
    """
    if files.fmt != "zarr":
        return None
    from galdecon.data import chunked

    writer = chunked.create_store(
        files.paths["store"], overwrite=args.overwrite, publish=False,
        provenance={"command": "galdecon deconvolve",
                    "run": {"settings": dataclasses.asdict(files.settings), "inputs": names}})
    outputs.adopt("store", writer.work_path)
    return writer


def solve(args, files: RunFiles, stacks: tuple, names: dict, stop, writer):
    """Run :func:`galdecon.deconvolve` with the command line's options (and progress bar)."""
    from galdecon.run.api import deconvolve

    images, psfs, primal, truth, weights = stacks
    show = args.progress if args.progress is not None else (sys.stderr.isatty()
                                                            and args.quiet == 0)
    bar = ProgressBar() if show else None
    every = None if args.checkpoint_every == "auto" else args.checkpoint_every
    options = cli_options(args) | {"checkpoint_explicit": args.checkpoint is not None}
    try:
        return deconvolve(images, psfs, initial_primal=primal, truth=truth, weights=weights,
                          engine=args.engine, sync_every=args.sync_every, kernel=args.kernel,
                          progress=bar, settings=files.settings, input_names=names,
                          checkpoint=files.checkpoint, checkpoint_every=every,
                          checkpoint_extra={"cli": {"options": options}},
                          resume=args.resume, stop=stop, output=writer,
                          **engine_options(args))
    finally:
        if bar is not None:
            bar.close()


def signal_name(signum: int) -> str:
    """SIGINT, SIGTERM, ..."""
    return signal.Signals(signum).name


def report(record: dict, args) -> None:
    """Print the outcome (unless quiet)."""
    if args.quiet:
        return
    res, timing = record["result"], record["timing"]
    print(f"galdecon {record['settings']['mode']}: {record['data']['n_images']} images, "
          f"{res['iterations']} iterations {res['iterations_per_round']}, converged="
          f"{res['converged']}, final cost {res['final_cost']:.6g}")
    problem = record["problem"]
    sigmas = problem.get("noise_sigmas")
    sigma = (f"sigma per image {sigmas['min']:.4g}..{sigmas['max']:.4g} (median "
             f"{sigmas['median']:.4g})" if sigmas else f"sigma={problem['noise_sigma']:.6g}")
    print(f"  {sigma} beta={problem['beta']:.8g}  median "
          f"{timing['median_iteration_s'] * 1e3:.2f} ms/iteration, total "
          f"{timing['total_s']:.2f} s")
    if "metrics" in record:
        first = args.metric
        second = "mean" if first == "median" else "median"
        for agg in (first, second):
            m = record["metrics"][agg]
            print(f"  {agg:6s} pixel error {m['pixel_error']:.6g}  ellipticity error "
                  f"{m['ellipticity_error']:.6g}  PSNR {m['psnr']:.4g} dB")
    for key, value in record["outputs"].items():
        print(f"  {key}: {value}")
    notices.unconverged(record)

