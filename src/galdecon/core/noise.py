"""The noise level σ = 1.4826 · MAD of all pixels, exactly, on any engine; or one σ_i a stamp.

The median and the median absolute deviation are exact order statistics found by a
distributed radix selection: the float64 pixels (or their absolute deviations from the
median) are mapped to order-preserving 64-bit keys; each round is one ``engine.reduce``
of per-block sparse histograms of the next 16-bit digit of the keys in the bucket known
to hold a wanted rank, until that bucket is small enough to collect and sort. Counts are
integers, so every engine — whatever its blocks — finds the same values, equal bit for
bit to :func:`galdecon.core.problem.mad_sigma`. Two or three rounds per median in
practice, each sending back only sparse histograms or one small bucket.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from galdecon.core.fidelity import weight_scales
from galdecon.core.problem import MAD_TO_SIGMA, NOISE_METHODS
from galdecon.errors import ConfigError

#: Bits of the key resolved per round, and the number of rounds to resolve a whole key.
DIGIT_BITS = 16
LEVELS = 64 // DIGIT_BITS
#: A bucket of at most this many keys is collected and sorted instead of histogrammed.
COLLECT_LIMIT = 1 << 20


def order_keys(values: np.ndarray) -> np.ndarray:
    """Map float64 values to uint64 keys with the same order (IEEE 754 bit trick)."""
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.uint64)
    negative = (bits >> np.uint64(63)).astype(bool)
    return np.where(negative, ~bits, bits | np.uint64(1 << 63))


def key_values(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`order_keys`."""
    keys = np.asarray(keys, dtype=np.uint64)
    positive = (keys >> np.uint64(63)).astype(bool)
    bits = np.where(positive, keys & np.uint64((1 << 63) - 1), ~keys)
    return bits.view(np.float64)


def block_pixels(block, centre=None) -> np.ndarray:
    """A block's pixels as float64, or their absolute deviations from ``centre``."""
    values = np.asarray(block.images, dtype=np.float64).ravel()
    return values if centre is None else np.abs(values - centre)


def block_selection(block, centre, targets) -> list:
    """One block's part of a selection round, one entry per target.

    A target ``(level, prefix, collect)`` names the bucket of keys whose top ``level``
    digits equal ``prefix``: its keys (``collect``), or the sparse histogram
    ``(digits, counts)`` of their next digit.
    """
    keys = order_keys(block_pixels(block, centre))
    out = []
    for level, prefix, collect in targets:
        shift = np.uint64(64 - DIGIT_BITS * level)
        chosen = keys if level == 0 else keys[(keys >> shift) == np.uint64(prefix)]
        if collect:
            out.append(chosen)
            continue
        digits = (chosen >> (shift - np.uint64(DIGIT_BITS))) & np.uint64(0xFFFF)
        counts = np.bincount(digits.astype(np.int64), minlength=1 << DIGIT_BITS)
        found = np.flatnonzero(counts)
        out.append((found, counts[found]))
    return out


def merge_selections(a: list, b: list) -> list:
    """Combine two blocks' :func:`block_selection` results (keys joined, counts added)."""
    out = []
    for one, other in zip(a, b, strict=True):
        if isinstance(one, np.ndarray):
            out.append(np.concatenate([one, other]))
            continue
        digits, where = np.unique(np.concatenate([one[0], other[0]]), return_inverse=True)
        counts = np.zeros(len(digits), np.int64)
        np.add.at(counts, where, np.concatenate([one[1], other[1]]))
        out.append((digits, counts))
    return out


def _round(engine, centre, targets) -> dict:
    """One selection round over all blocks: ``{target: sorted keys or dense counts}``."""
    parts = engine.reduce(partial(block_selection, centre=centre, targets=targets),
                          merge_selections)
    answers = {}
    for target, part in zip(targets, parts, strict=True):
        if target[2]:
            answers[target] = np.sort(part)
        else:
            counts = np.zeros(1 << DIGIT_BITS, np.int64)
            counts[part[0]] = part[1]
            answers[target] = counts
    return answers


def _descend(pending: dict, collect: dict, found: dict, answers: dict) -> None:
    """Move every wanted rank one digit down (or to its value) given a round's answers.

    ``pending`` and ``collect`` map a rank to ``(level, prefix, keys sorting before the
    prefix's bucket)``; ``found`` receives ``{rank: key}``.
    """
    for rank, (level, prefix, below) in collect.items():
        found[rank] = int(answers[(level, prefix, True)][rank - below])
    collect.clear()
    for rank, (level, prefix, below) in list(pending.items()):
        counts = answers[(level, prefix, False)]
        cumulative = np.cumsum(counts)
        digit = int(np.searchsorted(cumulative, rank - below, side="right"))
        below += int(cumulative[digit - 1]) if digit else 0
        prefix = (prefix << DIGIT_BITS) | digit
        del pending[rank]
        if level + 1 == LEVELS:
            found[rank] = prefix
        elif counts[digit] <= COLLECT_LIMIT:
            collect[rank] = (level + 1, prefix, below)
        else:
            pending[rank] = (level + 1, prefix, below)


