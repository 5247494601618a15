r"""One Condat–Vũ step on a block, the block's cost, the convergence test, reweighting.

Nothing here knows about engines: every function takes a :class:`Block` (a contiguous
slice of the galaxy stack with its own data, weights and solver state) and returns a new
one, leaving its input untouched, so an engine can keep the previous state as a snapshot.

The iteration (ALGORITHM.md §5), for :math:`L = \Phi` (sparse) or :math:`L = I` (low rank)::

    x̃ = max(x − τ Hᵀ(H x − Y) − τ Lᵀ y, 0)
    ỹ = y + σ L(2x̃ − x)
    ŷ = ỹ − σ prox_{K/σ}(ỹ/σ)       sparse: clip(ỹ, −W, W); low rank: ỹ − SVT(ỹ, λ)
    x ← ρ x̃ + (1−ρ) x ;  y ← ρ ŷ + (1−ρ) y

Implementation notes (why it is fast): ``H x`` is carried between iterations by
linearity (its Fourier spectrum for the periodic boundary, the residual for ``zero``), and
so is ``Φ x`` within a call, so an iteration costs one forward and one inverse 2-D DFT, one
Φ and one Φᵀ — each a few matrix products — plus about a dozen elementwise passes.
Sparse mode is separable, so :func:`sparse_iterate` runs all its iterations on a chunk of a
few dozen galaxies before moving to the next (the chunk's state stays in cache), in
per-thread scratch arrays that are reused from call to call: on 41×41 stamps a fresh
megabyte-sized temporary costs about as much in page faults as the arithmetic done on it.
"""

from __future__ import annotations

import copy
import math
import threading
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.fft as sfft
from scipy.linalg import blas

from galdecon.core.operators.convolution import Convolution, DenseRFFT2, rfft_weights
from galdecon.core.operators.prox import apply_svt
from galdecon.core.problem import Problem


@dataclass
class Block:
    """A contiguous slice of the stack: static data, weights and solver state.

    Attributes
    ----------
    start : int
        Index of the block's first galaxy in the whole stack.
    images : ndarray, shape (m, N0, N1)
        Observed stamps, working dtype.
    psfs : ndarray, shape (m, k0, k1) or (k0, k1)
        One PSF per stamp, or one shared PSF.
    primal : ndarray, shape (m, N0, N1)
        Current estimate x.
    dual : ndarray, shape (m, J, N0, N1) (sparse) or (m, N0, N1) (low rank)
        Current dual variable y.
    weights : ndarray or None
        Sparse weights W, shape (m, J) or, after reweighting, (m, J, N0, N1).
    weights0 : ndarray or None
        Initial sparse weights W⁰, shape (m, J).
    pending : tuple or None
        Low rank only: (x̃, ỹ) between the two halves of an iteration.
    """

    start: int
    images: np.ndarray
    psfs: np.ndarray
    primal: np.ndarray
    dual: np.ndarray
    weights: np.ndarray | None = None
    weights0: np.ndarray | None = None
    pending: tuple | None = None
    _ops: dict = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_ops"] = {}  # derived operators are rebuilt where the block lands
        return state

    @property
    def size(self) -> int:
        """Number of galaxies in the block."""
        return int(self.images.shape[0])

    @property
    def stop(self) -> int:
        """Index one past the block's last galaxy."""
        return self.start + self.size

    def evolve(self, **changes) -> Block:
        """Return a new block sharing the static data (and cached operators)."""
        return replace(self, _ops=self._ops, **changes)


#: Galaxies per chunk in :func:`sparse_iterate`: large enough that the per-call overhead
#: of numpy and BLAS is small, small enough that a chunk's state (~0.4 MB per float64
#: galaxy with scratch) stays in the last-level cache.
CHUNK_SIZE = 32

#: Largest stamp side for which the DFT is done as dense matrix products (above it the
#: FFT's n log n wins and scipy.fft is used).
DENSE_DFT_MAX = 48

_scratch = threading.local()


def scratch(name: str, shape, dtype) -> np.ndarray:
    """Return this thread's reusable array ``name`` with the given shape and dtype.

    The buffer only grows; callers get a C-contiguous prefix view. Contents are undefined.
    Each name is one role, so no two live arrays of one iteration share memory.
    """
    arrays = getattr(_scratch, "arrays", None)
    if arrays is None:
        arrays = _scratch.arrays = {}
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    buffer = arrays.get(name)
    if buffer is None or buffer.dtype != dtype or buffer.size < size:
        buffer = arrays[name] = np.empty(size, dtype=dtype)
    return buffer[:size].reshape(shape)


