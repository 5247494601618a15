r"""The isotropic undecimated (à trous) wavelet transform :math:`\Phi`, coarse scale dropped.

The filters are the impulse responses of the à trous transform applied to a delta at the
stamp centre (ALGORITHM.md §3): :math:`c_0 = \delta`, :math:`c_{s+1} = h^{(s)} \circledast c_s`
(rows then columns, :math:`h` with :math:`2^s - 1` zeros between taps, border clamped) and
:math:`\varphi_j = c_j - c_{j+1}`. :math:`\Phi(X)_{i,j} = \varphi_j \circledast X_i`.

Because the à trous filtering is separable and its border clamping acts on each axis
alone, every :math:`c_s` is an outer product :math:`u_s \otimes v_s` of two 1-D impulse
responses. Convolving with :math:`c_s` (periodic or zero boundary) is therefore
:math:`B_s X C_s^T` with two small matrices (circulant for ``periodic``, Toeplitz for
``zero``), and the whole transform is a handful of large matrix products — exact, and far
faster than per-scale FFTs on 41×41 stamps.
"""

from __future__ import annotations

import functools

import numpy as np

from galdecon.core.operators.convolution import BOUNDARIES

WAVELETS = {
    "starlet": np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0,
    "linear": np.array([1.0, 2.0, 1.0]) / 4.0,
}