def select(engine, ranks, centre=None, top: np.ndarray | None = None) -> dict:
    """Return ``{rank: value}`` for 0-based ranks among all pixels, exactly.

    Parameters
    ----------
    engine : Engine
        Holds the blocks; only its ``reduce`` is used.
    ranks : iterable of int
    centre : float, optional
        Select among the absolute deviations from ``centre`` instead of the pixels.
    top : ndarray, optional
        The level-0 histogram (first round) when already known.
    """
    pending = {int(r): (0, 0, 0) for r in ranks}
    collect: dict[int, tuple] = {}
    found: dict[int, int] = {}
    while pending or collect:
        targets = sorted({(lv, px, False) for lv, px, _ in pending.values()}
                         | {(lv, px, True) for lv, px, _ in collect.values()})
        if top is not None and targets == [(0, 0, False)]:
            answers = {(0, 0, False): top}
        else:
            answers = _round(engine, centre, targets)
        top = None
        _descend(pending, collect, found, answers)
    return {rank: float(key_values(np.array([key], np.uint64))[0])
            for rank, key in found.items()}


def median(engine, centre=None) -> float:
    """The median of all pixels (or of their absolute deviations from ``centre``), exactly.

    The first round (the top digit's histogram) also counts the pixels, so the middle
    ranks cost no extra pass.
    """
    top = _round(engine, centre, [(0, 0, False)])[(0, 0, False)]
    n_values = int(top.sum())
    ranks = sorted({(n_values - 1) // 2, n_values // 2})
    values = select(engine, ranks, centre, top=top)
    # np.median's own formula: the mean of the one or two middle values.
    return float(np.mean(np.array([values[r] for r in ranks], dtype=np.float64)))


def noise_sigma(engine) -> float:
    """Return 1.4826 · median(|Y − median(Y)|) over all pixels of an engine's blocks.

    Exactly :func:`galdecon.core.problem.mad_sigma` of the whole stack, on every engine.
    """
    centre = median(engine)
    return float(MAD_TO_SIGMA * median(engine, centre))


def selection_bytes(n_pixels: int) -> int:
    """Bytes :func:`block_selection` allocates on a block of ``n_pixels`` (nothing is).

    About five float64-sized arrays a pixel at its peak (the pixels, their keys and the
    temporaries of the key trick; measured 29–33 bytes), and two dense histograms.
    """
    return 5 * 8 * int(n_pixels) + 2 * (1 << DIGIT_BITS) * 8



def border_width(shape) -> int:
    """Pixels of a stamp's frame that ``border`` estimates use: a tenth of the side, >= 2."""
    return max(2, min(int(shape[0]), int(shape[1])) // 10)


def image_sigmas(images: np.ndarray, method: str) -> np.ndarray:
    """σ_i = 1.4826 · MAD of each stamp: of all its pixels, or of its border's (float64).

    ``per-image`` uses every pixel: robust while the galaxy covers less than half the
    stamp, and biased upwards as it grows; ``border`` uses only the frame of
    :func:`border_width` pixels, where a centred galaxy has least flux, at the price of
    fewer pixels (592 of 1,681 at 41×41).
    """
    if method not in NOISE_METHODS:
        raise ConfigError(f"option noise_est={method!r}: expected one of "
                          f"{', '.join(NOISE_METHODS)}")
    stamps = np.asarray(images, dtype=np.float64)
    if method == "border":
        w = border_width(stamps.shape[1:])
        frame = np.ones(stamps.shape[1:], dtype=bool)
        frame[w:-w, w:-w] = False
        values = stamps[:, frame]
    else:
        values = stamps.reshape(len(stamps), -1)
    centre = np.median(values, axis=1, keepdims=True)
    return MAD_TO_SIGMA * np.median(np.abs(values - centre), axis=1)


def block_sigmas(block, method: str) -> np.ndarray:
    """:func:`image_sigmas` of one block's stamps."""
    return image_sigmas(block.images, method)


def check_image_sigmas(sigmas: np.ndarray, method: str) -> None:
    """Refuse per-image estimates of zero or non-finite (the thresholds would vanish)."""
    bad = np.flatnonzero(~(np.isfinite(sigmas) & (sigmas > 0)))
    if bad.size:
        raise ConfigError(
            f"option noise_est={method!r}: the noise estimate of image {int(bad[0])} is "
            f"{sigmas[bad[0]]:g} (at least half its {'border ' if method == 'border' else ''}"
            f"pixels equal their median: a blank or padded stamp?; {bad.size} image(s) in "
            "all); give one noise sigma for the stack (a number, or the default)")


def sigma_summary(sigmas: np.ndarray) -> dict:
    """The per-image σ_i for the run record: how many, and their spread."""
    return {"noise_sigmas": {"n": int(sigmas.size), "min": float(sigmas.min()),
                             "median": float(np.median(sigmas)),
                             "max": float(sigmas.max())}}


def weight_sigmas(pixel_weights: np.ndarray) -> np.ndarray:
    """σ_i of each stamp from its inverse-variance weights: 1/sqrt(median unmasked weight)."""
    return 1.0 / np.sqrt(weight_scales(pixel_weights))


def block_weight_sigmas(block) -> np.ndarray:
    """:func:`weight_sigmas` of one block's stamps."""
    return weight_sigmas(block.pixel_weights)
