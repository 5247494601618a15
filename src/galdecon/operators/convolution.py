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

import numpy as np
import scipy.fft as sfft

BOUNDARIES = ("periodic", "zero")


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


def rfft_weights(n_last: int, dtype=np.float64) -> np.ndarray:
    """Weights turning a sum over a half spectrum (``rfft``) into the full-spectrum sum."""
    weights = np.full(n_last // 2 + 1, 2.0, dtype=dtype)
    weights[0] = 1.0
    if n_last % 2 == 0:
        weights[-1] = 1.0
    return weights


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
        if boundary == "periodic":
            self.grid = self.shape
        else:
            self.grid = (
                sfft.next_fast_len(self.shape[0] + k0 // 2, real=True),
                sfft.next_fast_len(self.shape[1] + k1 // 2, real=True),
            )
        self.transfer = sfft.rfft2(kernel_to_grid(psfs, self.grid)).astype(
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
