"""Notices on stderr: what a run did other than the user may have expected.

Not warnings (nothing is wrong) nor errors: an option that does not apply to the
engine chosen, a partition count capped, a round that used all its iterations.
"""

from __future__ import annotations

import sys


def say(text: str) -> None:
    """One notice line on stderr."""
    print(f"galdecon: notice: {text}", file=sys.stderr)


def engine_options(args, images) -> None:
    """The engine options given that are ignored or capped for these ``images``.

    ``images`` is the stack (an array) or the store the workers read (a StoreStack).
    """
    if args.engine != "spark":
        ignored = [name for name, value in (("--master", args.master),
                                            ("--partitions", args.partitions),
                                            ("--spark-storage",
                                             args.spark_storage != "auto")) if value]
        if ignored:
            names = " and ".join(filter(None, (", ".join(ignored[:-1]), ignored[-1])))
            verb = "applies" if len(ignored) == 1 else "apply"
            say(f"{names} {verb} to --engine spark; ignored (this run uses the local engine)")
        return
    if args.threads:
        say("--threads applies to the local engine; ignored on Spark (its cores are set "
            "by --master, e.g. local[4])")
    if args.partitions:
        in_memory = hasattr(images, "shape")  # an array, not a StoreStack
        limit, unit = ((len(images), "galaxy") if in_memory
                       else (images.n_chunks, "chunk of the images"))
        if args.partitions > limit:
            say(f"--partitions {args.partitions} capped at {limit}: one {unit} per partition")


def unconverged(record: dict) -> None:
    """Which rounds stopped at --n-iter before the convergence test was met."""
    res, settings = record["result"], record["settings"]
    for k in res.get("stopped_unconverged", []):
        what = "the first solve" if k == 0 else f"reweighting {k}"
        say(f"{what} stopped at --n-iter {settings['n_iter']} without converging: the last "
            f"convergence test was {res['last_test_per_round'][k]:.3g} against --convergence "
            f"{settings['tolerance']:g}")
