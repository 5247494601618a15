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
so is ``Φ x`` within a call, so an iteration costs one forward and one inverse FFT, one Φ
and one Φᵀ — each a few large matrix products — plus elementwise work.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import scipy.fft as sfft

from galdecon.operators.convolution import Convolution, rfft_weights
from galdecon.operators.prox import apply_svt
from galdecon.problem import Problem


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


class FourierFidelity:
    """½‖Y − HX‖² with the periodic boundary, carried as the spectrum of X."""

    def __init__(self, conv: Convolution, images: np.ndarray):
        self.shape = conv.shape
        self.transfer = conv.transfer
        self.image_spec = sfft.rfft2(images)
        self.gain = (conv.transfer * conv.transfer.conj()).real.astype(images.dtype)
        self.hty_spec = conv.transfer.conj() * self.image_spec
        self.parseval = rfft_weights(self.shape[1]) / (self.shape[0] * self.shape[1])

    def start(self, x):
        return sfft.rfft2(x)

    def gradient(self, spec):
        grad = self.gain * spec
        grad -= self.hty_spec
        return sfft.irfft2(grad, s=self.shape)

    def advance(self, spec, x_tilde, rho):
        new = sfft.rfft2(x_tilde)
        new -= spec
        new *= rho
        new += spec
        return new

    def cost(self, spec) -> float:
        resid = self.image_spec - self.transfer * spec
        power = resid.real.astype(np.float64) ** 2 + resid.imag.astype(np.float64) ** 2
        return 0.5 * float(np.tensordot(power, self.parseval, axes=([-1], [0])).sum())


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


def _l1_weighted(weights: np.ndarray, coeffs: np.ndarray) -> float:
    """Return Σ |W ⊙ Φx| with W per band (m, J) or per pixel."""
    mags = np.abs(coeffs)
    if weights.ndim == 2:
        return float(np.sum(weights * mags.sum(axis=(2, 3), dtype=np.float64)))
    return float(np.sum(weights * mags, dtype=np.float64))


def band_weights(weights: np.ndarray, dtype) -> np.ndarray:
    """Return weights shaped to broadcast against (m, J, N0, N1)."""
    weights = np.asarray(weights, dtype=dtype)
    return weights[:, :, None, None] if weights.ndim == 2 else weights


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
    """
    ops = operators(block, problem)
    fidelity, wavelet = ops["fidelity"], ops["wavelet"]
    s = problem.settings
    tau, sigma, rho = problem.tau, problem.sigma, s.relax
    weights = band_weights(block.weights, problem.dtype)
    costs = np.full(n_iter, np.nan)
    if cost_mask is None:
        cost_mask = np.ones(n_iter, dtype=bool)
    x, y = block.primal, block.dual
    carried = fidelity.start(x)
    phi_x = wavelet.op(x)
    for it in range(n_iter):
        step = fidelity.gradient(carried)
        step += wavelet.adj(y)
        step *= -tau
        step += x
        x_tilde = np.maximum(step, 0, out=step) if s.positivity else step
        phi_tilde = wavelet.op(x_tilde)
        dual = phi_tilde * 2
        dual -= phi_x
        dual *= sigma
        dual += y
        np.clip(dual, -weights, weights, out=dual)
        y = _relax(dual, y, rho)
        phi_x = _relax(phi_tilde, phi_x, rho)
        carried = fidelity.advance(carried, x_tilde, rho)
        x = _relax(x_tilde, x, rho)
        if cost_mask[it]:
            costs[it] = fidelity.cost(carried) + _l1_weighted(block.weights, phi_x)
    return block.evolve(primal=x, dual=y), costs


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
