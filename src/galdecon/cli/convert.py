"""``galdecon convert``: stacks between npy/FITS/npz files and chunked stores, streaming.

``galdecon convert IN OUT`` reads ``IN`` and writes ``OUT``, each an ``.npy`` file, a FITS
file (``stack.fits[HDU]`` to pick an input HDU), a chunked stack store (``NAME.zarr`` or a
URL, see :mod:`galdecon.data.chunked`), or — as input only — an ``.npz`` archive (a
``galdecon simulate`` data set converts into one store with all its arrays), in bounded
memory (:mod:`galdecon.data.conversion`).

Wired into :mod:`galdecon.cli.app` by :func:`add_convert_parser` and :func:`run_convert`; errors
a user can cause raise :class:`~galdecon.errors.GalDeconError` (one line, exit status 2).
"""

from __future__ import annotations

import argparse
import shlex
import time

import numpy as np

from galdecon.cli.options import add_verbosity, new_parser, positive_int
from galdecon.data import chunked
from galdecon.data.conversion import convert
from galdecon.science.dataset import FORMAT as DATASET_FORMAT

__all__ = ["add_convert_parser", "convert", "run_convert"]


# -- the command -------------------------------------------------------------------------

def add_convert_parser(sub) -> argparse.ArgumentParser:
    """Define ``galdecon convert`` and its options."""
    p = new_parser(
        sub, "convert", "convert stacks between npy/FITS/npz files and chunked stores",
        "Convert a stack between .npy, FITS and the chunked store format (a Zarr group "
        "chunked along the galaxy axis, NAME.zarr or a URL such as s3://bucket/NAME.zarr, "
        "with a galdecon.json manifest of per-chunk SHA-256 checksums), in both directions; "
        "a galdecon simulate .npz data set converts into one store with all its arrays. "
        "Streams in bounded memory (a few chunks at a time), reading and writing FITS too. "
        "Outputs appear only when complete; inputs are never modified.")
    p.add_argument("input", metavar="IN",
                   help="an .npy file, a FITS file (file.fits[HDU] for an HDU), an .npz "
                        "data set, or a store (NAME.zarr, file://, s3://, gs://, hdfs://...; "
                        "STORE[ARRAY] is the same as --array ARRAY)")
    p.add_argument("output", metavar="OUT", help="an .npy file, a FITS file or a store")
    p.add_argument("--chunk", type=positive_int, default=chunked.DEFAULT_CHUNK, metavar="N",
                   help="galaxies per chunk of the store written")
    p.add_argument("--array", default=None, metavar="NAME",
                   help="npy/FITS -> store: the array's name (default images); store/npz -> "
                        "npy/FITS: the array to read (default images); store/npz -> store: "
                        "only this array (default all)")
    p.add_argument("--compression", choices=chunked.COMPRESSIONS, default="zstd",
                   help="codec of the store's chunks (checksums do not depend on it)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (a store only once the new one is "
                        "complete)")
    add_verbosity(p)
    return p


def run_convert(args) -> int:
    """``galdecon convert``: stream IN into OUT."""
    words = ["galdecon", "convert", str(args.input), str(args.output), "--chunk",
             str(args.chunk), "--compression", args.compression]
    if args.array:
        words += ["--array", args.array]
    t0 = time.perf_counter()
    result = convert(args.input, args.output, array=args.array, chunk=args.chunk,
                     overwrite=args.overwrite, compression=args.compression,
                     command=shlex.join(words), dataset_format=DATASET_FORMAT)
    if not args.quiet:
        print(f"galdecon convert: {args.input} -> {args.output}, "
              f"{time.perf_counter() - t0:.1f} s")
        for name, (shape, dtype) in result["arrays"].items():
            chunks = result.get("chunks", {}).get(name)
            extra = f", {chunks} chunk{'s' * (chunks != 1)}" if chunks else ""
            print(f"  {name}: shape {tuple(shape)}, {np.dtype(dtype)}{extra}")
    return 0
