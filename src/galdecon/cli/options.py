"""Option helpers shared by every ``galdecon`` sub-command: parsers, types, verbosity.

``@file`` option files, both spellings of every option (``--n-iter``/``--n_iter``), the
argument types that refuse bad values with the option named, and ``-v``/``-q`` mapped to
logging levels. Command modules import this one and never each other.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import stat
import sys

import numpy as np

from galdecon.errors import ConfigError
from galdecon.version import __version__


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show each option's default, unless it has none or its help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


class OptionFileParser(argparse.ArgumentParser):
    """An ArgumentParser whose ``@file`` lines are split like a shell (data only).

    Each line may hold an option and its values; ``#`` starts a comment. Nothing in the
    file is evaluated or expanded (no variables, globs or commands). Files are read as
    UTF-8; a file may name another (``@other``), at most :attr:`max_depth` deep.
    """

    #: How deep option files may include one another (a file including itself stops here).
    max_depth = 8

    def _read_args_from_files(self, arg_strings, depth=0):
        # Replaces argparse's own expansion, which recurses without limit (a file naming
        # itself ends in RecursionError), decodes with the locale's codec and lets a decoding
        # error or a NUL in the name escape, and opens FIFOs (blocking for ever).
        out = []
        for arg in arg_strings:
            if not arg or arg[0] not in self.fromfile_prefix_chars:
                out.append(arg)
                continue
            name = arg[1:]
            if depth >= self.max_depth:
                raise ConfigError(f"option file {name}: option files nested more than "
                                  f"{self.max_depth} deep (does one include itself?)")
            out.extend(self._read_args_from_files(self._option_file_args(name), depth + 1))
        return out

    def _option_file_args(self, name: str) -> list[str]:
        if "\x00" in name:
            raise ConfigError(f"option file {name!r}: the name contains a NUL byte")
        try:
            if not stat.S_ISREG(os.stat(name).st_mode):
                raise ConfigError(f"option file {name}: not a regular file")
            with open(name, encoding="utf-8") as handle:
                text = handle.read()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"option file {name}: not UTF-8 text ({exc.reason} at byte "
                              f"{exc.start})") from None
        except OSError as exc:
            raise ConfigError(f"option file {name}: {exc.strerror or exc}") from None
        args = []
        for line in text.splitlines():
            args.extend(self.convert_arg_line_to_args(line))
        return args

    def convert_arg_line_to_args(self, arg_line: str):
        try:
            return shlex.split(arg_line, comments=True, posix=True)
        except ValueError as exc:
            raise ConfigError(f"option file line {arg_line!r}: {exc}") from None

    def error(self, message):
        raise ConfigError(message)


def aliases(*names: str) -> list[str]:
    """Option strings plus the reference's underscore spelling of each long option."""
    out = list(names)
    for name in names:
        if name.startswith("--") and "-" in name[2:]:
            alias = "--" + name[2:].replace("-", "_")
            if alias not in out:
                out.append(alias)
    return out


def float_or_auto(text: str):
    """A number, or ``auto``."""
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def count_or_auto(text: str):
    """An integer >= 0, or ``auto``."""
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 or 'auto', got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def configure_logging(verbose: int, quiet: int) -> None:
    """Map -v/-q to logging levels; library code only logs."""
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    elif quiet >= 2:
        level = logging.ERROR
    logging.basicConfig(level=level, format="galdecon: %(levelname)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("galdecon").setLevel(level)


def noise_estimate(text: str):
    """``--noise-est``: a number > 0, ``global`` (None: the MAD of all pixels), or a
    per-image method (``per-image``, ``border``)."""
    from galdecon.core.problem import NOISE_METHODS

    if text in NOISE_METHODS:
        return text
    if text == "global":
        return None
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a number > 0, global, {' or '.join(NOISE_METHODS)}, got {text!r}"
        ) from None


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {value}")
    return value


def top_parser() -> tuple[OptionFileParser, argparse._SubParsersAction]:
    """The ``galdecon`` parser (``--version``, ``-q``/``-v``) and its sub-command table."""
    parser = OptionFileParser(
        prog="galdecon",
        description="Space-variant PSF deconvolution of galaxy image stacks.",
        fromfile_prefix_chars="@")
    parser.add_argument("--version", action="version", version=f"galdecon {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="count", default=0,
                           help="less output (-qq: errors only)")
    verbosity.add_argument("-v", "--verbose", action="count", default=0,
                           help="more output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    return parser, sub


def add_verbosity(p) -> None:
    """``-q``/``-v`` accepted after the sub-command too."""
    p.add_argument("-q", "--quiet", action="count", default=argparse.SUPPRESS,
                   help="less output")
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                   help="more output")


def new_parser(sub, name, help_, description):
    """A sub-command parser reading ``@file`` option files, with the defaults in its help."""
    p = sub.add_parser(name, help=help_, description=description,
                       formatter_class=HelpFormatter, fromfile_prefix_chars="@")
    p.__class__ = OptionFileParser
    return p

