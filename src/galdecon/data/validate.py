"""The checks of stacks and PSFs: dimensions, finiteness, range, PSFs against the images."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from galdecon.data.files import check_dtype, one_line
from galdecon.errors import GalDeconWarning, InputError

PSF_SUM_TOLERANCE = 1e-5
# Negative PSF pixels are warned of only when they matter: a pixel below -1 % of the PSF's
# peak, or negative pixels holding more than 1 % of its positive flux. Sampled optical
# PSFs ring a little below zero (GalSim's OpticalPSF on 41x41 pixels at 0.05": minima down
# to -0.2 % of the peak, negative flux below 0.04 %), which changes no deconvolution;
# noise or a bad background subtraction in an empirical PSF reaches these levels.
NEGATIVE_PEAK_FRACTION = 0.01
NEGATIVE_FLUX_FRACTION = 0.01


def as_array(value, name, what: str) -> np.ndarray:
    """``np.asarray`` for validation: what cannot be a real-number array is an InputError."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nested sequences, odd objects
        raise InputError(f"{name}: {what} cannot be made into an array ({one_line(exc)}); "
                         "expected an array of real numbers") from None
    check_dtype(name, array.dtype)
    return array


def check_finite(array: np.ndarray, path, what: str) -> None:
    """Raise InputError naming the first image holding NaN or Inf."""
    finite = np.isfinite(array)
    if not finite.all():
        if array.ndim == 3:
            index = int(np.argmin(finite.reshape(array.shape[0], -1).all(axis=1)))
            raise InputError(f"{path}: {what} image {index} contains NaN or Inf")
        pixel = tuple(int(i) for i in np.unravel_index(np.argmin(finite), array.shape))
        raise InputError(f"{path}: {what} (one 2-D image) contains NaN or Inf, first at "
                         f"pixel {pixel}")


def _cast(array: np.ndarray, path, what: str, dtype) -> np.ndarray:
    """Cast a finite array to the working type, refusing values beyond its range."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(array, dtype=dtype)
    if out.dtype != array.dtype and not np.isfinite(out).all():
        stack = out if out.ndim == 3 else out[None]
        index = int(np.argmin(np.isfinite(stack).reshape(stack.shape[0], -1).all(axis=1)))
        where = f" image {index}" if out.ndim == 3 else ""
        largest = np.max(np.abs(array))
        raise InputError(f"{path}: {what}{where} has values beyond the {np.dtype(dtype).name} "
                         f"range (largest magnitude {largest:.6g}); expected |x| <= "
                         f"{np.finfo(dtype).max:.6g} (use a wider working dtype)")
    return out


def as_stack(array: np.ndarray, path, what: str, dtype=np.float64) -> np.ndarray:
    """Validate a 2-D or 3-D stack and return it as a 3-D array of ``dtype``."""
    check_dtype(path, array.dtype)
    if array.ndim not in (2, 3):
        raise InputError(f"{path}: {what} has {array.ndim} dimensions, shape {array.shape}; "
                         "expected 2 (one image) or 3 (n, N0, N1)")
    if array.size == 0:
        raise InputError(f"{path}: {what} is empty, shape {array.shape}")
    check_finite(array, path, what)
    stack = array[None] if array.ndim == 2 else array
    return _cast(stack, path, what, dtype)


def validate_psfs(psfs: np.ndarray, n_images: int, stamp_shape, path, dtype=np.float64,
                  tolerance: float = PSF_SUM_TOLERANCE) -> np.ndarray:
    """Validate PSFs against the images: count, size, finiteness, not all zero.

    Warns (:class:`~galdecon.errors.GalDeconWarning`) when PSFs do not sum to 1 or have
    significant negative pixels (:func:`significant_negative`; the ringing of a sampled
    optical PSF is not); both are used as given. Returns a 2-D array (one shared PSF) or a
    3-D array with one PSF per image.
    """
    check_dtype(path, psfs.dtype)
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
    psfs = _cast(psfs, path, "PSF", dtype)
    check_psfs_not_zero(psfs, path)
    warn_psfs(path, psf_summary(psfs, tolerance=tolerance), shared=psfs.ndim == 2,
              stacklevel=2)
    return psfs


def psf_sum_outliers(psfs: np.ndarray, tolerance: float = PSF_SUM_TOLERANCE,
                     start: int = 0) -> tuple[int, int, float]:
    """Count the PSFs (one (k0, k1) or a stack (m, k0, k1)) whose sum is not 1.

    Returns (how many differ from 1 by more than ``tolerance``, the first one's index plus
    ``start``, its sum); (0, -1, 1.0) when all sum to 1.
    """
    psfs = np.asarray(psfs, dtype=np.float64)
    sums = psfs.reshape(-1, psfs.shape[-2] * psfs.shape[-1]).sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > tolerance)
    if not bad.size:
        return 0, -1, 1.0
    return int(bad.size), start + int(bad[0]), float(sums[bad[0]])


def warn_psf_sums(path, count: int, first: int, value: float, stacklevel: int = 2) -> None:
    """The warning for ``count`` PSFs that do not sum to 1 (the first: ``first``, ``value``)."""
    if count:
        warnings.warn(f"{path}: {count} PSF(s) do not sum to 1 (first: PSF {first} sums "
                      f"to {value:.8g}); they are used as given, not renormalised",
                      GalDeconWarning, stacklevel=stacklevel + 1)


def validate_like(array: np.ndarray, images: np.ndarray, path, what: str,
                  dtype=np.float64) -> np.ndarray:
    """Validate an array that must have the images' shape (truth, initial primal)."""
    stack = as_stack(array, path, what, dtype)
    if stack.shape != images.shape:
        raise InputError(f"{path}: {what} shape {array.shape} does not match the images "
                         f"{images.shape}")
    return stack


