"""Writing outputs atomically, and checking output paths before a run."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from galdecon.data.files import check_file, file_format, one_line
from galdecon.data.spec import split_hdu
from galdecon.errors import OutputError

OUTPUT_FORMATS = ("npy", "fits")


@contextlib.contextmanager
def atomic_path(target: Path):
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates the file 0600; give the result the permissions of a normal file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        try:
            os.replace(tmp, target)
        except OSError as exc:  # e.g. the target is a directory
            raise OutputError(f"{target}: cannot be written ({exc.strerror or exc})") from None
        fsync_dir(target.parent)  # the rename itself survives a crash
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fsync_dir(path) -> None:
    """Flush a directory's entries to disk (where the platform allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_array(path: Path, array: np.ndarray, fmt: str, header: dict | None = None) -> Path:
    """Write an array atomically as ``.npy`` or FITS (primary HDU)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if fmt == "npy":
            with open(tmp, "wb") as handle:
                np.save(handle, np.asarray(array))
                handle.flush()
                os.fsync(handle.fileno())
        elif fmt == "fits":
            from astropy.io import fits

            hdu = fits.PrimaryHDU(np.asarray(array))
            for key, value in (header or {}).items():
                hdu.header[key] = value
            hdu.writeto(tmp, overwrite=True)
        else:
            raise OutputError(f"{path}: unknown output format {fmt!r}; expected one of "
                              f"{', '.join(OUTPUT_FORMATS)}")
    return path


def write_json(path: Path, data: dict) -> Path:
    """Write JSON atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=json_default) + "\n")
    return path


def json_default(value):
    """JSON for numpy scalars and arrays and paths (``json.dumps(..., default=...)``)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def output_paths(stem, fmt: str, plots: bool = True) -> dict[str, Path]:
    """The files a deconvolution writes for an output stem."""
    if fmt not in OUTPUT_FORMATS:
        raise OutputError(f"output format {fmt!r}: expected one of {', '.join(OUTPUT_FORMATS)}")
    if "\x00" in os.fspath(stem):
        raise OutputError(f"{os.fspath(stem)!r}: output stem contains a NUL byte; expected a "
                          "file name stem such as results/run")
    stem = Path(stem)
    if not stem.name:
        raise OutputError(f"{os.fspath(stem) or repr('')}: output stem has no file name; "
                          "expected a stem such as results/run")
    ext = ".npy" if fmt == "npy" else ".fits"
    paths = {
        "primal": stem.with_name(stem.name + "_primal" + ext),
        "dual": stem.with_name(stem.name + "_dual" + ext),
        "record": stem.with_name(stem.name + "_run.json"),
    }
    if plots:
        paths["plot"] = stem.with_name(stem.name + "_cost.png")
        paths["gallery"] = stem.with_name(stem.name + "_gallery.png")
    return paths


def check_inputs_exist(inputs) -> None:
    """Fail early, before any output check or reading, when an input file is missing."""
    for spec in inputs:
        if spec is None:
            continue
        path = split_hdu(spec)[0]
        check_file(path)
        file_format(path)


def check_outputs(paths: dict[str, Path], inputs, overwrite: bool) -> None:
    """Refuse outputs that exist (unless ``overwrite``), that are inputs, or are unwritable.

    Checked before any computation, so a bad output path fails at once.
    """
    try:
        input_paths = [split_hdu(p)[0].resolve() for p in inputs if p is not None]
    except (OSError, ValueError, RuntimeError) as exc:  # checked as inputs before this
        raise OutputError(f"cannot compare the outputs with the inputs ({one_line(exc)})"
                          ) from None
    for path in paths.values():
        try:
            _check_output(path, input_paths, overwrite)
        except (OSError, ValueError, RuntimeError) as exc:
            if isinstance(exc, OutputError):
                raise
            raise OutputError(f"{path}: not a usable output path ({one_line(exc)})") from None


def _check_output(path: Path, input_paths, overwrite: bool) -> None:
    if "\x00" in os.fspath(path):
        raise OutputError(f"{os.fspath(path)!r}: output name contains a NUL byte")
    resolved = path.resolve()
    if resolved in input_paths or any(
            resolved.exists() and q.exists() and os.path.samefile(resolved, q)
            for q in input_paths):
        raise OutputError(f"{path}: output would overwrite an input file; choose another "
                          "output stem (-o)")
    parent = resolved.parent
    if not parent.is_dir():
        raise OutputError(f"{path}: output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{path}: output directory {parent} is not writable")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputError(f"{path}: exists; pass --overwrite to replace it")
