r"""PSF convolution :math:`H` and its adjoint on stacks of stamps.

:math:`(HX)_i = h_i \circledast X_i` and :math:`(H^T R)_i = \mathrm{rot}(h_i) \circledast R_i`.
Both are applied in the Fourier domain, where :math:`H^T` is multiplication by
:math:`\overline{\hat h_i}`; that makes the adjoint exact for every stamp and kernel size,
odd or even.

Boundaries
----------
``periodic``
    Circular convolution on the stamp grid, kernel origin at pixel ``(k0 // 2, k1 // 2)``.
    This is the reference code's ``convolve_fft(boundary='wrap')``.
``zero``
    Linear convolution with zero padding, cropped to the centred stamp. Computed as a
    circular convolution on a padded grid of at least ``N + k // 2`` pixels per axis, which
    is exact (no wrap-around reaches the cropped stamp).
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.fft as sfft

BOUNDARIES = ("periodic", "zero")

#: Largest stamp side for which 2-D DFTs are done as dense matrix products
#: (:class:`DenseRFFT2`); above it the FFT's n log n wins and scipy.fft is used.
DENSE_DFT_MAX = 48

#: Stamps per product when a whole stack is transformed at once (:func:`rfft2_stack`):
#: the work arrays of a few hundred stamps stay in cache.
_STACK_CHUNK = 256


def complex_dtype(dtype) -> np.dtype:
    """Return the complex dtype matching a real working dtype."""
    return np.result_type(np.dtype(dtype), np.complex64)


def kernel_to_grid(kernel: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Place kernels on a grid with their centre at pixel ``(0, 0)`` (wrapping).

    This is the reference's convention: a zero array of grid size, the kernel in its
    top-left corner, rolled by ``(-(k0 // 2), -(k1 // 2))``.

    Parameters
    ----------
    kernel : ndarray, shape (..., k0, k1)
        One kernel or a stack of kernels, no larger than ``grid``.
    grid : tuple of int
        Target grid shape ``(g0, g1)``.

    Returns
    -------
    ndarray, shape (..., g0, g1)
    """
    k0, k1 = kernel.shape[-2:]
    if k0 > grid[0] or k1 > grid[1]:
        raise ValueError(f"kernel of shape {(k0, k1)} does not fit a grid of shape {grid}")
    out = np.zeros(kernel.shape[:-2] + tuple(grid), dtype=kernel.dtype)
    out[..., :k0, :k1] = kernel
    return np.roll(out, (-(k0 // 2), -(k1 // 2)), axis=(-2, -1))


@functools.lru_cache(maxsize=16)
def _dense_rfft2(shape: tuple, dtype: str) -> DenseRFFT2:
    return DenseRFFT2(shape, dtype)


def dense_rfft2(shape, dtype=np.float64) -> DenseRFFT2:
    """A shared :class:`DenseRFFT2` (its matrices are built once per shape and dtype).

    Its methods keep no state between calls, so one instance serves every thread.
    """
    return _dense_rfft2((int(shape[0]), int(shape[1])), np.dtype(dtype).str)


def rfft2_stack(x: np.ndarray, dtype=np.float64) -> np.ndarray:
    """``scipy.fft.rfft2`` of a stack ``(..., N0, N1)``, dense products for small stamps.

    For the stamp sizes of :data:`DENSE_DFT_MAX` and below, :class:`DenseRFFT2` (in
    ``dtype``) on chunks of stamps: 3–4× faster than pocketfft on prime sizes such as 41,
    equal to it up to rounding. Used where whole stacks are transformed once (PSF transfer
    functions, image spectra, the sparse weights).
    """
    x = np.asarray(x)
    shape = x.shape[-2:]
    if max(shape) > DENSE_DFT_MAX:
        return sfft.rfft2(x)
    dft = dense_rfft2(shape, dtype)
    stack = np.ascontiguousarray(x.reshape((-1,) + shape), dtype=dtype)
    out = np.empty((stack.shape[0], shape[0], dft.half), dtype=dft.complex_dtype)
    work = np.empty((min(_STACK_CHUNK, stack.shape[0]), shape[0], 2 * dft.half), dtype=dtype)
    for lo in range(0, stack.shape[0], _STACK_CHUNK):
        hi = min(lo + _STACK_CHUNK, stack.shape[0])
        # One product per stamp (a 3-D matmul), not one over the chunk's rows as in the
        # solver's loop: a stamp's spectrum is then the same bits whichever stack holds
        # it (a shared PSF and its repeats, blocks of any size).
        np.matmul(stack[lo:hi], dft.forward_real, out=work[: hi - lo])
        np.matmul(dft.forward_complex, work[: hi - lo].view(dft.complex_dtype), out=out[lo:hi])
    return out.reshape(x.shape[:-2] + out.shape[1:])


def rfft_weights(n_last: int, dtype=np.float64) -> np.ndarray:
    """Weights turning a sum over a half spectrum (``rfft``) into the full-spectrum sum."""
    weights = np.full(n_last // 2 + 1, 2.0, dtype=dtype)
    weights[0] = 1.0
    if n_last % 2 == 0:
        weights[-1] = 1.0
    return weights


def grid_shape(shape, psf_shape, boundary: str) -> tuple[int, int]:
    """The DFT grid of a convolution.

    The stamp itself for the periodic boundary; else the stamp padded by half the PSF (no
    wrap-around) to a fast length.
    """
    if boundary == "periodic":
        return int(shape[0]), int(shape[1])
    return (sfft.next_fast_len(int(shape[0]) + int(psf_shape[0]) // 2, real=True),
            sfft.next_fast_len(int(shape[1]) + int(psf_shape[1]) // 2, real=True))


def spectrum_size(shape, psf_shape, boundary: str) -> int:
    """Complex values of one ``rfft2`` on the :func:`grid_shape` (a transfer function)."""
    g0, g1 = grid_shape(shape, psf_shape, boundary)
    return g0 * (g1 // 2 + 1)


class Convolution:
    r"""The convolution operator :math:`H` of a block of stamps.

    Parameters
    ----------
    psfs : ndarray, shape (m, k0, k1) or (k0, k1)
        One PSF per stamp, or one PSF shared by all stamps. Centred at ``(k0//2, k1//2)``.
    shape : tuple of int
        Stamp shape ``(N0, N1)``; every PSF must fit in it.
    boundary : {'periodic', 'zero'}
        Boundary of the convolution (see module notes).
    dtype : dtype
        Working dtype (float32 or float64).

    Notes
    -----
    The PSF transforms are computed once, here, never per application.
    """

    def __init__(self, psfs: np.ndarray, shape, boundary: str = "periodic", dtype=np.float64):
        if boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
        psfs = np.asarray(psfs, dtype=dtype)
        if psfs.ndim == 2:
            psfs = psfs[None]
        self.shape = (int(shape[0]), int(shape[1]))
        self.boundary = boundary
        self.dtype = np.dtype(dtype)
        k0, k1 = psfs.shape[-2:]
        if k0 > self.shape[0] or k1 > self.shape[1]:
            raise ValueError(f"PSF of shape {(k0, k1)} is larger than the stamp {self.shape}")
        self.grid = grid_shape(self.shape, (k0, k1), boundary)
        self.transfer = rfft2_stack(kernel_to_grid(psfs, self.grid), psfs.dtype).astype(
            complex_dtype(dtype), copy=False
        )

    @property
    def n_psfs(self) -> int:
        """Number of distinct PSFs (1 when a single PSF is shared)."""
        return self.transfer.shape[0]

    def _apply(self, x: np.ndarray, transfer: np.ndarray, workers: int) -> np.ndarray:
        x = np.asarray(x, dtype=self.dtype)
        spec = sfft.rfft2(x, s=self.grid, workers=workers)
        spec *= transfer
        out = sfft.irfft2(spec, s=self.grid, workers=workers)
        if self.grid != self.shape:
            out = out[..., : self.shape[0], : self.shape[1]]
        return np.ascontiguousarray(out, dtype=self.dtype)

    def op(self, x: np.ndarray, workers: int = 1) -> np.ndarray:
        """Return :math:`HX`, each stamp convolved with its PSF."""
        return self._apply(x, self.transfer, workers)

    def adj(self, r: np.ndarray, workers: int = 1) -> np.ndarray:
        """Return :math:`H^T R`, each stamp convolved with its rotated PSF."""
        return self._apply(r, self.transfer.conj(), workers)

    def normal(self, x: np.ndarray, workers: int = 1) -> np.ndarray:
        """Return :math:`H^T H X`."""
        if self.boundary == "periodic":
            return self._apply(x, (self.transfer * self.transfer.conj()).real, workers)
        return self.adj(self.op(x, workers), workers)

    def spectral_norms(self, n_iter: int = 500, rtol: float = 1e-12) -> np.ndarray:
        r"""Return :math:`\rho(H_i^T H_i)` for every PSF of the block.

        Exact for the periodic boundary (:math:`\max_\omega |\hat h_i(\omega)|^2`); a batched
        power method per PSF for the zero boundary, started from the same deterministic
        vector for every PSF so that the result does not depend on how stamps are blocked.
        """
        gain = (self.transfer * self.transfer.conj()).real
        if self.boundary == "periodic":
            return gain.reshape(gain.shape[0], -1).max(axis=1).astype(np.float64)
        start = np.random.default_rng(20170828).random(self.shape) + 0.5
        vec = np.broadcast_to(start, (self.n_psfs,) + self.shape).astype(np.float64)
        estimate = np.zeros(self.n_psfs)
        op64 = Convolution.__new__(Convolution)
        op64.__dict__.update(self.__dict__)
        op64.dtype = np.dtype(np.float64)
        op64.transfer = self.transfer.astype(np.complex128)
        for _ in range(n_iter):
            vec = vec / np.sqrt(np.sum(vec**2, axis=(1, 2), keepdims=True))
            image = op64.normal(vec)
            new = np.sum(image * vec, axis=(1, 2))
            done = np.all(np.abs(new - estimate) <= rtol * np.abs(new))
            estimate, vec = new, image
            if done:
                break
        return estimate

    def beta(self) -> float:
        r"""Return :math:`\beta = \rho(H^T H)` of the block (the largest over its PSFs)."""
        return float(self.spectral_norms().max())


class DenseRFFT2:
    r"""``rfft2`` and ``irfft2`` of stacks of small stamps as two dense matrix products each.

    For the prime stamp sizes of galaxy stamps (41) an FFT library falls back to an
    :math:`O(N^2)` pass per axis anyway, so the transform *is* a pair of small dense
    products; done as BLAS products (one large real product along the last axis, one
    complex product per stamp along the first) it runs at matrix-multiply speed and writes
    into caller-provided arrays, so an iteration that uses it allocates nothing.

    The results equal ``scipy.fft.rfft2`` / ``irfft2(·, s=shape)`` (backward norm) up to
    rounding: the forward transform is :math:`\hat X = F_0 X F_1^{T}` with :math:`F_1` the
    first ``N1 // 2 + 1`` rows of the DFT matrix, and the inverse sums the half spectrum with
    Hermitian weights (1 for the zero frequency and, for even ``N1``, the Nyquist one; 2
    elsewhere), ignoring their imaginary parts as ``irfft2`` does.

    Parameters
    ----------
    shape : tuple of int
        Stamp shape ``(N0, N1)``.
    dtype : dtype
        Real working dtype (float32 or float64); spectra have the matching complex dtype.
    """

    def __init__(self, shape, dtype=np.float64):
        n0, n1 = int(shape[0]), int(shape[1])
        half = n1 // 2 + 1
        self.shape = (n0, n1)
        self.half = half
        self.dtype = np.dtype(dtype)
        self.complex_dtype = complex_dtype(dtype)
        # Phases reduced modulo N before scaling, so that equal angles give equal entries.
        phase1 = 2 * np.pi * ((np.arange(n1)[:, None] * np.arange(half)[None, :]) % n1) / n1
        phase0 = 2 * np.pi * ((np.arange(n0)[:, None] * np.arange(n0)[None, :]) % n0) / n0
        # Last axis, real → half spectrum, columns interleaved (re, im) per frequency.
        forward1 = np.empty((n1, 2 * half))
        forward1[:, 0::2] = np.cos(phase1)
        forward1[:, 1::2] = -np.sin(phase1)
        weights = rfft_weights(n1) / (n0 * n1)
        inverse1 = np.empty((2 * half, n1))
        inverse1[0::2] = weights[:, None] * np.cos(phase1.T)
        inverse1[1::2] = -weights[:, None] * np.sin(phase1.T)
        inverse1[1] = 0.0  # the zero frequency's imaginary part is ignored, as by irfft2
        if n1 % 2 == 0:
            inverse1[-1] = 0.0  # and so is the Nyquist frequency's
        self._forward1 = forward1.astype(self.dtype)
        self._inverse1 = inverse1.astype(self.dtype)
        self._forward0 = np.exp(-1j * phase0).astype(self.complex_dtype)
        self._inverse0 = np.exp(1j * phase0).astype(self.complex_dtype)

    @property
    def forward_real(self) -> np.ndarray:
        """The last axis' real → (re, im) product matrix, shape ``(N1, 2 * (N1 // 2 + 1))``."""
        return self._forward1

    @property
    def forward_complex(self) -> np.ndarray:
        """The first axis' complex DFT matrix, shape ``(N0, N0)``."""
        return self._forward0

    def spectrum_shape(self, m: int) -> tuple[int, int, int]:
        """Shape of the half spectra of ``m`` stamps."""
        return (m, self.shape[0], self.half)

    def forward(self, x: np.ndarray, out: np.ndarray | None = None,
                work: np.ndarray | None = None) -> np.ndarray:
        """Return ``rfft2(x)`` for ``x`` of shape ``(m, N0, N1)`` (C-contiguous).

        ``out`` (complex, ``(m, N0, N1 // 2 + 1)``) and ``work`` (real,
        ``(m, N0, 2 * (N1 // 2 + 1))``) are filled when given, allocated otherwise.
        """
        m = x.shape[0]
        n0, n1 = self.shape
        if work is None:
            work = np.empty((m, n0, 2 * self.half), dtype=self.dtype)
        if out is None:
            out = np.empty(self.spectrum_shape(m), dtype=self.complex_dtype)
        np.matmul(x.reshape(m * n0, n1), self._forward1, out=work.reshape(m * n0, 2 * self.half))
        np.matmul(self._forward0, work.view(self.complex_dtype), out=out)
        return out

    def inverse(self, spec: np.ndarray, out: np.ndarray | None = None,
                work: np.ndarray | None = None) -> np.ndarray:
        """Return ``irfft2(spec, s=(N0, N1))`` for half spectra ``spec`` of shape ``(m, N0, H)``.

        ``out`` (real, ``(m, N0, N1)``) and ``work`` (complex, like ``spec``) are filled when
        given, allocated otherwise.
        """
        m = spec.shape[0]
        n0, n1 = self.shape
        if work is None:
            work = np.empty(self.spectrum_shape(m), dtype=self.complex_dtype)
        if out is None:
            out = np.empty((m, n0, n1), dtype=self.dtype)
        np.matmul(self._inverse0, spec, out=work)
        np.matmul(work.view(self.dtype).reshape(m * n0, 2 * self.half), self._inverse1,
                  out=out.reshape(m * n0, n1))
        return out
