"""``galdecon show STEM`` (or ``plot``): a run's gallery and cost curve, drawn again.

Reads ``STEM_run.json``, checks the inputs it names against their recorded checksums,
reads the few galaxies shown from the inputs and the primal output, and writes the
gallery (:mod:`galdecon.science.gallery`) and the cost curve. Wired into
:mod:`galdecon.cli.app` by :func:`add_show_parser` and :func:`run_show`; errors a user can
cause raise :class:`~galdecon.errors.GalDeconError` (one line, exit status 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from galdecon.cli.options import HelpFormatter, OptionFileParser, add_verbosity
from galdecon.data import io
from galdecon.errors import ConfigError


def galaxy_list(text: str) -> list[int]:
    """``0,5,9`` → [0, 5, 9]: galaxy indices (integers >= 0), comma-separated."""
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated galaxy indices such as "
                                         f"0,5,9, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected galaxy indices >= 0 such as 0,5,9, got "
                                         f"{text!r}")
    return values


def add_show_parser(sub) -> argparse.ArgumentParser:
    """Define ``galdecon show`` (alias ``plot``) and its options."""
    p = sub.add_parser(
        "show", aliases=["plot"], help="draw a run's gallery and cost curve again",
        description="Draw the gallery (observed | PSF | deconvolved | residual, a few "
                    "galaxies) and the cost curve of a galdecon deconvolve run again, from "
                    "STEM_run.json and the files it names. The inputs are checked against "
                    "the checksums in the record; only the galaxies shown are read.",
        formatter_class=HelpFormatter, fromfile_prefix_chars="@")
    p.__class__ = OptionFileParser
    p.add_argument("stem", metavar="STEM",
                   help="the run's output stem (reads STEM_run.json), or the record itself")
    p.add_argument("--galaxies", type=galaxy_list, default=None, metavar="I,J,...",
                   help="galaxies to show, by index in the input stack (default: 5 spread "
                        "evenly over the stack, first and last included)")
    p.add_argument("-o", "--output", metavar="OUT.png", default=None,
                   help="write only the gallery, to OUT.png (default: replace the run's "
                        "STEM_gallery.png and STEM_cost.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT.png")
    add_verbosity(p)
    return p


def check_galaxies(galaxies, n: int) -> list[int] | None:
    """Refuse indices outside the run's stack, or too many for a readable figure."""
    from galdecon.science.gallery import MAX_COUNT

    if galaxies is None:
        return None
    for index in galaxies:
        if index >= n:
            raise ConfigError(f"--galaxies {index}: the run has {n} galaxies; expected "
                              f"indices 0 to {n - 1}")
    if len(galaxies) > MAX_COUNT:
        raise ConfigError(f"--galaxies: {len(galaxies)} galaxies; expected at most "
                          f"{MAX_COUNT} (one row each)")
    return list(galaxies)


def run_show(args) -> int:
    """``galdecon show``: check the record and its files, write the figures."""
    from galdecon.science.figures import cost_curve
    from galdecon.science.run_gallery import (
        RECORD_SUFFIX,
        load_record,
        record_path,
        run_gallery,
        run_inputs,
    )

    where = record_path(args.stem)
    record = load_record(where)
    galaxies = check_galaxies(args.galaxies, int(record["data"]["n_images"]))
    stem = where.with_name(where.name.removesuffix(RECORD_SUFFIX).removesuffix(".json"))
    if args.output is not None:
        paths, overwrite = {"gallery": Path(args.output)}, args.overwrite
    else:  # the run's own figures, redrawn from the same data: replaced without asking
        paths = {"gallery": stem.with_name(stem.name + "_gallery.png"),
                 "plot": stem.with_name(stem.name + "_cost.png")}
        overwrite = True
    inputs = run_inputs(record, where)
    # Never over the run's files: its record, inputs, primal and dual (or store), the
    # outputs named relative to where the run started and always beside the record.
    kept = [where.parent / Path(str(v)).name for k, v in record["outputs"].items()
            if k not in ("plot", "gallery")]
    io.check_outputs(paths, [where, inputs["images"], inputs["psfs"], *kept], overwrite)
    run_gallery(record, paths["gallery"], galaxies, where=where, verify=True)
    if "plot" in paths:
        cost_curve(record, paths["plot"])
    if not args.quiet:
        for key, value in paths.items():
            print(f"  {key}: {value}")
    return 0