def atrous_impulses_1d(size: int, n_scales: int, wavelet: str = "starlet") -> np.ndarray:
    """Return the 1-D smoothing impulse responses ``c_0 .. c_{n_scales-1}``.

    Parameters
    ----------
    size : int
        Length of the axis.
    n_scales : int
        Number of scales including the coarse one (so ``n_scales - 1`` detail bands).
    wavelet : {'starlet', 'linear'}
        B3-spline (``[1,4,6,4,1]/16``) or linear (``[1,2,1]/4``) smoothing kernel.

    Returns
    -------
    ndarray, shape (n_scales, size)
        ``c_s`` for ``s = 0 .. n_scales - 1``, from a delta at ``size // 2`` with the border
        clamped (indices beyond the edge read the edge pixel).
    """
    taps = WAVELETS[wavelet]
    half = len(taps) // 2
    current = np.zeros(size)
    current[size // 2] = 1.0
    out = [current]
    index = np.arange(size)
    for scale in range(n_scales - 1):
        step = 2**scale
        smoothed = np.zeros(size)
        for t, tap in enumerate(taps):
            smoothed += tap * current[np.clip(index + (t - half) * step, 0, size - 1)]
        current = smoothed
        out.append(current)
    return np.array(out)


def atrous_filters(shape, n_scales: int = 4, wavelet: str = "starlet") -> np.ndarray:
    r"""Return the detail filters :math:`\varphi_j`, shape ``(n_scales - 1, N0, N1)``.

    Examples
    --------
    >>> phi = atrous_filters((41, 41), 4, "starlet")
    >>> phi.shape
    (3, 41, 41)
    >>> [round(float(np.linalg.norm(f)), 6) for f in phi]
    [0.890796, 0.200664, 0.085508]
    """
    rows = atrous_impulses_1d(shape[0], n_scales, wavelet)
    cols = atrous_impulses_1d(shape[1], n_scales, wavelet)
    smooth = rows[:, :, None] * cols[:, None, :]
    return smooth[:-1] - smooth[1:]


def axis_matrix(impulse: np.ndarray, boundary: str) -> np.ndarray:
    """Matrix ``B`` with ``B @ v`` = convolution of ``v`` with a centred 1-D kernel.

    ``B[a, b] = impulse[a - b + n // 2]``, wrapped (circulant) for ``periodic`` and zero
    outside the kernel (Toeplitz, i.e. zero padding then centre crop) for ``zero``.
    """
    size = impulse.shape[0]
    offset = np.arange(size)[:, None] - np.arange(size)[None, :] + size // 2
    if boundary == "periodic":
        return impulse[offset % size]
    inside = (offset >= 0) & (offset < size)
    return np.where(inside, impulse[np.clip(offset, 0, size - 1)], 0.0)


@functools.lru_cache(maxsize=16)
def _shared_wavelet(shape, n_scales, wavelet, boundary, dtype) -> Wavelet:
    return Wavelet(shape, n_scales, wavelet, boundary, dtype)


def shared_wavelet(shape, n_scales: int = 4, wavelet: str = "starlet",
                   boundary: str = "periodic", dtype=np.float64) -> Wavelet:
    """A :class:`Wavelet` built once per set of arguments and shared (it holds no state).

    Every block of a run needs the same operator; building its matrices costs as much
    as a few dozen stamps' iteration.
    """
    return _shared_wavelet((int(shape[0]), int(shape[1])), int(n_scales), wavelet, boundary,
                           np.dtype(dtype).str)


class Wavelet:
    r"""The operator :math:`\Phi` and its adjoint on stacks of stamps.

    Parameters
    ----------
    shape : tuple of int
        Stamp shape ``(N0, N1)``.
    n_scales : int
        Number of scales including the dropped coarse scale (``>= 2``).
    wavelet : {'starlet', 'linear'}
        Smoothing kernel of the à trous transform.
    boundary : {'periodic', 'zero'}
        Boundary of the filter convolutions.
    dtype : dtype
        Working dtype.

    Notes
    -----
    With :math:`S_s X = B_s X C_s^T` the convolution with :math:`c_s` (:math:`S_0 = I`),
    :math:`\Phi(X)_j = S_j X - S_{j+1} X` and
    :math:`\Phi^T(Z) = Z_0 + \sum_{s=1}^{J} S_s^T D_s` with :math:`D_s = Z_s - Z_{s-1}`
    (:math:`Z_J = 0`), so both directions cost :math:`J` two-sided products.
    """

    def __init__(self, shape, n_scales: int = 4, wavelet: str = "starlet",
                 boundary: str = "periodic", dtype=np.float64):
        if wavelet not in WAVELETS:
            raise ValueError(f"wavelet must be one of {sorted(WAVELETS)}, got {wavelet!r}")
        if boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
        if int(n_scales) < 2:
            raise ValueError(f"n_scales must be >= 2, got {n_scales}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.n_scales = int(n_scales)
        self.n_bands = self.n_scales - 1
        self.wavelet = wavelet
        self.boundary = boundary
        self.dtype = np.dtype(dtype)
        rows = atrous_impulses_1d(self.shape[0], self.n_scales, wavelet)[1:]
        cols = atrous_impulses_1d(self.shape[1], self.n_scales, wavelet)[1:]
        row_mats = np.array([axis_matrix(u, boundary) for u in rows])
        col_mats = np.array([axis_matrix(v, boundary) for v in cols])
        self._rows = row_mats.astype(self.dtype)  # B_s, s = 1..J
        self._rows_t = np.ascontiguousarray(row_mats.transpose(0, 2, 1)).astype(self.dtype)
        # Right factors stacked so one large product handles every scale at once.
        self._cols_stack_t = np.ascontiguousarray(
            col_mats.reshape(-1, self.shape[1]).T).astype(self.dtype)   # (N1, J*N1)
        self._cols_stack = np.ascontiguousarray(col_mats.reshape(-1, self.shape[1])
                                                ).astype(self.dtype)     # (J*N1, N1)
        # -B_J^T: the last band of the adjoint needs -Z_{J-1}; negating the (exact) matrix
        # instead of the data saves a pass and gives bit-identical products.
        self._last_rows_t_neg = -self._rows_t[-1]

    @property
    def filters(self) -> np.ndarray:
        r"""The detail filters :math:`\varphi_j` (see :func:`atrous_filters`)."""
        return atrous_filters(self.shape, self.n_scales, self.wavelet)

    def smooth(self, x: np.ndarray) -> np.ndarray:
        """Return ``S_s x`` for ``s = 1..J`` stacked on axis 1: shape ``(m, J, N0, N1)``."""
        m = x.shape[0]
        n0, n1 = self.shape
        right = (x.reshape(m * n0, n1) @ self._cols_stack_t).reshape(m, n0, self.n_bands, n1)
        out = np.empty((m, self.n_bands, n0, n1), dtype=self.dtype)
        for s in range(self.n_bands):
            np.matmul(self._rows[s], right[:, :, s, :], out=out[:, s])
        return out

    def work_shape(self, m: int) -> tuple[int, int, int, int]:
        """Shape of the scratch array :meth:`op_into` and :meth:`adj_into` need for m stamps."""
        return (m, self.shape[0], self.n_bands, self.shape[1])

    def op(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        r"""Return :math:`\Phi(X)`, shape ``(m, J, N0, N1)``, for ``x`` of shape ``(m, N0, N1)``."""
        x = np.ascontiguousarray(x, dtype=self.dtype)
        m = x.shape[0]
        if out is None:
            out = np.empty((m, self.n_bands) + self.shape, dtype=self.dtype)
        return self.op_into(x, out, np.empty(self.work_shape(m), dtype=self.dtype))

    def smooth_into(self, x: np.ndarray, out: np.ndarray, work: np.ndarray) -> np.ndarray:
        r"""Write :math:`S_s X`, ``s = 1..J``, into ``out`` (shape ``(m, J, N0, N1)``).

        The products of :meth:`op_into` without its band differences, for a caller that
        forms :math:`\Phi(X)_j = S_j X - S_{j+1} X` (:math:`S_0 = I`) inside its own pass.
        """
        m = x.shape[0]
        n0, n1 = self.shape
        np.matmul(x.reshape(m * n0, n1), self._cols_stack_t,
                  out=work.reshape(m * n0, self.n_bands * n1))
        for s in range(self.n_bands):
            np.matmul(self._rows[s], work[:, :, s, :], out=out[:, s])
        return out

    def op_into(self, x: np.ndarray, out: np.ndarray, work: np.ndarray) -> np.ndarray:
        r"""Write :math:`\Phi(X)` into ``out`` using ``work`` (shape :meth:`work_shape`).

        ``x`` must be C-contiguous with the working dtype; nothing is allocated.
        """
        self.smooth_into(x, out, work)
        # out[:, s] holds S_{s+1} x; difference in place from the last band down:
        # phi_j = S_j x - S_{j+1} x, phi_0 = x - S_1 x.
        for j in range(self.n_bands - 1, 0, -1):
            np.subtract(out[:, j - 1], out[:, j], out=out[:, j])
        np.subtract(x, out[:, 0], out=out[:, 0])
        return out

    def adj(self, z: np.ndarray) -> np.ndarray:
        r"""Return :math:`\Phi^T(Z)`, shape ``(m, N0, N1)``, for ``z`` of shape (m, J, N0, N1)."""
        z = np.asarray(z, dtype=self.dtype)
        m = z.shape[0]
        out = np.empty((m,) + self.shape, dtype=self.dtype)
        return self.adj_into(z, out, np.empty(self.work_shape(m), dtype=self.dtype),
                             np.empty((m,) + self.shape, dtype=self.dtype))

    def adj_of_differences_into(self, diffs: np.ndarray, last: np.ndarray, out: np.ndarray,
                                work: np.ndarray) -> np.ndarray:
        r"""Write :math:`\Phi^T(Z) - Z_0` into ``out`` from the band differences of ``Z``.

        ``diffs`` (``(m, J - 1, N0, N1)``) holds :math:`Z_{s+1} - Z_s` and ``last`` is
        :math:`Z_{J-1}`: the products of :meth:`adj_into` without its passes, for a caller
        that forms the differences, and adds :math:`Z_0`, inside passes of its own.
        """
        m = last.shape[0]
        n0, n1 = self.shape
        for s in range(self.n_bands - 1):
            np.matmul(self._rows_t[s], diffs[:, s], out=work[:, :, s, :])
        np.matmul(self._last_rows_t_neg, last, out=work[:, :, self.n_bands - 1, :])
        np.matmul(work.reshape(m * n0, self.n_bands * n1), self._cols_stack,
                  out=out.reshape(m * n0, n1))
        return out

    def adj_into(self, z: np.ndarray, out: np.ndarray, work: np.ndarray,
                 diff: np.ndarray) -> np.ndarray:
        r"""Write :math:`\Phi^T(Z)` into ``out`` (C-contiguous) using ``work`` and ``diff``.

        ``work`` has shape :meth:`work_shape`, ``diff`` the shape of ``out``; nothing is
        allocated.
        """
        m = z.shape[0]
        n0, n1 = self.shape
        last = self.n_bands - 1
        for s in range(last):
            np.subtract(z[:, s + 1], z[:, s], out=diff)
            np.matmul(self._rows_t[s], diff, out=work[:, :, s, :])
        np.matmul(self._last_rows_t_neg, z[:, last], out=work[:, :, last, :])
        np.matmul(work.reshape(m * n0, self.n_bands * n1), self._cols_stack,
                  out=out.reshape(m * n0, n1))
        out += z[:, 0]
        return out
