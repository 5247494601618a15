"""Read, validate and write stacks of stamps (npy and FITS); atomic outputs.

Every error names the file, the offending index and what was expected, and is an
:class:`~galdecon.errors.InputError` (or :class:`~galdecon.errors.OutputError`). Inputs are
never modified; outputs are written to a temporary file in the target directory and
renamed, so a failed run never leaves a half-written file under a final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np

from galdecon.errors import GalDeconWarning, InputError, OutputError

NPY_SUFFIXES = (".npy",)
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
OUTPUT_FORMATS = ("npy", "fits")
PSF_SUM_TOLERANCE = 1e-5
_HDU_SPEC = re.compile(r"^(?P<path>.+?)\[(?P<hdu>[^\[\]]+)\]$")


def split_hdu(spec: str | os.PathLike) -> tuple[Path, str | int | None]:
    """Split ``file.fits[HDU]`` into the path and the HDU (index or EXTNAME)."""
    text = os.fspath(spec)
    match = _HDU_SPEC.match(text)
    if match and not Path(text).exists():
        hdu = match.group("hdu")
        return Path(match.group("path")), int(hdu) if hdu.lstrip("-").isdigit() else hdu
    return Path(text), None


def file_format(path: Path) -> str:
    """Return 'npy' or 'fits' from a file name, or raise InputError."""
    name = path.name.lower()
    if name.endswith(NPY_SUFFIXES):
        return "npy"
    if name.endswith(FITS_SUFFIXES):
        return "fits"
    raise InputError(f"{path}: unknown file format; expected one of "
                     f"{', '.join(NPY_SUFFIXES + FITS_SUFFIXES)}")


def _read_npy(path: Path) -> np.ndarray:
    try:
        # allow_pickle=False: an object/pickled array is refused, never unpickled.
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise InputError(f"{path}: holds a pickled/object array; only numeric arrays "
                             "are read (pickles are never loaded)") from None
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy file ({exc})") from None


def _read_fits(path: Path, hdu) -> np.ndarray:
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdul:
            if hdu is None:
                for unit in hdul:
                    if unit.is_image and unit.data is not None and unit.data.ndim >= 2:
                        return np.array(unit.data)
                raise InputError(f"{path}: no image HDU with 2-D or 3-D data "
                                 f"(HDUs: {[u.name for u in hdul]})")
            try:
                unit = hdul[hdu]
            except (KeyError, IndexError):
                raise InputError(f"{path}: no HDU {hdu!r} (HDUs: {[u.name for u in hdul]})"
                                 ) from None
            if not unit.is_image or unit.data is None:
                raise InputError(f"{path}: HDU {hdu!r} holds no image data")
            return np.array(unit.data)
    except InputError:
        raise
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise InputError(f"{path}: not a readable FITS file ({exc})") from None


def read_array(spec, hdu=None) -> np.ndarray:
    """Read a numeric array from ``.npy`` or FITS (first image HDU, or ``file.fits[HDU]``).

    Parameters
    ----------
    spec : str or path
        File name, optionally with a FITS HDU in brackets.
    hdu : int or str, optional
        FITS HDU index or EXTNAME (overrides the bracket form).

    Returns
    -------
    ndarray
        A new native-endian array (never a view on the file).

    Raises
    ------
    InputError
        Missing file, unknown format, unreadable content, pickled or non-numeric data.
    """
    path, bracket = split_hdu(spec)
    hdu = bracket if hdu is None else hdu
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a .npy or FITS file")
    fmt = file_format(path)
    if fmt == "npy" and hdu is not None:
        raise InputError(f"{path}: an HDU ({hdu!r}) was given but .npy files have none")
    array = _read_npy(path) if fmt == "npy" else _read_fits(path, hdu)
    if array.dtype.kind not in "fiu":
        raise InputError(f"{path}: data type {array.dtype} is not supported; expected real "
                         "numbers (float or integer)")
    return np.asarray(array, dtype=array.dtype.newbyteorder("="))


def check_finite(array: np.ndarray, path, what: str) -> None:
    """Raise InputError naming the first image holding NaN or Inf."""
    finite = np.isfinite(array)
    if not finite.all():
        flat = finite.reshape(array.shape[0], -1).all(axis=1) if array.ndim == 3 else [False]
        index = int(np.argmin(flat))
        where = f"image {index}" if array.ndim == 3 else "the image"
        raise InputError(f"{path}: {what} {where} contains NaN or Inf")


def as_stack(array: np.ndarray, path, what: str, dtype=np.float64) -> np.ndarray:
    """Validate a 2-D or 3-D stack and return it as a 3-D array of ``dtype``."""
    if array.ndim not in (2, 3):
        raise InputError(f"{path}: {what} has {array.ndim} dimensions, shape {array.shape}; "
                         "expected 2 (one image) or 3 (n, N0, N1)")
    if array.size == 0:
        raise InputError(f"{path}: {what} is empty, shape {array.shape}")
    check_finite(array, path, what)
    stack = array[None] if array.ndim == 2 else array
    return np.ascontiguousarray(stack, dtype=dtype)


def validate_psfs(psfs: np.ndarray, n_images: int, stamp_shape, path, dtype=np.float64,
                  tolerance: float = PSF_SUM_TOLERANCE) -> np.ndarray:
    """Validate PSFs against the images: count, size, finiteness; warn on sums ≠ 1.

    Returns a 2-D array (one shared PSF) or a 3-D array with one PSF per image.
    """
    if psfs.ndim not in (2, 3):
        raise InputError(f"{path}: PSFs have {psfs.ndim} dimensions, shape {psfs.shape}; "
                         "expected 2 (one PSF for all) or 3 (one PSF per image)")
    if psfs.size == 0:
        raise InputError(f"{path}: PSF array is empty, shape {psfs.shape}")
    if psfs.ndim == 3 and psfs.shape[0] != n_images:
        raise InputError(f"{path}: {psfs.shape[0]} PSFs for {n_images} images; expected "
                         "exactly one PSF per image (or a single 2-D PSF)")
    if psfs.shape[-2] > stamp_shape[0] or psfs.shape[-1] > stamp_shape[1]:
        raise InputError(f"{path}: PSF shape {psfs.shape[-2:]} is larger than the stamp "
                         f"{tuple(stamp_shape)}; expected PSFs no larger than the stamps")
    check_finite(psfs, path, "PSF")
    psfs = np.ascontiguousarray(psfs, dtype=dtype)
    sums = psfs.reshape(-1, psfs.shape[-2] * psfs.shape[-1]).sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > tolerance)
    if bad.size:
        first = int(bad[0])
        warnings.warn(f"{path}: {bad.size} PSF(s) do not sum to 1 (first: PSF {first} sums "
                      f"to {sums[first]:.8g}); they are used as given, not renormalised",
                      GalDeconWarning, stacklevel=2)
    return psfs


def validate_like(array: np.ndarray, images: np.ndarray, path, what: str,
                  dtype=np.float64) -> np.ndarray:
    """Validate an array that must have the images' shape (truth, initial primal)."""
    stack = as_stack(array, path, what, dtype)
    if stack.shape != images.shape:
        raise InputError(f"{path}: {what} shape {array.shape} does not match the images "
                         f"{images.shape}")
    return stack