def _add_scaled(target: np.ndarray, values: np.ndarray, scale: float) -> None:
    """``target += scale * values`` in one pass (BLAS axpy); both C-contiguous, one dtype."""
    flat = target.reshape(-1)
    if flat.dtype.kind == "c":
        flat, values = flat.view(flat.real.dtype), values.view(flat.real.dtype)
    axpy = blas.daxpy if flat.dtype == np.float64 else blas.saxpy
    out = axpy(values.reshape(-1), flat, a=scale)
    if out is not flat:  # pragma: no cover - f2py copies only non-contiguous input
        np.copyto(flat, out)


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
        return DenseRFFT2(shape, dtype)
    return _SciPyRFFT2(shape)


class FourierFidelity:
    """½‖Y − HX‖² with the periodic boundary, carried as the spectrum of X."""

    def __init__(self, conv: Convolution, images: np.ndarray):
        self.shape = conv.shape
        self.dtype = np.dtype(images.dtype)
        self.transfer = conv.transfer
        self.image_spec = sfft.rfft2(images)
        self.gain = (conv.transfer * conv.transfer.conj()).real.astype(images.dtype)
        self.hty_spec = conv.transfer.conj() * self.image_spec
        self.parseval = rfft_weights(self.shape[1]) / (self.shape[0] * self.shape[1])
        self.dft = _real_dft(self.shape, self.dtype)
        # Real (re, im)-interleaved forms for the in-place sparse loop.
        self._gain_pairs = np.repeat(self.gain, 2, axis=-1)
        self._parseval_pairs = np.repeat(self.parseval, 2).astype(self.dtype)

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
        pairs = grad.view(self.dtype)
        np.multiply(spec.view(self.dtype), self._gain_pairs, out=pairs)
        pairs -= self.hty_spec.view(self.dtype)
        self.dft.inverse(grad, out, scratch("fidelity.spectrum_b", spec.shape, spec.dtype))

    def advance_into(self, spec, x_tilde, rho) -> None:
        fresh = self._forward(x_tilde, scratch("fidelity.spectrum_b", spec.shape, spec.dtype))
        fresh -= spec
        _add_scaled(spec, fresh, rho)

    def cost_of(self, spec) -> float:
        resid = scratch("fidelity.spectrum_a", spec.shape, spec.dtype)
        np.multiply(self.transfer, spec, out=resid)
        resid -= self.image_spec
        power = resid.view(self.dtype)
        power *= power
        rows = power.reshape(-1, power.shape[-1]) @ self._parseval_pairs
        return 0.5 * float(np.sum(rows, dtype=np.float64))


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


def operators(block: Block, problem: Problem) -> dict:
    """Return (and cache on the block) the operators derived from its data."""
    s = problem.settings
    key = (s.boundary, s.wavelet, s.n_scales, s.dtype, problem.shape)
    ops = block._ops
    if ops.get("key") != key:
        ops.clear()
        conv = Convolution(block.psfs, problem.shape, s.boundary, problem.dtype)
        fidelity = (FourierFidelity if s.boundary == "periodic" else PixelFidelity)(
            conv, block.images)
        ops.update(key=key, conv=conv, fidelity=fidelity, wavelet=problem.wavelet())
    return ops


def _relax(new: np.ndarray, old: np.ndarray, rho: float) -> np.ndarray:
    """Return ρ·new + (1−ρ)·old, overwriting ``new``."""
    new -= old
    new *= rho
    new += old
    return new


