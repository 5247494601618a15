r"""Fused elementwise passes of the sparse Condat–Vũ iteration (compiled with numba).

Between its matrix products (the DFTs, Φ and Φᵀ) an iteration of :func:`galdecon.core.
solver.sparse_iterate` does some thirty passes over the chunk's arrays in numpy — about
half its time on 41×41 stamps, although they are a few percent of its flops: each numpy
call reads and writes whole arrays through the cache. Here each group of passes that reads
the same arrays is one loop, so every value is loaded once. numpy has no such fusion and
numexpr's thread pool costs more than these in-cache loops, hence numba.

Every kernel computes exactly the formula of the numpy code it replaces, in float64 or
float32 as given (costs accumulate in float64); ``fastmath`` is off, so results are
IEEE-rounded and do not depend on how stamps are chunked. The kernels release the GIL (the
local engine runs blocks on threads) and are cached on disk after their first compilation.
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")


@_jit
def primal_step(x, x_tilde, grad, dual, tau, positivity):
    """``x̃ ← max(x − τ((x̃ + y_0) + grad), 0)`` in place.

    ``x̃`` holds Φᵀy less its first band's term y_0 (the identity part of Φᵀ, added here
    rather than in a pass of its own); ``x``, ``x_tilde``, ``grad`` of shape (m, P),
    ``dual`` (m, J, P).
    """
    m, p = x.shape
    zero = x.dtype.type(0)
    for i in range(m):
        xi, out, g, y0 = x[i], x_tilde[i], grad[i], dual[i, 0]
        for k in range(p):
            v = xi[k] - tau * ((out[k] + y0[k]) + g[k])
            if positivity and v < zero:  # max(v, 0); a NaN stays NaN, as with np.maximum
                v = zero
            out[k] = v


@_jit
def dual_step(y, phi_x, smooth, x_tilde, upper, sigma, rho, diffs):
    r"""The dual update and the relaxations of y and Φx, in one pass.

    Arrays (C-contiguous): ``y``, ``phi_x``, ``upper`` (the weights W) and ``smooth``
    (:math:`S_1 x̃ .. S_J x̃`, :meth:`~galdecon.core.operators.wavelet.Wavelet.smooth_into`)
    of shape (m, J, P); ``x_tilde`` of shape (m, P). With :math:`S_0 = I` the band j of
    :math:`Φx̃` is :math:`S_j x̃ − S_{j+1} x̃`, and::

        ỹ = y + σ(2Φx̃ − Φx);  ŷ = clip(ỹ, −W, W);  y ← y + ρ(ŷ − y);  Φx ← Φx + ρ(Φx̃ − Φx)

    and ``diffs`` (m, J − 1, P) receives the new y's band differences
    :math:`y_{j+1} − y_j`, which Φᵀ of the next iteration needs
    (:meth:`~galdecon.core.operators.wavelet.Wavelet.adj_of_differences_into`).
    """
    m, n_bands, p = y.shape
    two_sigma = sigma + sigma  # exact, and keeps float32 arithmetic in float32
    for i in range(m):
        for j in range(n_bands):
            lo = x_tilde[i] if j == 0 else smooth[i, j - 1]
            hi, dual, old, w = smooth[i, j], y[i, j], phi_x[i, j], upper[i, j]
            for k in range(p):
                phi_tilde = lo[k] - hi[k]
                cand = (phi_tilde * two_sigma - sigma * old[k]) + dual[k]
                cand = max(min(cand, w[k]), -w[k])
                dual[k] = dual[k] + rho * (cand - dual[k])
                old[k] = old[k] + rho * (phi_tilde - old[k])
            if j > 0:
                below, out = y[i, j - 1], diffs[i, j - 1]
                for k in range(p):
                    out[k] = dual[k] - below[k]


@numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy", fastmath=True)
def weighted_l1(weights, coeffs):
    """Return Σ W·|Φx| over (m, J, P) arrays, accumulated in float64 per (stamp, band) row.

    The only kernel whose sum order the compiler may choose (vector lanes): it is the
    same for every row of every chunk, so the cost does not depend on the chunking.
    """
    m, n_bands, p = coeffs.shape
    total = 0.0
    for i in range(m):
        for j in range(n_bands):
            w, c = weights[i, j], coeffs[i, j]
            acc = 0.0
            for k in range(p):
                acc += np.float64(w[k]) * abs(np.float64(c[k]))
            total += acc
    return total


@_jit
def relax(target, fresh, rho):
    """``target ← target + ρ(fresh − target)`` in place; flat real arrays."""
    for k in range(target.shape[0]):
        t = target[k]
        target[k] = t + rho * (fresh[k] - t)


@_jit
def gradient_spectrum(spec, gain, hty, out):
    """``out = gain · spec − Hᵀŷ`` on (re, im) pairs, shape (m, R, 2H); ``gain`` may be shared.

    ``gain`` and ``hty`` have a leading length of m or 1 (one PSF shared by all stamps).
    """
    m, rows, cols = spec.shape
    shared_gain = gain.shape[0] == 1
    for i in range(m):
        g = 0 if shared_gain else i
        for r in range(rows):
            for c in range(cols):
                out[i, r, c] = spec[i, r, c] * gain[g, r, c] - hty[i, r, c]


@numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy", fastmath=True)
def fidelity_cost(spec, transfer, image_spec, parseval):
    r"""Return :math:`\tfrac12\sum w_c |T\hat x − \hat y|^2` over half spectra (float64).

    ``spec``, ``image_spec`` complex (m, R, H); ``transfer`` (m or 1, R, H); ``parseval``
    the Hermitian weights over the last axis divided by the pixel count. Like
    :func:`weighted_l1`, summed in the order the compiler's vector lanes choose, the same
    for every row.
    """
    m, rows, cols = spec.shape
    shared = transfer.shape[0] == 1
    total = 0.0
    for i in range(m):
        t = 0 if shared else i
        for r in range(rows):
            row = 0.0
            for c in range(cols):
                resid = transfer[t, r, c] * spec[i, r, c] - image_spec[i, r, c]
                row += (resid.real * resid.real + resid.imag * resid.imag) * parseval[c]
            total += row
    return 0.5 * total
