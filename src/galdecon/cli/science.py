"""``galdecon simulate`` and ``galdecon evaluate``: simulated data and quality metrics.

``simulate`` writes simulated data with known truth; ``evaluate`` measures a
deconvolution against it.

Wired into :mod:`galdecon.cli.app` by ``add_simulate_parser``/``add_evaluate_parser`` and
``run_simulate``/``run_evaluate``; errors a user can cause raise
:class:`~galdecon.errors.GalDeconError` (one line, exit status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from galdecon.cli.options import (
    add_verbosity,
    aliases,
    fraction,
    new_parser,
    positive_float,
    positive_int,
)
from galdecon.data import io
from galdecon.errors import ConfigError, InputError

# -- simulate ----------------------------------------------------------------------------

def add_simulate_parser(sub) -> argparse.ArgumentParser:
    """Define ``galdecon simulate`` and its options."""
    from galdecon.science.simulate import DEFAULT_SNR, PIXEL_SCALE, STAMP_SIZE, Population

    p = new_parser(
        sub, "simulate", "simulate galaxies, PSFs and noisy observations with known truth",
        "Simulate a GREAT3-like stack with GalSim: bulge+disk galaxies, Euclid-like optical "
        "PSFs varying across the field, observations Y = H X + noise at several SNRs "
        "(sigma_i = std(H_i X_i) / SNR). Writes one .npz data set (the same seed gives the "
        "same bytes), or a chunked store (NAME.zarr or a URL) written chunk by chunk by "
        "the worker processes, never held in memory (the same arrays as the .npz).")
    out = p.add_argument_group("output")
    out.add_argument(*aliases("-o", "--output"), required=True, metavar="DATASET",
                     help="the data set to write: an .npz file, or a chunked store "
                          "(NAME.zarr, file://, s3://, ...; see galdecon convert)")
    out.add_argument("--chunk", type=positive_int, default=None, metavar="N",
                     help="galaxies per chunk of a store (default 1024; stores only)")
    out.add_argument(*aliases("--export-npy"), metavar="DIR", default=None,
                     help="also write DIR/truth.npy, psfs.npy, clean.npy, "
                          "noisy_snr{S}.npy and catalogue.csv (inputs of galdecon deconvolve)")
    out.add_argument("--overwrite", action="store_true", help="replace existing files")
    sim = p.add_argument_group("simulation")
    sim.add_argument("-n", "--n-galaxies", type=positive_int, required=True, metavar="N",
                     help="number of galaxies")
    sim.add_argument(*aliases("-r", "--seed"), type=int, default=0,
                     help="random seed (the same seed gives the same file)")
    sim.add_argument("--snr", type=positive_float, nargs="+", default=list(DEFAULT_SNR),
                     metavar="S", help="SNR levels, one noisy stack each")
    psf = sim.add_mutually_exclusive_group()
    psf.add_argument(*aliases("--psf-bank"), type=positive_int, default=None, metavar="B",
                     help="draw B PSFs at random field positions and give each galaxy one "
                          "at random (default: one PSF per galaxy at its field position)")
    psf.add_argument(*aliases("--psf-file"), default=None, metavar="PSFS",
                     help="PSFs from a .npy/FITS file, (B, k0, k1) or (k0, k1); each galaxy "
                          "gets one at random")
    sim.add_argument(*aliases("--clumpy-fraction"), type=fraction,
                     default=Population().clumpy_fraction,
                     help="fraction of galaxies with star-forming knots (galsim.RandomKnots)")
    sim.add_argument(*aliases("--median-hlr"), type=positive_float,
                     default=Population().median_hlr, metavar="ARCSEC",
                     help="median half-light radius")
    sim.add_argument(*aliases("--stamp-size"), type=positive_int, default=STAMP_SIZE,
                     help="stamp side in pixels")
    sim.add_argument(*aliases("--pixel-scale"), type=positive_float, default=PIXEL_SCALE,
                     metavar="ARCSEC", help="pixel scale")
    ex = p.add_argument_group("execution")
    ex.add_argument("--workers", type=positive_int, default=None,
                    help="processes drawing galaxies (default: available cores); results "
                         "do not depend on it")
    ex.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress on stderr (default: when stderr is a terminal)")
    add_verbosity(p)
    return p


def _export_paths(directory: Path, snr) -> dict:
    from galdecon.science.dataset import snr_label

    names = ["truth", "psfs", "clean"] + [f"noisy_snr{snr_label(s)}" for s in snr]
    paths = {name: directory / f"{name}.npy" for name in names}
    paths["catalogue"] = directory / "catalogue.csv"
    return paths


def run_simulate(args) -> int:
    """``galdecon simulate``: draw, write the data set (and the npy export)."""
    from galdecon.data import chunked
    from galdecon.science.simulate import Population, export_npy, simulate, write_dataset

    to_store = chunked.is_store(args.output)
    output = args.output if to_store else Path(args.output)
    if not to_store and not output.name.lower().endswith(".npz"):
        raise InputError(f"{output}: the data set is an .npz file or a store; name it *.npz "
                         "or *.zarr")
    if to_store and args.export_npy:
        raise ConfigError("--export-npy needs an .npz output; export the arrays of a store "
                          "with galdecon convert STORE.zarr DIR/truth.npy --array truth")
    if not to_store and args.chunk is not None:
        raise ConfigError("--chunk is for a store output (NAME.zarr); an .npz has no chunks")
    inputs = [args.psf_file] if args.psf_file else []
    io.check_inputs_exist(inputs)
    paths = {"dataset": output}
    if to_store:
        paths = {}  # the store checks its own target
    elif args.export_npy:
        export_dir = Path(args.export_npy)
        if export_dir.exists() and not export_dir.is_dir():
            raise InputError(f"{export_dir}: --export-npy expects a directory")
        if export_dir.is_dir():  # a new directory is made after the checks
            paths |= _export_paths(export_dir, args.snr)
    io.check_outputs(paths, inputs, args.overwrite)

    psfs = None
    if args.psf_file:
        psfs = io.read_array(args.psf_file)
        if psfs.ndim not in (2, 3):
            raise InputError(f"{args.psf_file}: PSFs have shape {psfs.shape}; expected "
                             "(k0, k1) or (B, k0, k1)")
        io.check_finite(psfs, args.psf_file, "PSF")
        if max(psfs.shape[-2:]) > args.stamp_size:
            raise InputError(f"{args.psf_file}: PSF shape {psfs.shape[-2:]} is larger than "
                             f"the stamp ({args.stamp_size} pixels)")
    show = args.progress if args.progress is not None else (sys.stderr.isatty()
                                                            and args.quiet == 0)
    progress = _simulate_progress if show else None
    t0 = time.perf_counter()
    population = Population(clumpy_fraction=args.clumpy_fraction, median_hlr=args.median_hlr)
    if to_store:
        return _simulate_store(args, psfs, population, progress, show, t0)
    dataset = simulate(args.n_galaxies, seed=args.seed, snr=args.snr,
                       stamp_size=args.stamp_size, pixel_scale=args.pixel_scale,
                       psf_bank=args.psf_bank, psfs=psfs, population=population,
                       workers=args.workers, progress=progress)
    if show:
        sys.stderr.write("\n")
    if args.psf_file:
        dataset["meta"]["psf_file"] = {"path": str(args.psf_file),
                                       "sha256": io.sha256(args.psf_file)}
    write_dataset(output, dataset)
    written = [output]
    if args.export_npy:
        written += export_npy(dataset, args.export_npy)
    if not args.quiet:
        cat = dataset["catalogue"]
        print(f"galdecon simulate: {args.n_galaxies} galaxies of {args.stamp_size}x"
              f"{args.stamp_size} pixels, seed {args.seed}, PSFs: {dataset['meta']['psf_mode']},"
              f" SNR {' '.join(f'{s:g}' for s in dataset['snr'])}, "
              f"{time.perf_counter() - t0:.1f} s")
        print(f"  median half-light radius {np.median(cat['hlr']):.3f} arcsec, median |e| "
              f"{np.median(cat['e']):.3f}, clumpy {int(cat['clumpy'].sum())}")
        for path in written:
            print(f"  wrote {path}")
    return 0


def _simulate_store(args, psfs, population, progress, show, t0) -> int:
    """``galdecon simulate -o NAME.zarr``: workers write the chunks as they draw them."""
    from galdecon.science.simulate_store import simulate_to_store

    run = {}
    if args.psf_file:
        run["psf_file"] = {"path": str(args.psf_file), "sha256": io.sha256(args.psf_file)}
    command = (f"galdecon simulate -n {args.n_galaxies} -o {args.output} --seed {args.seed} "
               f"--snr {' '.join(f'{s:g}' for s in args.snr)}")
    store, summary = simulate_to_store(
        args.output, args.n_galaxies, seed=args.seed, snr=args.snr,
        stamp_size=args.stamp_size, pixel_scale=args.pixel_scale, psf_bank=args.psf_bank,
        psfs=psfs, population=population, workers=args.workers, chunk=args.chunk,
        overwrite=args.overwrite, progress=progress,
        provenance={"command": command, "run": run,
                    "sources": [args.psf_file] if args.psf_file else []})
    if show:
        sys.stderr.write("\n")
    if not args.quiet:
        meta = store.provenance["run"]
        print(f"galdecon simulate: {args.n_galaxies} galaxies of {args.stamp_size}x"
              f"{args.stamp_size} pixels, seed {args.seed}, PSFs: {meta['psf_mode']}, SNR "
              f"{' '.join(f'{s:g}' for s in meta['snr'])}, {time.perf_counter() - t0:.1f} s")
        print(f"  median half-light radius {np.median(summary['hlr']):.3f} arcsec, median |e| "
              f"{np.median(summary['e']):.3f}, clumpy {int(summary['clumpy'].sum())}")
        print(f"  wrote {args.output}: {', '.join(store.names)} in "
              f"{len(store.chunk_bounds('truth'))} chunk(s) of {store.chunk('truth')} galaxies")
    return 0


def _simulate_progress(done: int, total: int) -> None:
    sys.stderr.write(f"\rsimulate: {done}/{total} galaxies drawn")
    sys.stderr.flush()


# -- evaluate ----------------------------------------------------------------------------

def add_evaluate_parser(sub) -> argparse.ArgumentParser:
    """Define ``galdecon evaluate`` and its options."""
    from galdecon.science.evaluate import WINDOW_SIGMA

    p = new_parser(
        sub, "evaluate", "measure a deconvolution against the true images",
        "Per-galaxy and aggregated quality of an estimate against the truth: pixel error "
        "(plain and Gaussian-windowed), ellipticity error from unweighted, windowed and "
        "adaptive (GalSim HSM) moments, PSNR. Writes STEM_metrics.json and "
        "STEM_metrics.csv and prints a table.")
    src = p.add_argument_group("inputs")
    src.add_argument(*aliases("-t", "--truth"), default=None, metavar="TRUTH",
                     help="true images: .npy/FITS stack, or a simulated data set .npz "
                          "(default with --record: the run's -c/--clean-data file)")
    src.add_argument(*aliases("-e", "--estimate"), default=None, metavar="ESTIMATE",
                     help="estimated images (.npy/FITS), e.g. STEM_primal.npy")
    src.add_argument("--record", default=None, metavar="RUN.json",
                     help="a deconvolution run record: its primal output is the estimate")
    out = p.add_argument_group("output")
    out.add_argument(*aliases("-o", "--output"), default=None, metavar="STEM",
                     help="write STEM_metrics.json and STEM_metrics.csv (default: the "
                          "estimate file's stem in the current directory)")
    out.add_argument("--overwrite", action="store_true", help="replace existing files")
    out.add_argument(*aliases("--label"), default=None,
                     help="name of the estimate in the table and JSON")
    opts = p.add_argument_group("metrics")
    opts.add_argument(*aliases("--window"), type=positive_float, default=WINDOW_SIGMA,
                      metavar="SIGMA", help="sigma (pixels) of the Gaussian window")
    opts.add_argument(*aliases("--no-hsm"), action="store_true",
                      help="skip the adaptive moments (no GalSim needed)")
    add_verbosity(p)
    return p


def _resolve(path_text: str, record_path: Path) -> Path:
    """A path named in a run record: as written, else relative to the record's folder."""
    path = Path(path_text)
    if path.exists() or path.is_absolute():
        return path
    beside = record_path.parent / path
    return beside if beside.exists() else path