def sparse_iterate(block: Block, problem: Problem, n_iter: int,
                   cost_mask=None) -> tuple[Block, np.ndarray]:
    """Run ``n_iter`` sparse Condat–Vũ iterations on a block.

    Parameters
    ----------
    block : Block
    problem : Problem
    n_iter : int
        Number of iterations to run.
    cost_mask : sequence of bool, optional
        Which of those iterations need the cost (all when omitted).

    Returns
    -------
    block : Block
        A new block with the new primal and dual (the input block is unchanged).
    costs : ndarray, shape (n_iter,)
        The block's share of the cost at the relaxed x after each iteration (NaN where
        ``cost_mask`` is false).

    Notes
    -----
    Every galaxy's iterates depend only on its own data (ALGORITHM.md §5), so the block is
    worked through in chunks of :data:`CHUNK_SIZE` galaxies, each running all ``n_iter``
    iterations while its state is in cache; the costs are the sums over the chunks.
    """
    ops = operators(block, problem)
    dtype = problem.dtype
    mask = (np.ones(n_iter, dtype=bool) if cost_mask is None
            else np.asarray(cost_mask, dtype=bool))
    costs = np.where(mask, 0.0, np.nan)
    primal = np.array(block.primal, dtype=dtype)  # the new block's arrays
    dual = np.array(block.dual, dtype=dtype)
    for lo in range(0, block.size, CHUNK_SIZE):
        hi = min(lo + CHUNK_SIZE, block.size)
        _sparse_chunk(ops["fidelity"].part(lo, hi), ops["wavelet"], primal[lo:hi],
                      dual[lo:hi], block.weights[lo:hi], problem, n_iter, mask, costs)
    return block.evolve(primal=primal, dual=dual), costs


def _sparse_chunk(fidelity, wavelet, x, y, weights, problem, n_iter, mask, costs) -> None:
    """Run the iterations on one chunk, updating ``x`` and ``y`` in place, adding to ``costs``.

    Per iteration: one inverse and one forward DFT, one Φᵀ, one Φ, and in-place passes;
    ``z += a·w`` is one BLAS axpy pass. Scratch arrays are this thread's, reused.
    """
    settings = problem.settings
    tau, sigma, rho = problem.tau, problem.sigma, settings.relax
    dtype = x.dtype
    primal_shape, dual_shape = x.shape, y.shape
    work = scratch("wavelet.work", wavelet.work_shape(x.shape[0]), dtype)
    diff = scratch("wavelet.diff", primal_shape, dtype)
    grad = scratch("sparse.grad", primal_shape, dtype)
    x_tilde = scratch("sparse.x_tilde", primal_shape, dtype)
    phi_x = scratch("sparse.phi_x", dual_shape, dtype)
    phi_tilde = scratch("sparse.phi_tilde", dual_shape, dtype)
    y_tilde = scratch("sparse.y_tilde", dual_shape, dtype)
    # Full-size bounds: numpy's min/max run twice as fast on two arrays as with a
    # broadcast operand, and np.clip is slower still.
    upper = scratch("sparse.upper", dual_shape, dtype)
    lower = scratch("sparse.lower", dual_shape, dtype)
    np.copyto(upper, weights[:, :, None, None] if weights.ndim == 2 else weights,
              casting="same_kind")
    np.negative(upper, out=lower)
    if settings.positivity:  # one zero stamp: max with a scalar 0 is twice as slow
        zeros = scratch("sparse.zeros", (1,) + primal_shape[1:], dtype)
        zeros.fill(0)
    carried = fidelity.carried_like(x)
    fidelity.start_into(x, carried)
    wavelet.op_into(x, phi_x, work)
    for it in range(n_iter):
        # x̃ = max(x − τ(Hᵀ(Hx − Y) + Φᵀy), 0)
        fidelity.gradient_into(carried, grad)
        wavelet.adj_into(y, x_tilde, work, diff)
        x_tilde += grad
        x_tilde *= -tau
        x_tilde += x
        if settings.positivity:
            np.maximum(x_tilde, zeros, out=x_tilde)
        # ỹ = y + σ(2Φx̃ − Φx), ŷ = clip(ỹ, −W, W)
        wavelet.op_into(x_tilde, phi_tilde, work)
        np.multiply(phi_tilde, 2 * sigma, out=y_tilde)
        _add_scaled(y_tilde, phi_x, -sigma)
        y_tilde += y
        np.minimum(y_tilde, upper, out=y_tilde)
        np.maximum(y_tilde, lower, out=y_tilde)
        # relaxation: v ← v + ρ(ṽ − v) for y, Φx, the carried Hx and x
        y_tilde -= y
        _add_scaled(y, y_tilde, rho)
        phi_tilde -= phi_x
        _add_scaled(phi_x, phi_tilde, rho)
        fidelity.advance_into(carried, x_tilde, rho)
        x_tilde -= x
        _add_scaled(x, x_tilde, rho)
        if mask[it]:
            costs[it] += fidelity.cost_of(carried) + _l1_weighted_into(upper, phi_x, y_tilde)


