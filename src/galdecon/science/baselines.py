r"""Simple baselines to measure galdecon's gain against, on the same data and operators.

``observed``
    No deconvolution: the observation itself is the image estimate; its shape is the
    PSF-corrected one of :func:`galsim.hsm.EstimateShear` (:func:`psf_corrected_shapes`).
``wiener``
    Tikhonov (flat-spectrum Wiener) deconvolution, closed form in Fourier with galdecon's
    periodic convention: :math:`\hat X_i = \mathcal F^{-1}[\overline{\hat h_i}\hat Y_i /
    (|\hat h_i|^2 + \lambda_i)]`, :math:`\lambda_i = p\sigma^2 / \|X_i\|^2` (noise over
    signal power per frequency) with :math:`\|X_i\|^2` estimated as
    :math:`\|Y_i\|^2 - p\sigma^2`.
``richardson_lucy``
    Richardson–Lucy iterations with galdecon's :class:`~galdecon.core.operators.Convolution`:
    :math:`X \leftarrow X \odot H^T(Y_+ / HX) / H^T 1`, a fixed number of iterations,
    positive by construction, flux preserving (:math:`\sum X = \sum Y_+`).

The noise level σ defaults to galdecon's own estimate (1.4826 × MAD over the stack), so
the baselines use no more information than the deconvolver.

Written here rather than taken from scikit-image (``skimage.restoration.wiener`` and
``richardson_lucy``, not a dependency): scikit-image deconvolves one image at a time with a
zero-padded 'same'-size convolution and clips its estimate to [-1, 1]; ours use galdecon's
exact periodic convolution operator and PSF centring on the whole stack, so the comparison
isolates the regulariser.

Richardson–Lucy is regularised only by stopping early, and the best stop depends on the
SNR: :func:`richardson_lucy_path` gives the estimates at several iteration counts from one
run, so that a benchmark can report the best of them (an oracle choice, which no user
without the truth can make).
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.fft as sfft

from galdecon.core.operators.convolution import Convolution, kernel_to_grid
from galdecon.core.problem import mad_sigma
from galdecon.science import galsim_import

log = logging.getLogger("galdecon")

RL_ITERATIONS = 10  # best or near best pixel error over SNR 1-10 on a pilot set (seed 7)
#: Iteration counts at which benchmarks/quality.py measures Richardson–Lucy.
RL_GRID = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 100)


def _stacks(images, psfs):
    images = np.asarray(images, dtype=np.float64)
    images = images[None] if images.ndim == 2 else images
    psfs = np.asarray(psfs, dtype=np.float64)
    return images, psfs


def observed(images) -> np.ndarray:
    """No deconvolution: a copy of the observed stamps."""
    return np.array(images, dtype=np.float64, copy=True)


def tikhonov_regularisation(images, noise_sigma=None, floor: float = 1e-2) -> np.ndarray:
    r"""Per-image :math:`\lambda_i = p\sigma_i^2 / \max(\|Y_i\|^2 - p\sigma_i^2, f p\sigma_i^2)`.

    ``noise_sigma`` is a number or one per image (default: 1.4826 × MAD of the stack); the
    floor ``f`` keeps λ finite when an image is all noise.
    """
    images = np.asarray(images, dtype=np.float64)
    images = images[None] if images.ndim == 2 else images
    sigma = mad_sigma(images) if noise_sigma is None else noise_sigma
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), images.shape[:1])
    p = images.shape[1] * images.shape[2]
    noise_power = p * sigma**2
    signal = np.sum(images**2, axis=(1, 2)) - noise_power
    return noise_power / np.maximum(signal, floor * noise_power)


def wiener(images, psfs, noise_sigma=None, regularisation=None) -> np.ndarray:
    r"""Tikhonov/Wiener deconvolution in closed form (periodic boundary).

    Parameters
    ----------
    images : array_like, shape (n, N0, N1)
    psfs : array_like, shape (n, k0, k1) or (k0, k1)
        Centred at ``(k0//2, k1//2)``, as for :func:`galdecon.deconvolve`.
    noise_sigma : float or array_like, optional
        Noise σ (one, or one per image); default 1.4826 × MAD of the stack.
    regularisation : float or array_like, optional
        λ (one, or one per image) instead of :func:`tikhonov_regularisation`; ``0`` is the
        plain inverse filter.

    Returns
    -------
    ndarray, shape (n, N0, N1)

    Examples
    --------
    >>> psf = np.array([[0, 0.1, 0], [0.1, 0.6, 0.1], [0, 0.1, 0]])
    >>> x = np.zeros((1, 9, 9)); x[0, 4, 4] = 1.0
    >>> y = Convolution(psf, (9, 9)).op(x)
    >>> bool(np.allclose(wiener(y, psf, regularisation=0.0), x))
    True
    """
    images, psfs = _stacks(images, psfs)
    shape = images.shape[1:]
    if regularisation is None:
        regularisation = tikhonov_regularisation(images, noise_sigma)
    lam = np.broadcast_to(np.asarray(regularisation, dtype=np.float64), images.shape[:1])
    transfer = sfft.rfft2(kernel_to_grid(psfs if psfs.ndim == 3 else psfs[None], shape))
    spectrum = sfft.rfft2(images)
    gain = np.abs(transfer) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        filtered = np.conj(transfer) * spectrum / (gain + lam[:, None, None])
    # zero regularisation at a zero of the transfer function: no information, set 0
    filtered[~np.isfinite(filtered)] = 0.0
    return sfft.irfft2(filtered, s=shape)


def richardson_lucy(images, psfs, n_iter: int = RL_ITERATIONS, eps: float = 1e-12,
                    initial=None) -> np.ndarray:
    r"""Richardson–Lucy deconvolution with galdecon's periodic operators.

    Negative data (noise) are clipped to 0; the start is flat with the clipped data's
    flux. Each iteration multiplies by :math:`H^T(Y_+/HX)/H^T1`, so the estimate stays
    positive and, for PSFs summing to 1, keeps the flux :math:`\sum Y_+` of each image.

    Parameters
    ----------
    images, psfs : array_like
        As for :func:`wiener`.
    n_iter : int
        Fixed number of iterations (early stopping is the regularisation).
    eps : float
        Guard against division by zero.
    initial : array_like, optional
        Starting estimate (positive).

    Returns
    -------
    ndarray, shape (n, N0, N1)
    """
    return next(richardson_lucy_path(images, psfs, (n_iter,), eps, initial))[1]


def richardson_lucy_path(images, psfs, iterations=RL_GRID, eps: float = 1e-12,
                         initial=None):
    """Richardson–Lucy estimates at several iteration counts, from one run.

    Yields ``(k, estimate)`` for each count ``k`` of ``iterations`` in increasing order;
    each estimate is a copy, equal to ``richardson_lucy(images, psfs, n_iter=k)``.

    Examples
    --------
    >>> psf = np.array([[0, 0.1, 0], [0.1, 0.6, 0.1], [0, 0.1, 0]])
    >>> y = np.ones((1, 8, 8))
    >>> [k for k, _ in richardson_lucy_path(y, psf, (3, 1))]
    [1, 3]
    """
    images, psfs = _stacks(images, psfs)
    operator = Convolution(psfs, images.shape[1:], "periodic")
    data = np.maximum(images, 0.0)
    if initial is None:
        flux = data.sum(axis=(1, 2), keepdims=True)
        estimate = np.broadcast_to(flux / data[0].size, data.shape).copy()
    else:
        estimate = np.array(initial, dtype=np.float64, copy=True)
    norm = np.maximum(operator.adj(np.ones_like(data)), eps)
    done = 0
    for k in sorted({int(k) for k in iterations}):
        for _ in range(k - done):
            ratio = data / np.maximum(operator.op(estimate), eps)
            estimate *= operator.adj(ratio) / norm
        done = k
        yield k, estimate.copy()


def psf_corrected_shapes(images, psfs, noise_sigma=None,
                         method: str = "REGAUSS") -> tuple[np.ndarray, np.ndarray]:
    """PSF-corrected distortions of the observed stamps (:func:`galsim.hsm.EstimateShear`).

    Returns ``(shapes, ok)``: ``(n, 2)`` distortions in galdecon's convention (NaN where
    the estimate failed) and success flags.
    """
    galsim = galsim_import.galsim("PSF-corrected shapes")
    images, psfs = _stacks(images, psfs)
    psf_stack = psfs if psfs.ndim == 3 else np.broadcast_to(psfs, (len(images),) + psfs.shape)
    sigma = mad_sigma(images) if noise_sigma is None else noise_sigma
    sky_var = np.broadcast_to(np.asarray(sigma, dtype=np.float64) ** 2, images.shape[:1])
    shapes = np.full((len(images), 2), np.nan)
    ok = np.zeros(len(images), dtype=bool)
    for i, (stamp, psf) in enumerate(zip(images, psf_stack, strict=True)):
        try:
            res = galsim.hsm.EstimateShear(galsim.Image(np.ascontiguousarray(stamp)),
                                           galsim.Image(np.ascontiguousarray(psf)),
                                           sky_var=float(sky_var[i]), shear_est=method,
                                           strict=False)
        except galsim.GalSimError as exc:
            log.debug("EstimateShear of stamp %d failed: %s", i, exc)
            continue
        if res.correction_status == 0 and res.meas_type == "e":
            shapes[i] = (-res.corrected_e1, res.corrected_e2)
            ok[i] = np.isfinite(shapes[i]).all()
    return shapes, ok
