"""The data-fidelity term ½‖Y − HX‖² of a block, and what each iteration carries of HX.

Two forms: :class:`FourierFidelity` (periodic boundary) carries the spectrum of X, so an
iteration costs one forward and one inverse 2-D DFT; :class:`PixelFidelity` (any boundary)
carries the residual HX − Y. Both have allocation-free forms on a chunk of galaxies
(``*_into``, working in :func:`~galdecon.core.scratch.scratch` arrays) for the sparse loop.
"""

from __future__ import annotations

import copy

import numpy as np
import scipy.fft as sfft

from galdecon.core import kernels
from galdecon.core.operators.convolution import (
    DENSE_DFT_MAX,
    Convolution,
    dense_rfft2,
    rfft2_stack,
    rfft_weights,
)
from galdecon.core.scratch import scratch


def _rows(array: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Rows ``lo:hi`` of a per-galaxy array; a shared (leading length 1) array as it is."""
    return array if array.shape[0] == 1 else array[lo:hi]


class _SciPyRFFT2:
    """scipy.fft with the :class:`DenseRFFT2` interface (for stamps too large for it)."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, x, out=None, work=None):
        spec = sfft.rfft2(x)
        if out is None:
            return spec
        np.copyto(out, spec)
        return out

    def inverse(self, spec, out=None, work=None):
        image = sfft.irfft2(spec, s=self.shape)
        if out is None:
            return image
        np.copyto(out, image)
        return out


def _real_dft(shape, dtype):
    if max(shape) <= DENSE_DFT_MAX:
        return dense_rfft2(shape, dtype)
    return _SciPyRFFT2(shape)


class FourierFidelity:
    """½‖Y − HX‖² with the periodic boundary, carried as the spectrum of X."""

    def __init__(self, conv: Convolution, images: np.ndarray):
        self.shape = conv.shape
        self.dtype = np.dtype(images.dtype)
        self.transfer = conv.transfer
        self.image_spec = rfft2_stack(images, images.dtype)
        self.gain = (conv.transfer * conv.transfer.conj()).real.astype(images.dtype)
        self.hty_spec = conv.transfer.conj() * self.image_spec
        self.parseval = rfft_weights(self.shape[1]) / (self.shape[0] * self.shape[1])
        self.dft = _real_dft(self.shape, self.dtype)
        # Real (re, im)-interleaved forms for the in-place sparse loop.
        self._gain_pairs = np.repeat(self.gain, 2, axis=-1)

    def start(self, x):
        return self.dft.forward(np.ascontiguousarray(x, dtype=self.dtype))

    def gradient(self, spec):
        grad = self.gain * spec
        grad -= self.hty_spec
        return self.dft.inverse(grad)

    def advance(self, spec, x_tilde, rho):
        new = self.start(x_tilde)
        new -= spec
        new *= rho
        new += spec
        return new

    def cost(self, spec) -> float:
        resid = self.image_spec - self.transfer * spec
        power = resid.real.astype(np.float64) ** 2 + resid.imag.astype(np.float64) ** 2
        return 0.5 * float(np.tensordot(power, self.parseval, axes=([-1], [0])).sum())

    # -- allocation-free forms on a chunk (used by sparse_iterate) ----------------------
    def part(self, lo: int, hi: int) -> FourierFidelity:
        """The same fidelity restricted to galaxies ``lo:hi`` (views, no copies)."""
        other = copy.copy(self)
        for name in ("transfer", "image_spec", "gain", "hty_spec", "_gain_pairs"):
            setattr(other, name, _rows(getattr(self, name), lo, hi))
        return other

    def carried_like(self, x):
        """A scratch array for what is carried for stamps ``x``: their spectra."""
        return scratch("fidelity.carried", (x.shape[0], self.shape[0], self.shape[1] // 2 + 1),
                       self.image_spec.dtype)

    # Two spectrum-sized scratch arrays serve every step: "a" holds the gradient's and the
    # cost's spectrum, then the forward transform's first stage; "b" the inverse
    # transform's first stage, then the fresh spectrum.
    def _forward(self, x, out):
        work = scratch("fidelity.spectrum_a", out.shape, out.dtype).view(self.dtype)
        return self.dft.forward(x, out, work)

    def start_into(self, x, carried) -> None:
        self._forward(x, carried)

    def gradient_into(self, spec, out) -> None:
        grad = scratch("fidelity.spectrum_a", spec.shape, spec.dtype)
        kernels.gradient_spectrum(spec.view(self.dtype), self._gain_pairs,
                                  self.hty_spec.view(self.dtype), grad.view(self.dtype))
        self.dft.inverse(grad, out, scratch("fidelity.spectrum_b", spec.shape, spec.dtype))

    def advance_into(self, spec, x_tilde, rho) -> None:
        fresh = self._forward(x_tilde, scratch("fidelity.spectrum_b", spec.shape, spec.dtype))
        kernels.relax(spec.reshape(-1).view(self.dtype), fresh.reshape(-1).view(self.dtype),
                      self.dtype.type(rho))

    def cost_of(self, spec) -> float:
        return float(kernels.fidelity_cost(spec, self.transfer, self.image_spec,
                                           self.parseval))


class PixelFidelity:
    """½‖Y − HX‖² for any boundary, carried as the residual HX − Y."""

    def __init__(self, conv: Convolution, images: np.ndarray):
        self.conv = conv
        self.images = images

    def start(self, x):
        return self.conv.op(x) - self.images

    def gradient(self, resid):
        return self.conv.adj(resid)

    def advance(self, resid, x_tilde, rho):
        new = self.start(x_tilde)
        new -= resid
        new *= rho
        new += resid
        return new

    def cost(self, resid) -> float:
        return 0.5 * float(np.sum(resid.astype(np.float64) ** 2))

    # -- the chunk forms used by sparse_iterate ------------------------------------------
    def part(self, lo: int, hi: int) -> PixelFidelity:
        """The same fidelity restricted to galaxies ``lo:hi``."""
        conv = copy.copy(self.conv)
        conv.transfer = _rows(self.conv.transfer, lo, hi)
        return PixelFidelity(conv, self.images[lo:hi])

    def carried_like(self, x):
        """A scratch array for what is carried for stamps ``x``: their residuals."""
        return scratch("fidelity.carried", x.shape, x.dtype)

    def start_into(self, x, carried) -> None:
        np.copyto(carried, self.start(x))

    def gradient_into(self, resid, out) -> None:
        np.copyto(out, self.gradient(resid))

    def advance_into(self, resid, x_tilde, rho) -> None:
        np.copyto(resid, self.advance(resid, x_tilde, rho))

    def cost_of(self, resid) -> float:
        return self.cost(resid)


def weight_scales(pixel_weights: np.ndarray) -> np.ndarray:
    """Each stamp's typical inverse variance: the median of its unmasked weights.

    1/sqrt of it is the stamp's noise σ_i; the data term weighs pixels by their weight
    relative to it, so uniform weights give exactly the unweighted problem.
    """
    w = np.asarray(pixel_weights, dtype=np.float64).reshape(len(pixel_weights), -1)
    masked = np.where(w > 0, w, np.nan)
    return np.nanmedian(masked, axis=1)


def relative_weights(pixel_weights: np.ndarray, dtype) -> np.ndarray:
    """The weights over each stamp's :func:`weight_scales` (1 = a typical pixel)."""
    scales = weight_scales(pixel_weights)
    return (np.asarray(pixel_weights, dtype=np.float64) / scales[:, None, None]).astype(dtype)


class WeightedFidelity(PixelFidelity):
    r"""½‖W^{1/2}(Y − HX)‖², W the per-pixel weights relative to each stamp's typical one.

    Masked pixels (weight 0) do not enter the data term at all. The residual is carried
    in pixels (any boundary); the gradient is :math:`H^T (W ∘ (HX − Y))`, whose Lipschitz
    constant is at most max(W)·ρ(HᵀH) (:func:`weighted_beta`).
    """

    def __init__(self, conv: Convolution, images: np.ndarray, pixel_weights: np.ndarray):
        super().__init__(conv, images)
        self.relative = relative_weights(pixel_weights, images.dtype)

    def gradient(self, resid):
        return self.conv.adj(self.relative * resid)

    def cost(self, resid) -> float:
        resid = resid.astype(np.float64)
        return 0.5 * float(np.sum(self.relative * resid * resid))

    def part(self, lo: int, hi: int) -> WeightedFidelity:
        """The same fidelity restricted to galaxies ``lo:hi``."""
        other = copy.copy(self)
        other.conv = copy.copy(self.conv)
        other.conv.transfer = _rows(self.conv.transfer, lo, hi)
        other.images = self.images[lo:hi]
        other.relative = self.relative[lo:hi]
        return other


def weighted_beta(beta: float, pixel_weights: np.ndarray) -> float:
    """The Lipschitz constant's bound max(W)·β for relative weights W (β: that of HᵀH)."""
    return float(beta * np.max(relative_weights(pixel_weights, np.float64)))


def operator_bytes(n_images: int, n_psfs: int, spectrum: int, itemsize: int,
                   boundary: str) -> int:
    """Bytes of the operators cached for a stack (:func:`galdecon.core.solver.operators`).

    Summed over the blocks: the PSF transfer functions (one ``spectrum`` of complex
    values per PSF) and, for the periodic boundary (:class:`FourierFidelity`), per stamp
    the image spectrum and HᵀY, per PSF the gains and their (re, im) pairs; ``itemsize``
    is the working dtype's.
    """
    complex_size = 2 * itemsize
    if boundary == "periodic":
        return (n_images * 2 * spectrum * complex_size
                + n_psfs * spectrum * (complex_size + 3 * itemsize))
    return n_psfs * spectrum * complex_size

