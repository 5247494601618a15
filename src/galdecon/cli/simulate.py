"""``galdecon simulate``: simulated data with known truth (GalSim), as .npz or a chunked store.

Wired into :mod:`galdecon.cli.app` by :func:`add_simulate_parser` and :func:`run_simulate`;
errors a user can cause raise :class:`~galdecon.errors.GalDeconError` (one line, exit
status 2).
"""

from __future__ import annotations

import argparse
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