def evaluation_inputs(truth=None, estimate=None, record=None) -> tuple[str, str]:
    """Decide the truth and estimate files from the options (and a run record)."""
    if record is not None:
        record_path = Path(record)
        if not record_path.is_file():
            raise InputError(f"{record_path}: file not found")
        try:
            run = json.loads(record_path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{record_path}: not a JSON run record ({exc})") from None
        if estimate is None:
            primal = (run.get("outputs") or {}).get("primal")
            if not primal:
                raise InputError(f"{record_path}: the record names no primal output "
                                 "(outputs.primal); give -e ESTIMATE")
            estimate = str(_resolve(primal, record_path))
        if truth is None:
            named = ((run.get("data") or {}).get("inputs") or {}).get("truth")
            if not named:
                raise InputError(f"{record_path}: the run had no truth (-c); give -t TRUTH")
            truth = str(_resolve(named, record_path))
    if estimate is None:
        raise InputError("no estimate: give -e ESTIMATE or --record RUN.json")
    if truth is None:
        raise InputError("no truth: give -t TRUTH (or --record of a run made with -c)")
    return str(truth), str(estimate)


def run_evaluate(args) -> int:
    """``galdecon evaluate``: read, measure, write JSON and CSV, print a table."""
    from galdecon.science.dataset import read_truth
    from galdecon.science.evaluate import evaluate, format_summary, write_csv, write_json

    truth_spec, estimate_spec = evaluation_inputs(args.truth, args.estimate, args.record)
    estimate_path = io.split_hdu(estimate_spec)[0]
    stem = Path(args.output) if args.output else Path(estimate_path.name.split(".")[0])
    paths = {"json": stem.with_name(stem.name + "_metrics.json"),
             "csv": stem.with_name(stem.name + "_metrics.csv")}
    inputs = [truth_spec, estimate_spec] + ([args.record] if args.record else [])
    for spec in (truth_spec, estimate_spec):
        if not io.split_hdu(spec)[0].exists():
            raise InputError(f"{io.split_hdu(spec)[0]}: file not found")
    io.check_outputs(paths, inputs, args.overwrite)

    truth = io.as_stack(read_truth(truth_spec), truth_spec, "truth")
    estimate = io.validate_like(io.read_array(estimate_spec), truth, estimate_spec, "estimate")
    result = evaluate(truth, estimate, window=args.window, hsm=not args.no_hsm)
    label = args.label or estimate_path.stem
    result |= {"label": label, "inputs": {"truth": truth_spec, "estimate": estimate_spec,
                                          "record": args.record}}
    write_json(paths["json"], result)
    write_csv(paths["csv"], result)
    if not args.quiet:
        print(f"galdecon evaluate: {label} against {truth_spec}, {len(truth)} galaxies")
        print(format_summary(result))
        for key, value in paths.items():
            print(f"  {key}: {value}")
    return 0