def validate_weights(array: np.ndarray, images: np.ndarray, path, start: int = 0) -> np.ndarray:
    """Check per-pixel inverse-variance weights: the images' shape, finite, >= 0, and no
    stamp masked entirely (its noise and data term would be undefined); float64.

    ``start`` is the index of the first stamp (a block of a store)."""
    weights = validate_like(array, images, path, "weights (inverse variance)")
    negative = np.flatnonzero((weights < 0).reshape(len(weights), -1).any(axis=1))
    if negative.size:
        raise InputError(f"{path}: the weights of image {start + int(negative[0])} are "
                         "negative; expected inverse variances >= 0 (0 = masked)")
    empty = np.flatnonzero(~(weights > 0).reshape(len(weights), -1).any(axis=1))
    if empty.size:
        raise InputError(f"{path}: image {start + int(empty[0])} is masked entirely (all "
                         f"its weights are 0; {empty.size} such image(s)); expected some "
                         "pixels with weight > 0 in every stamp")
    return weights


# -- the PSF checks of a block, for a map-reduce over the blocks of a stack -----------------

def _psf_name(shared: bool):
    return (lambda i: "the PSF (one for all)") if shared else (lambda i: f"PSF {i}")


def check_psfs_not_zero(psfs: np.ndarray, path, start: int = 0, whole: bool = True) -> None:
    """Raise InputError naming the first PSF that is all zeros.

    ``psfs`` is one shared (k0, k1) PSF or a stack (m, k0, k1) of PSFs ``start`` to
    ``start + m - 1``; ``whole`` when they are all the PSFs (the count is then given).
    """
    flat = psfs.reshape(-1, psfs.shape[-2] * psfs.shape[-1])
    zero = np.flatnonzero(~flat.any(axis=1))
    if zero.size:
        name = _psf_name(psfs.ndim == 2)
        count = f" ({zero.size} such PSF(s))" if whole else ""
        raise InputError(f"{path}: {name(start + int(zero[0]))} is all zeros{count}; "
                         "expected a PSF with non-zero pixels summing to 1")


class PsfSummary(NamedTuple):
    """What the PSF warnings report of some PSFs (indices are galaxy indices; -1: none).

    Attributes
    ----------
    off_sum, off_sum_first, off_sum_value
        How many PSFs do not sum to 1, the first of them and its sum.
    negative, negative_first
        How many PSFs have significant negative pixels (:func:`significant_negative`),
        and the first of them.
    most_negative, most_negative_index
        The most negative pixel of those PSFs (0.0 when none) and its PSF.
    """

    off_sum: int = 0
    off_sum_first: int = -1
    off_sum_value: float = 1.0
    negative: int = 0
    negative_first: int = -1
    most_negative: float = 0.0
    most_negative_index: int = -1


