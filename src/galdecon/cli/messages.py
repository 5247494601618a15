"""Errors in the words of the command line: API names become the options as typed.

The library names its parameters as the Python API does (``option condat_tau=100.0``,
``tolerance``); a command-line user typed ``--condat-tau 100`` and ``--convergence``.
Messages are translated here, at the one place that knows both spellings, so the lower
layers stay free of command-line concerns.
"""

from __future__ import annotations

import argparse
import re

#: Settings fields whose command-line destination has another name.
FIELD_TO_DEST = {"tolerance": "convergence", "positivity": "no_pos"}


def option_spellings(parser: argparse.ArgumentParser, argv) -> dict[str, str]:
    """{API name: the option as the user typed it (else its first long spelling)}.

    ``parser`` is the sub-command's parser; argparse keeps its options in the
    (long-stable, if underscored) ``_actions`` list and offers no public accessor.
    """
    typed = {arg.split("=", 1)[0] for arg in (argv or []) if arg.startswith("--")}
    by_dest = {}
    for action in parser._actions:
        longs = [s for s in action.option_strings if s.startswith("--")]
        if longs and action.dest != "help":
            used = [s for s in longs if s in typed]
            by_dest[action.dest] = (used or longs)[0]
    names = dict(by_dest)
    for field, dest in FIELD_TO_DEST.items():
        if dest in by_dest:
            names[field] = by_dest[dest]
    return names


def translate(text: str, names: dict[str, str]) -> str:
    """``text`` with every API parameter name replaced by its command-line option.

    ``option NAME=VALUE`` becomes ``--option VALUE``; a bare name with an underscore
    (``n_iter``) becomes the option wherever it stands as a word, ``NAME=V`` as
    ``--option V``. Single-word names (``relax``) are replaced only in the
    ``option NAME=`` form, since as bare words they are also plain English.
    """
    def option_form(match: re.Match) -> str:
        name = match.group(1)
        return f"{names[name]} " if name in names else match.group(0)

    # a quoted word value is written as typed: --noise-est per-image, not 'per-image'
    text = re.sub(r"\boption ([a-z][a-z0-9_]*)='([\w.+-]+)'",
                  lambda m: option_form(m) + m.group(2) if m.group(1) in names
                  else m.group(0), text)
    text = re.sub(r"\boption ([a-z][a-z0-9_]*)=", option_form, text)
    snake = sorted((n for n in names if "_" in n), key=len, reverse=True)
    if not snake:
        return text
    # not inside a path or file name: no word, '/', '.' or '-' touching either end
    pattern = re.compile(r"(?<![\w/.-])(" + "|".join(map(re.escape, snake))
                         + r")\b(?![./-]\w)(=?)")
    return pattern.sub(lambda m: names[m.group(1)] + (" " if m.group(2) else ""), text)
