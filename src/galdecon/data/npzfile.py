"""One array of an ``.npz`` archive (``sim.npz[noisy_snr10]``), read header first.

The member is parsed as a ``.npy`` file is (:mod:`galdecon.data.npyfile`): its header
is checked before anything is allocated, and nothing is unpickled. Why not
``numpy.load`` alone: it would read every member of the archive to list them, and gives
a bare ``KeyError`` for a missing one.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from galdecon.data.files import check_size_limit, no_memory, one_line
from galdecon.data.npyfile import check_npy_length, read_npy_header
from galdecon.errors import InputError


def _members(archive: zipfile.ZipFile) -> list[str]:
    """The arrays, in the order they were written (``noisy_snr1`` … ``noisy_snr10``)."""
    return [name[:-4] for name in archive.namelist() if name.endswith(".npy")]


def _hint(path: Path, names: list[str]) -> str:
    """Which member a user most likely means, spelled as an input name."""
    noisy = [name for name in names if name.startswith("noisy")]
    example = noisy[-1] if noisy else (names[0] if names else "ARRAY")
    return (f"name one of its arrays as {path}[{example}] (it holds: "
            f"{', '.join(names) or 'no arrays'}); or make plain files with `galdecon convert` "
            "or `galdecon simulate --export-npy`")


def read_npz(path: Path, key, limit, load: bool):
    """Check one member's header and size; return (shape, dtype, the array if ``load``).

    Raises
    ------
    InputError
        Not a zip of arrays, no member named (or that member missing, with the members
        listed), a damaged, truncated, pickled or non-numeric member.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable .npz archive ({one_line(exc)})") from None
    with archive:
        names = _members(archive)
        if key is None or str(key) not in names:
            what = "holds several arrays" if key is None else f"has no array {str(key)!r}"
            raise InputError(f"{path}: {what}; {_hint(path, names)}")
        label = f"{path}[{key}]"
        info = archive.getinfo(f"{key}.npy")
        try:
            with archive.open(info) as handle:
                shape, dtype, offset, _ = read_npy_header(handle, label)
            check_npy_length(label, shape, dtype, offset, info.file_size)
            if not load:
                return shape, dtype, None
            check_size_limit(label, shape, dtype, limit)
            with archive.open(info) as handle:
                array = np.lib.format.read_array(handle, allow_pickle=False)
        except InputError:
            raise
        except MemoryError:
            raise no_memory(label, shape, dtype) from None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise InputError(f"{label}: not a readable array ({one_line(exc)})") from None
    return shape, dtype, array
