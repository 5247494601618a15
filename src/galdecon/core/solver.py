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

from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np

from galdecon.core import kernels
from galdecon.core.fidelity import FourierFidelity, PixelFidelity, WeightedFidelity
from galdecon.core.operators.convolution import Convolution
from galdecon.core.operators.prox import apply_svt
from galdecon.core.operators.wavelet import shared_wavelet
from galdecon.core.problem import Problem, sparse_weights
from galdecon.core.scratch import scratch


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
    pending : ndarray or None
        Low rank only: ỹ of the iteration begun, shape (m, N0, N1), until the global
        threshold finishes it (:func:`lowr_step`).
    pixel_weights : ndarray or None
        Per-pixel inverse variances, shape (m, N0, N1), 0 where masked (``--weights``);
        None: every pixel weighs the same.
    """

    start: int
    images: np.ndarray
    psfs: np.ndarray
    primal: np.ndarray
    dual: np.ndarray
    weights: np.ndarray | None = None
    weights0: np.ndarray | None = None
    pending: np.ndarray | None = None
    pixel_weights: np.ndarray | None = None
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

def operators(block: Block, problem: Problem) -> dict:
    """Return (and cache on the block) the operators derived from its data."""
    s = problem.settings
    key = (s.boundary, s.wavelet, s.n_scales, s.dtype, problem.shape)
    ops = block._ops
    if ops.get("key") != key:
        ops.clear()
        conv = Convolution(block.psfs, problem.shape, s.boundary, problem.dtype)
        if block.pixel_weights is not None:
            fidelity = WeightedFidelity(conv, block.images, block.pixel_weights)
        else:
            fidelity = (FourierFidelity if s.boundary == "periodic" else PixelFidelity)(
                conv, block.images)
        ops.update(key=key, conv=conv, fidelity=fidelity,
                   wavelet=shared_wavelet(problem.shape, s.n_scales, s.wavelet, s.boundary,
                                          problem.dtype))
    return ops


def _same_data(a, b) -> bool:
    return a is b or (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
                      and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b))


class OperatorCache:
    """Operators built from blocks' static data, kept across copies of the blocks (LRU).

    A block pickles without its derived operators (PSF transfer functions, image spectra,
    wavelet matrices), and rebuilding them costs about a fifth of an iteration. A process
    that receives the same block again and again (a Spark worker, map after map) keeps
    them here: :meth:`remember` after a step, :meth:`reuse` on the next copy. They are
    reused only if the block's images and PSFs equal those they were built from, so a
    stale entry can never be used; :func:`operators` still checks its settings key.

    Parameters
    ----------
    max_bytes : int
        Rough bound on what the entries hold (the oldest are evicted beyond it).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict = OrderedDict()  # key -> (images, psfs, weights, ops)

    def __len__(self) -> int:
        return len(self._entries)

    def reuse(self, block: Block, key) -> None:
        """Give ``block`` (fresh, without operators) those remembered under ``key``."""
        entry = self._entries.get(key)
        if entry is not None and not block._ops:
            images, psfs, weights, ops = entry
            if _same_data(images, block.images) and _same_data(psfs, block.psfs) \
                    and _same_data(weights, block.pixel_weights):
                block._ops = ops
                self._entries.move_to_end(key)

    def remember(self, block: Block, key) -> None:
        """Keep ``block``'s operators (if built) under ``key``, evicting the oldest."""
        if not block._ops:
            return
        self._entries[key] = (block.images, block.psfs, block.pixel_weights, block._ops)
        self._entries.move_to_end(key)
        per_entry = self.entry_bytes(block)
        while len(self._entries) > 1 and len(self._entries) * per_entry > self.max_bytes:
            self._entries.popitem(last=False)

    @staticmethod
    def entry_bytes(block: Block) -> int:
        """Rough bytes of a block's entry: its static arrays and a few spectra as large."""
        return 6 * block.images.nbytes + np.asarray(block.psfs).nbytes


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

    Per iteration: one inverse and one forward DFT, one Φᵀ, the J smoothings of Φ, and
    three fused passes (:mod:`galdecon.core.kernels`): the primal step, the dual step with
    both relaxations, the primal relaxation (and the l1 cost when due). Scratch arrays are this
    thread's, reused.
    """
    settings = problem.settings
    dtype = x.dtype
    tau, sigma, rho = (dtype.type(v) for v in (problem.tau, problem.sigma, settings.relax))
    m, n_bands = y.shape[0], y.shape[1]
    primal_shape, dual_shape = x.shape, y.shape
    work = scratch("wavelet.work", wavelet.work_shape(m), dtype)
    diffs = scratch("sparse.dual_diffs", (m, n_bands - 1) + primal_shape[1:], dtype)
    grad = scratch("sparse.grad", primal_shape, dtype)
    x_tilde = scratch("sparse.x_tilde", primal_shape, dtype)
    phi_x = scratch("sparse.phi_x", dual_shape, dtype)
    smooth = scratch("sparse.smooth", dual_shape, dtype)
    upper = scratch("sparse.upper", dual_shape, dtype)  # full-size W: one load per value
    np.copyto(upper, weights[:, :, None, None] if weights.ndim == 2 else weights,
              casting="same_kind")
    positivity = bool(settings.positivity)
    # Flat (m, J, P) and (m, P) views for the fused passes.
    flat_dual = (m, n_bands, -1)
    y3, phi_x3, smooth3, upper3 = (a.reshape(flat_dual) for a in (y, phi_x, smooth, upper))
    x2, x_tilde2, grad2 = (a.reshape(m, -1) for a in (x, x_tilde, grad))
    diffs3 = diffs.reshape(m, n_bands - 1, -1)
    x1, x_tilde1 = x.reshape(-1), x_tilde.reshape(-1)
    carried = fidelity.carried_like(x)
    fidelity.start_into(x, carried)
    wavelet.op_into(x, phi_x, work)
    np.subtract(y[:, 1:], y[:, :-1], out=diffs)  # then kept by the dual step
    for it in range(n_iter):
        # x̃ = max(x − τ(Hᵀ(Hx − Y) + Φᵀy), 0)
        fidelity.gradient_into(carried, grad)
        wavelet.adj_of_differences_into(diffs, y[:, n_bands - 1], x_tilde, work)
        kernels.primal_step(x2, x_tilde2, grad2, y3, tau, positivity)
        # ỹ = y + σ(2Φx̃ − Φx), ŷ = clip(ỹ, −W, W), y and Φx relaxed, y's differences
        wavelet.smooth_into(x_tilde, smooth, work)
        kernels.dual_step(y3, phi_x3, smooth3, x_tilde2, upper3, sigma, rho, diffs3)
        # relaxation of the carried Hx and of x
        fidelity.advance_into(carried, x_tilde, rho)
        kernels.relax(x1, x_tilde1, rho)
        if mask[it]:
            costs[it] += fidelity.cost_of(carried) + kernels.weighted_l1(upper3, phi_x3)


def lowr_step(block: Block, problem: Problem, factors=None, begin: bool = True,
              want_cost: bool = False) -> tuple[Block, float]:
    """One low-rank synchronisation on a block: finish iteration k, then begin k + 1.

    Between synchronisations a block holds x_k (``primal``, final), y_{k−1} (``dual``) and
    ỹ_k (``pending``): only the SVT of ỹ_k is global. Given its ``factors`` (``(basis,
    scale)`` from the previous synchronisation) the iteration is finished,
    ŷ = ỹ_k − SVT(ỹ_k) and y_k = ρŷ + (1−ρ)y_{k−1}. With ``begin`` the next one starts,
    x̃ = max(x_k − τ(Hᵀ(Hx_k − Y) + y_k), 0), ỹ_{k+1} = y_k + σ(2x̃ − x_k) and
    x_{k+1} = ρx̃ + (1−ρ)x_k: the relaxed primal needs no global step, so its cost is
    known at the same synchronisation as ỹ_{k+1}'s factors. A settled block
    (``pending`` None: after the set-up, or finished without ``begin``) only begins.

    Returns
    -------
    block : Block
        The new block (the input is unchanged).
    cost : float
        With ``begin`` and ``want_cost``: the data-fidelity share of the cost at
        x_{k+1} (the nuclear norm is global and added by the driver); NaN otherwise.
    """
    rho = problem.settings.relax
    if block.pending is not None:
        if factors is None:
            raise ValueError("a pending low-rank block needs the SVT factors to finish")
        basis, scale = factors
        y_tilde = block.pending
        dual = y_tilde - apply_svt(y_tilde, basis, scale)
        block = block.evolve(dual=_relax(dual, block.dual, rho), pending=None)
    if not begin:
        return block, np.nan
    fidelity = operators(block, problem)["fidelity"]
    tau, sigma = problem.tau, problem.sigma
    x, y = block.primal, block.dual
    step = fidelity.gradient(fidelity.start(x))
    step += y
    step *= -tau
    step += x
    x_tilde = np.maximum(step, 0, out=step) if problem.settings.positivity else step
    y_tilde = x_tilde * 2
    y_tilde -= x
    y_tilde *= sigma
    y_tilde += y
    primal = _relax(x_tilde, x, rho)  # x̃ is not needed once ỹ is formed
    cost = fidelity.cost(fidelity.start(primal)) if want_cost else np.nan
    return block.evolve(primal=primal, pending=y_tilde), cost


def reweight(block: Block, problem: Problem) -> Block:
    r"""Candès–Wakin–Boyd reweighting: W ← W ⊙ 1/(1 + |Φ(X)|/W⁰) (cumulative).

    Galaxies whose estimated SNR (:func:`galaxy_snr`) is below the settings'
    ``reweight_min_snr`` keep their weights: at SNR ≈ 1 the coefficients the first round
    kept are as much noise as galaxy, and lowering their thresholds fits the noise
    (docs/science.md: 0.0610 → 0.0546 median pixel error at SNR 1, n = 1,000; unchanged
    at SNR 3 and 10). ``reweight_min_snr = 0`` reweights every galaxy, as the reference.
    """
    coeffs = np.abs(operators(block, problem)["wavelet"].op(block.primal)).astype(np.float64)
    w0 = block.weights0[:, :, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(w0 > 0, 1.0 / (1.0 + coeffs / w0), 1.0)
    gate = problem.settings.reweight_min_snr
    if gate > 0:
        faint = galaxy_snr(block, problem) < gate
        factor[faint] = 1.0
    current = block.weights
    if current.ndim == 2:
        current = current[:, :, None, None]
    return block.evolve(weights=current * factor)


def galaxy_snr(block: Block, problem: Problem) -> np.ndarray:
    r"""Each galaxy's estimated SNR, :math:`\mathrm{std}(H x_i)/σ_i`, from its estimate.

    The simulation's convention (``galdecon simulate``).
    :math:`σ_i` is read back from the initial weights, :math:`W⁰_{ij} = σ_i k_j
    ‖φ_j ⊛ \mathrm{rot}(h_i)‖`, so that it is whichever σ the run's thresholds use (the
    stack's, per image, or from the pixel weights). Infinite where no scale has a
    threshold (then the reweighting changes nothing anyway).
    """
    unit = sparse_weights(block.psfs, problem.shape, problem.settings, 1.0)
    scale = int(np.argmax(unit.max(axis=0)))  # a scale with k_j > 0, if any
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = block.weights0[:, scale] / unit[:, scale]
    model = operators(block, problem)["conv"].op(block.primal)
    spread = model.reshape(block.size, -1).std(axis=1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sigma > 0, spread / sigma, np.inf)


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


# -- memory footprints (counted by galdecon.run.preflight; nothing is allocated) -----------
def state_bytes(n_images: int, n_pixels: int, itemsize: int, dual_bands: int) -> int:
    """Bytes of the solver state of a stack: the primal (n, N0, N1) and the dual.

    ``dual_bands`` is J in sparse mode (the dual is (n, J, N0, N1)), 1 in low rank.
    """
    return n_images * n_pixels * itemsize * (1 + dual_bands)


def weights_bytes(n_images: int, n_bands: int, n_pixels: int, reweighted: bool) -> int:
    """Bytes of the sparse weights: (n, J) float64, (n, J, N0, N1) once :func:`reweight`."""
    return n_images * n_bands * (n_pixels if reweighted else 1) * 8


def sparse_scratch_bytes(n_images: int, n_bands: int, n_pixels: int, spectrum: int,
                         itemsize: int) -> int:
    """Bytes of one thread's scratch arrays in :func:`sparse_iterate`.

    Per galaxy of a chunk (:data:`CHUNK_SIZE`): 5J + 1 stamp-sized real arrays (Φx, the
    smoothings, the full-size weights and the wavelet's work: J each; y's J − 1 band
    differences; the gradient and x̃) and three spectra (what the fidelity carries and its
    two work arrays).
    """
    chunk = min(n_images, CHUNK_SIZE)
    return chunk * ((5 * n_bands + 1) * n_pixels * itemsize + 3 * spectrum * 2 * itemsize)


def reweight_scratch_bytes(n_in_flight: int, n_bands: int, n_pixels: int,
                           itemsize: int) -> int:
    """Bytes of the temporaries of :func:`reweight` on ``n_in_flight`` galaxies at once."""
    return n_in_flight * n_bands * n_pixels * (2 * itemsize + 3 * 8)


def lowr_pending_bytes(n_images: int, n_pixels: int, itemsize: int) -> int:
    """Bytes of the ỹ every block keeps between two synchronisations (:func:`lowr_step`)."""
    return n_images * n_pixels * itemsize


def lowr_step_scratch_bytes(n_in_flight: int, n_pixels: int, spectrum: int,
                            itemsize: int) -> int:
    """Bytes of the temporaries of :func:`lowr_step` (two stamps and two spectra a galaxy)."""
    return n_in_flight * (2 * n_pixels * itemsize + 2 * spectrum * 2 * itemsize)