def sha256(path) -> str:
    """Checksum of a file (for provenance in the run record)."""
    digest = hashlib.sha256()
    with open(split_hdu(path)[0], "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- writing -----------------------------------------------------------------------------

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
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value):
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
    stem = Path(stem)
    ext = ".npy" if fmt == "npy" else ".fits"
    paths = {
        "primal": stem.with_name(stem.name + "_primal" + ext),
        "dual": stem.with_name(stem.name + "_dual" + ext),
        "record": stem.with_name(stem.name + "_run.json"),
    }
    if plots:
        paths["plot"] = stem.with_name(stem.name + "_cost.png")
    return paths


def check_inputs_exist(inputs) -> None:
    """Fail early, before any output check or reading, when an input file is missing."""
    for spec in inputs:
        if spec is None:
            continue
        path = split_hdu(spec)[0]
        if not path.exists():
            raise InputError(f"{path}: file not found")
        file_format(path)


def check_outputs(paths: dict[str, Path], inputs, overwrite: bool) -> None:
    """Refuse outputs that exist (unless ``overwrite``), that are inputs, or are unwritable.

    Checked before any computation, so a bad output path fails at once.
    """
    input_paths = [split_hdu(p)[0].resolve() for p in inputs if p is not None]
    for path in paths.values():
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
        if path.exists() and not overwrite:
            raise OutputError(f"{path}: exists; pass --overwrite to replace it")
