"""The one parser of input names: ``FILE[HDU]`` and ``URL[ARRAY]``."""

from __future__ import annotations

import os
import re
from pathlib import Path

_BRACKET = re.compile(r"^(?P<path>.+?)\[(?P<inner>[^\[\]]+)\]$")


def split(spec) -> tuple[str, str | None]:
    """``NAME[INNER]`` → (``NAME``, ``INNER``); anything else → (``spec``, None).

    A name that exists as it is (a file whose name ends in brackets) is not split.
    """
    text = os.fspath(spec)
    match = _BRACKET.match(text)
    if match and not os.path.exists(text):  # os.path.exists: False, not an error, for odd names
        return match.group("path"), match.group("inner")
    return text, None


def split_hdu(spec: str | os.PathLike) -> tuple[Path, str | int | None]:
    """Split ``file.fits[HDU]`` into the path and the HDU (index or EXTNAME)."""
    text, hdu = split(spec)
    if hdu is None:
        return Path(text), None
    return Path(text), int(hdu) if hdu.lstrip("-").isdigit() else hdu


def split_array(spec, default: str | None) -> tuple[str, str | None]:
    """``URL[name]`` → (``URL``, ``name``); a plain URL → (``URL``, ``default``)."""
    text, name = split(spec)
    return text, default if name is None else name
