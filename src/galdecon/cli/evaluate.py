"""``galdecon evaluate``: a deconvolution measured against the true images.

Wired into :mod:`galdecon.cli.app` by :func:`add_evaluate_parser` and :func:`run_evaluate`;
errors a user can cause raise :class:`~galdecon.errors.GalDeconError` (one line, exit
status 2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from galdecon.cli.options import add_verbosity, aliases, new_parser, positive_float
from galdecon.data import io
from galdecon.errors import InputError


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
