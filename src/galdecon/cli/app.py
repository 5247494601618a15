"""The ``galdecon`` command line: the top-level parser and the entry point.

Each sub-command lives in its own module (:mod:`~galdecon.cli.deconvolve`,
:mod:`~galdecon.cli.simulate`, :mod:`~galdecon.cli.convert`, :mod:`~galdecon.cli.evaluate`,
:mod:`~galdecon.cli.bench`, :mod:`~galdecon.cli.show`), which defines its options
(``add_*_parser``) and runs it (``run_*``). Errors a user can cause print one line and
exit with status 2.
"""

from __future__ import annotations

import sys
import warnings

from galdecon.cli import bench, convert, deconvolve, evaluate, messages, show, simulate
from galdecon.cli.options import configure_logging, top_parser
from galdecon.errors import ConfigError, GalDeconError, GalDeconWarning, RunInterrupted


def build_parser(with_commands: bool = False):
    """The top-level parser (and, ``with_commands``, its sub-command table too)."""
    parser, sub = top_parser()
    deconvolve.add_deconvolve_parser(sub)
    simulate.add_simulate_parser(sub)
    convert.add_convert_parser(sub)
    evaluate.add_evaluate_parser(sub)
    bench.add_bench_parser(sub)
    show.add_show_parser(sub)
    return (parser, sub) if with_commands else parser


def run_command(args, argv=None) -> int:
    """Run the parsed sub-command (``argv``: the command line, for the run record)."""
    if args.command == "deconvolve":
        return deconvolve.run_deconvolve(args, argv)
    return {"simulate": simulate.run_simulate, "convert": convert.run_convert,
            "evaluate": evaluate.run_evaluate, "show": show.run_show, "plot": show.run_show,
            "bench": bench.run_bench_command}[args.command](args)


def main(argv=None) -> int:
    """Entry point of the ``galdecon`` command."""
    parser, subparsers = build_parser(with_commands=True)
    args = None
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser.parse_args(argv)
        configure_logging(args.verbose, args.quiet)
        with warnings.catch_warnings():
            warnings.simplefilter("always", GalDeconWarning)
            warnings.showwarning = _show_warning
            return run_command(args, argv)
    except RunInterrupted as exc:
        print(f"galdecon: {exc}", file=sys.stderr)
        if exc.checkpoint is not None:
            print(f"galdecon: resume with: galdecon deconvolve --resume {exc.checkpoint}",
                  file=sys.stderr)
        return 128 + exc.signum
    except GalDeconError as exc:
        text = str(exc)
        if isinstance(exc, ConfigError) and args is not None:  # options as the user typed them
            text = messages.translate(text, messages.option_spellings(
                subparsers.choices[args.command], argv))
        # One line whatever the message holds (a file name may contain a newline).
        text = text.replace("\r", "\\r").replace("\n", "\\n")
        print(f"galdecon: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("galdecon: interrupted", file=sys.stderr)
        return 130


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"galdecon: warning: {message}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
