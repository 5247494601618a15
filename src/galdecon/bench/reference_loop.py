r"""The same sparse Condat–Vũ iteration written as the reference code writes it: a loop.

sf_deconvolve convolves one stamp at a time, with one FFT convolution call per galaxy and
per filter (astropy's ``convolve_fft`` with ``boundary='wrap'``), transforming the kernel
again on every call, and evaluates the cost every iteration. This module does exactly that
with numpy's FFT, so that :mod:`galdecon.bench.suite` can measure on this machine how much the
batched block design gains over that style on the *same* maths — it is a yardstick, never
used to solve. On odd stamps its iterates equal :func:`galdecon.core.solver.sparse_iterate`'s to
rounding (tested).
"""

from __future__ import annotations

import numpy as np

from galdecon.core.operators.convolution import kernel_to_grid


def convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Periodic convolution of one stamp with one centred kernel (both transformed here)."""
    grid = kernel_to_grid(kernel, image.shape)
    return np.real(np.fft.ifft2(np.fft.fft2(image) * np.fft.fft2(grid)))


def _rotate(kernel: np.ndarray) -> np.ndarray:
    return np.rot90(kernel, 2)  # one 2-D kernel: the adjoint of its convolution (odd sizes)


class ReferenceLoop:
    """Sparse mode, one galaxy and one filter at a time.

    Parameters
    ----------
    images, psfs : ndarray, shape (n, N0, N1) and (n, k0, k1)
    filters : ndarray, shape (J, N0, N1)
        The wavelet detail filters (:func:`galdecon.core.operators.wavelet.atrous_filters`).
    weights : ndarray, shape (n, J)
    tau, sigma, rho : float
        Step sizes and relaxation.
    positivity : bool
    """

    def __init__(self, images, psfs, filters, weights, tau, sigma, rho, positivity=True):
        self.images = np.asarray(images, dtype=np.float64)
        self.psfs = np.asarray(psfs, dtype=np.float64)
        self.filters = np.asarray(filters, dtype=np.float64)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.tau, self.sigma, self.rho = float(tau), float(sigma), float(rho)
        self.positivity = positivity

    def _phi(self, image):
        return np.array([convolve(image, f) for f in self.filters])

    def _phi_adjoint(self, coeffs):
        return sum(convolve(c, _rotate(f)) for c, f in zip(coeffs, self.filters, strict=True))

    def iterate(self, primal, dual) -> tuple[np.ndarray, np.ndarray, float]:
        """One iteration on every galaxy; return the new primal, dual and the cost."""
        new_primal, new_dual = np.empty_like(primal), np.empty_like(dual)
        cost = 0.0
        for i in range(len(primal)):
            x, y, psf = primal[i], dual[i], self.psfs[i]
            residual = convolve(x, psf) - self.images[i]
            gradient = convolve(residual, _rotate(psf))
            x_tilde = x - self.tau * (gradient + self._phi_adjoint(y))
            if self.positivity:
                x_tilde = np.maximum(x_tilde, 0.0)
            y_tilde = y + self.sigma * self._phi(2 * x_tilde - x)
            bound = self.weights[i][:, None, None]
            y_hat = np.clip(y_tilde, -bound, bound)
            new_primal[i] = self.rho * x_tilde + (1 - self.rho) * x
            new_dual[i] = self.rho * y_hat + (1 - self.rho) * y
            # the cost at the relaxed x, every iteration, as the reference computes it
            fit = self.images[i] - convolve(new_primal[i], psf)
            cost += 0.5 * np.sum(fit**2) + np.sum(bound * np.abs(self._phi(new_primal[i])))
        return new_primal, new_dual, float(cost)
