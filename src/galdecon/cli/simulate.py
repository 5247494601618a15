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
    from galdecon.science.simulate import (
        BULGE_DISK,
        DEFAULT_FLUX_DEX,
        DEFAULT_SNR,
        PIXEL_SCALE,
        STAMP_SIZE,
        Population,
    )

    sersic = Population()
    p = new_parser(
        sub, "simulate", "simulate galaxies, PSFs and noisy observations with known truth",
        "Simulate a GREAT3-like stack with GalSim: galaxies seen through Euclid-like optical "
        "PSFs varying across the field, noisy observations at several SNRs. By default "
        "(--model galsim) the observation is GalSim's own convolution of the galaxy and PSF "
        "profiles with the pixel response, the truth the galaxy drawn with the pixel, and "
        "the PSF given to the solver the stamp-sized image drawn without the pixel (unit "
        "sum, truncated by the stamp): the solver's model is then an approximation of the "
        "data, as on the sky. --model discrete makes Y = H X with galdecon's own periodic "
        "convolution of the truth (the data of the tables in docs/science.md). Writes one "
        ".npz data set (the same seed gives the same bytes), or a chunked store (NAME.zarr "
        "or a URL) written chunk by chunk by the worker processes, never held in memory "
        "(the same arrays as the .npz).")
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
    sim.add_argument("--model", choices=("galsim", "discrete"), default="galsim",
                     help="how observations are made: galsim (default) = "
                          "galsim.Convolve([galaxy, psf]) drawn with the pixel, the way the "
                          "sky does; discrete = galdecon's own periodic convolution of the "
                          "truth with the PSF image (an 'inverse crime' that flatters "
                          "methods sharing the model; default population bulge+disk, the "
                          "data of docs/science.md bit for bit)")
    sim.add_argument("--snr", type=positive_float, nargs="+", default=list(DEFAULT_SNR),
                     metavar="S", help="SNR levels, one noisy stack each")
    sim.add_argument("--noise", choices=("snr", "sky"), default="snr",
                     help="snr (default, the papers' convention): sigma_i = std(H_i X_i) / "
                          "SNR per galaxy; sky: one sigma per level for the whole stack, "
                          "galaxy fluxes spread over --flux-dex decades, the SNR being the "
                          "median over galaxies of std(H_i X_i) / sigma")
    sim.add_argument(*aliases("--flux-dex"), type=_non_negative, default=DEFAULT_FLUX_DEX,
                     metavar="DEX", help="with --noise sky: the decades galaxy fluxes span, "
                     "drawn from Euclidean counts N(>F) ~ F^-1.5 above a faint limit, so "
                     f"most are near it (default {DEFAULT_FLUX_DEX:g})")
    psf = sim.add_mutually_exclusive_group()
    psf.add_argument(*aliases("--psf-bank"), type=positive_int, default=None, metavar="B",
                     help="draw B PSFs at random field positions and give each galaxy one "
                          "at random (default: one PSF per galaxy at its field position)")
    psf.add_argument(*aliases("--psf-file"), default=None, metavar="PSFS",
                     help="PSFs from a .npy/FITS file, (B, k0, k1) or (k0, k1), sampled "
                          "without the pixel; each galaxy gets one at random")
    _add_population_options(p, sersic, BULGE_DISK)
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