def psf_summary(psfs: np.ndarray, start: int = 0,
                tolerance: float = PSF_SUM_TOLERANCE) -> PsfSummary:
    """Summarise PSFs (one (k0, k1) or a stack (m, k0, k1) from galaxy ``start``) for the warnings.

    Combine the summaries of blocks with :func:`combine_psf_summaries` and warn with
    :func:`warn_psfs`: the warnings are then those :func:`validate_psfs` gives for the
    whole stack.
    """
    count, first, value = psf_sum_outliers(psfs, tolerance, start)
    flat = np.asarray(psfs).reshape(-1, psfs.shape[-2] * psfs.shape[-1])
    negative = np.flatnonzero(significant_negative(flat))
    if not negative.size:
        return PsfSummary(count, first, value)
    minima = np.full(flat.shape[0], np.inf)
    minima[negative] = flat[negative].min(axis=1)
    worst = int(np.argmin(minima))
    return PsfSummary(count, first, value, int(negative.size), start + int(negative[0]),
                      float(minima[worst]), start + worst)


def significant_negative(flat: np.ndarray) -> np.ndarray:
    """Per PSF (rows of ``flat``): are its negative pixels large enough to warn of?

    True when its most negative pixel is below ``-NEGATIVE_PEAK_FRACTION`` times its peak,
    or its negative pixels sum to more than ``NEGATIVE_FLUX_FRACTION`` of its positive
    pixels (many small negatives, e.g. an over-subtracted background).
    """
    out = np.empty(flat.shape[0], dtype=bool)
    # By rows of a few hundred PSFs: the temporaries stay in cache (on a whole stack of
    # 10,000 they are two 134 MB arrays, and the pass costs ten times as much).
    for lo in range(0, flat.shape[0], 256):
        rows = flat[lo:lo + 256]
        positive = np.maximum(rows, 0.0)  # a NaN row compares False (refused elsewhere)
        negative = (positive - rows).sum(axis=1)  # the magnitudes of the negative pixels
        out[lo:lo + 256] = ((rows.min(axis=1) < -NEGATIVE_PEAK_FRACTION * rows.max(axis=1))
                            | (negative > NEGATIVE_FLUX_FRACTION * positive.sum(axis=1)))
    return out


def _earlier(count_a: int, index_a: int, count_b: int, index_b: int) -> bool:
    return bool(count_a) and (not count_b or index_a < index_b)


def combine_psf_summaries(a: PsfSummary, b: PsfSummary) -> PsfSummary:
    """The summary of the PSFs of two summaries (associative and commutative: a tree reduce)."""
    sums = a if _earlier(a.off_sum, a.off_sum_first, b.off_sum, b.off_sum_first) else b
    first = a if _earlier(a.negative, a.negative_first, b.negative, b.negative_first) else b
    worst = a if (a.negative and (not b.negative or (a.most_negative, a.most_negative_index)
                                  < (b.most_negative, b.most_negative_index))) else b
    return PsfSummary(a.off_sum + b.off_sum, sums.off_sum_first, sums.off_sum_value,
                      a.negative + b.negative, first.negative_first, worst.most_negative,
                      worst.most_negative_index)


def warn_psfs(path, summary: PsfSummary, shared: bool = False, stacklevel: int = 2) -> None:
    """The warnings for PSFs with negative pixels and PSFs that do not sum to 1.

    ``shared``: the PSFs are one 2-D PSF for all galaxies. ``stacklevel`` is counted as
    :func:`warnings.warn` counts it, from the caller of this function.
    """
    name = _psf_name(shared)
    if summary.negative:
        warnings.warn(f"{path}: {summary.negative} PSF(s) have negative pixels (first: "
                      f"{name(summary.negative_first)}; most negative value "
                      f"{summary.most_negative:.8g} in {name(summary.most_negative_index)}); "
                      "they are used as given, not clipped", GalDeconWarning,
                      stacklevel=stacklevel + 1)
    warn_psf_sums(path, summary.off_sum, summary.off_sum_first, summary.off_sum_value,
                  stacklevel=stacklevel + 1)