def _l1_weighted_into(weights: np.ndarray, coeffs: np.ndarray, work: np.ndarray) -> float:
    """Return Σ |W ⊙ Φx| for full-size weights, using ``work`` (float64 accumulation)."""
    np.abs(coeffs, out=work)
    if work.dtype == np.float64:
        return float(np.vdot(weights, work))
    work *= weights
    return float(np.sum(work.sum(axis=(2, 3)), dtype=np.float64))


def lowr_begin(block: Block, problem: Problem) -> Block:
    """First half of a low-rank iteration: x̃ and ỹ = y + σ(2x̃ − x), kept as ``pending``."""
    ops = operators(block, problem)
    fidelity = ops["fidelity"]
    tau, sigma = problem.tau, problem.sigma
    x, y = block.primal, block.dual
    step = fidelity.gradient(fidelity.start(x))
    step += y
    step *= -tau
    step += x
    x_tilde = np.maximum(step, 0, out=step) if problem.settings.positivity else step
    dual = x_tilde * 2
    dual -= x
    dual *= sigma
    dual += y
    return block.evolve(pending=(x_tilde, dual))


def lowr_finish(block: Block, problem: Problem, basis: np.ndarray, scale: np.ndarray,
                want_cost: bool) -> tuple[Block, float]:
    """Second half: ŷ = ỹ − SVT(ỹ) with the global projector, then relaxation.

    Returns the new block and its data-fidelity share of the cost at the relaxed x (NaN
    unless ``want_cost``); the nuclear norm is global and added by the driver.
    """
    x_tilde, dual = block.pending
    rho = problem.settings.relax
    dual = dual - apply_svt(dual, basis, scale)
    y = _relax(dual, block.dual, rho)
    x = _relax(x_tilde.copy(), block.primal, rho)
    cost = np.nan
    if want_cost:
        fidelity = operators(block, problem)["fidelity"]
        cost = fidelity.cost(fidelity.start(x))
    return block.evolve(primal=x, dual=y, pending=None), cost


def reweight(block: Block, problem: Problem) -> Block:
    r"""Candès–Wakin–Boyd reweighting: W ← W ⊙ 1/(1 + |Φ(X)|/W⁰) (cumulative)."""
    coeffs = np.abs(operators(block, problem)["wavelet"].op(block.primal)).astype(np.float64)
    w0 = block.weights0[:, :, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(w0 > 0, 1.0 / (1.0 + coeffs / w0), 1.0)
    current = block.weights
    if current.ndim == 2:
        current = current[:, :, None, None]
    return block.evolve(weights=current * factor)


class ConvergenceTest:
    """The costObj convergence test (ALGORITHM.md §7).

    The counter starts at 1; a cost is taken when ``counter % window == 0``; with four
    costs held, ``t1 = mean(last 2)``, ``t2 = mean(first 2)`` and the run has converged if
    ``|t1 − t2| / |t1| <= tolerance``; the list is then cleared. The state persists across
    reweighting rounds.
    """

    def __init__(self, tolerance: float, window: int = 1):
        self.tolerance = float(tolerance)
        self.window = int(window)
        self.counter = 1
        self.costs: list[float] = []
        self.last_test: float | None = None

    def wants_cost(self, ahead: int = 0) -> bool:
        """Whether the iteration ``ahead`` steps from now computes a cost."""
        return (self.counter + ahead) % self.window == 0

    def cost_mask(self, n_iter: int) -> np.ndarray:
        """Which of the next ``n_iter`` iterations compute a cost."""
        return np.array([self.wants_cost(j) for j in range(n_iter)], dtype=bool)

    def update(self, cost: float) -> bool:
        """Record one iteration (with its cost when one was due); return True on convergence."""
        converged = False
        if self.counter % self.window == 0:
            self.costs.append(float(cost))
            if len(self.costs) == 4:
                t1 = np.mean(self.costs[2:])
                t2 = np.mean(self.costs[:2])
                self.last_test = float(abs(t1 - t2) / abs(t1)) if t1 != 0 else 0.0
                converged = self.last_test <= self.tolerance
                self.costs = []
        self.counter += 1
        return converged

    def state(self) -> dict:
        """A JSON-friendly copy of the state."""
        return {"counter": self.counter, "costs": list(self.costs), "last_test": self.last_test}

    def copy(self) -> ConvergenceTest:
        """An independent copy."""
        other = ConvergenceTest(self.tolerance, self.window)
        other.counter, other.costs, other.last_test = self.counter, list(self.costs), self.last_test
        return other