def _non_negative(text: str) -> float:
    """A finite number >= 0 (0: every galaxy has the same flux)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def _add_population_options(p, sersic, bulge_disk) -> None:
    """The galaxy population's options; unset ones take the model's default population."""
    pop = p.add_argument_group(
        "galaxies", "defaults: with --model galsim a realistic mix of Sersic galaxies "
        f"(index log-uniform {sersic.sersic_range[0]:g}-{sersic.sersic_range[1]:g}, median "
        "1.4: mostly disks, some spheroids, roughly as in HST Sersic fits of faint "
        f"galaxies; half-light radius log-normal, median {sersic.median_hlr:g}\", up to "
        f"{sersic.hlr_range[1]:g}\" (a half-light diameter of half the 41-pixel stamp); "
        f"{sersic.clumpy_fraction:g} with star-forming knots, {sersic.blend_fraction:g} "
        f"blended with a neighbour; true images at {sersic.truth_fwhm:g}\" resolution); "
        "with --model discrete the bulge+disk population of docs/science.md (median "
        f"{bulge_disk.median_hlr:g}\", no knots, no blends)")
    pop.add_argument("--profile", choices=("sersic", "bulge+disk"), default=None,
                     help="galaxy profile (default: sersic for galsim, bulge+disk for "
                          "discrete)")
    pop.add_argument(*aliases("--sersic-range"), type=positive_float, nargs=2, default=None,
                     metavar=("LOW", "HIGH"), help="Sersic index range, drawn log-uniform "
                     f"(default {sersic.sersic_range[0]:g} {sersic.sersic_range[1]:g}; "
                     "GalSim allows 0.3-6.2)")
    pop.add_argument(*aliases("--median-hlr"), type=positive_float, default=None,
                     metavar="ARCSEC", help="median half-light radius (default "
                     f"{sersic.median_hlr:g}, discrete {bulge_disk.median_hlr:g})")
    pop.add_argument(*aliases("--max-hlr"), type=positive_float, default=None,
                     metavar="ARCSEC", help="largest half-light radius (default "
                     f"{sersic.hlr_range[1]:g}, discrete {bulge_disk.hlr_range[1]:g})")
    pop.add_argument(*aliases("--clumpy-fraction"), type=fraction, default=None,
                     help="fraction of galaxies with star-forming knots (galsim.RandomKnots;"
                          f" default {sersic.clumpy_fraction:g}, discrete "
                          f"{bulge_disk.clumpy_fraction:g})")
    pop.add_argument(*aliases("--truth-fwhm"), type=_non_negative, default=None,
                     metavar="ARCSEC", help="resolution of the true image: the galaxies are "
                     f"convolved with a Gaussian of this FWHM (default {sersic.truth_fwhm:g}"
                     ", well below the PSF's 0.16; 0: full resolution, where HSM fails on "
                     "the cusps of ~8 %% of true images and knots become Gaussians one "
                     "pixel wide)")
    pop.add_argument(*aliases("--blend-fraction"), type=fraction, default=None,
                     help="fraction of stamps with a second, offset galaxy (default "
                          f"{sersic.blend_fraction:g}, discrete {bulge_disk.blend_fraction:g})")


def population_from_args(args):
    """The population the options ask for: the model's default, changed where given."""
    import dataclasses

    from galdecon.science.simulate import default_population

    base = default_population(args.model)
    changes = {"profile": args.profile, "median_hlr": args.median_hlr,
               "clumpy_fraction": args.clumpy_fraction, "blend_fraction": args.blend_fraction,
               "sersic_range": tuple(args.sersic_range) if args.sersic_range else None,
               "hlr_range": (min(base.hlr_range[0], args.max_hlr), args.max_hlr)
               if args.max_hlr else None}
    changes["truth_fwhm"] = args.truth_fwhm
    changes = {k: v for k, v in changes.items() if v is not None}
    if changes.get("truth_fwhm") == 0 and base.knot_fwhm == 0:
        changes["knot_fwhm"] = args.pixel_scale  # point knots need a resolution to be drawn
    return dataclasses.replace(base, **changes)


def _export_paths(directory: Path, snr) -> dict:
    from galdecon.science.dataset import snr_label

    names = ["truth", "psfs", "clean"] + [f"noisy_snr{snr_label(s)}" for s in snr]
    paths = {name: directory / f"{name}.npy" for name in names}
    paths["catalogue"] = directory / "catalogue.csv"
    return paths


def run_simulate(args) -> int:
    """``galdecon simulate``: draw, write the data set (and the npy export)."""
    from galdecon.data import chunked
    from galdecon.science.simulate import export_npy, simulate, write_dataset

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
    population = population_from_args(args)
    if to_store:
        return _simulate_store(args, psfs, population, progress, show, t0)
    dataset = simulate(args.n_galaxies, seed=args.seed, snr=args.snr,
                       stamp_size=args.stamp_size, pixel_scale=args.pixel_scale,
                       psf_bank=args.psf_bank, psfs=psfs, population=population,
                       model=args.model, noise=args.noise, flux_dex=args.flux_dex,
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
        print(f"  model {args.model}, noise {args.noise}, {_population_line(cat)}")
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
               f"--snr {' '.join(f'{s:g}' for s in args.snr)} --model {args.model} "
               f"--noise {args.noise}")
    store, summary = simulate_to_store(
        args.output, args.n_galaxies, seed=args.seed, snr=args.snr,
        stamp_size=args.stamp_size, pixel_scale=args.pixel_scale, psf_bank=args.psf_bank,
        psfs=psfs, population=population, model=args.model, noise=args.noise,
        flux_dex=args.flux_dex, workers=args.workers, chunk=args.chunk,
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
        print(f"  model {args.model}, noise {args.noise}, {_population_line(summary)}")
        print(f"  wrote {args.output}: {', '.join(store.names)} in "
              f"{len(store.chunk_bounds('truth'))} chunk(s) of {store.chunk('truth')} galaxies")
    return 0


def _population_line(cat) -> str:
    return (f"median half-light radius {np.median(cat['hlr']):.3f} arcsec, median |e| "
            f"{np.median(cat['e']):.3f}, clumpy {int(cat['clumpy'].sum())}, blends "
            f"{int(cat['blend'].sum())}")


def _simulate_progress(done: int, total: int) -> None:
    sys.stderr.write(f"\rsimulate: {done}/{total} galaxies drawn")
    sys.stderr.flush()
