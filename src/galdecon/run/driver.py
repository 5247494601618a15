"""The engine-agnostic loop: set-up reductions, iterate k at a time, convergence, reweighting.

The driver never touches pixels: it asks the engine for small reductions (σ, β, costs,
low-rank factors) and for maps over blocks, and keeps the run's bookkeeping — the
convergence test, the cost history, timings — which becomes the run record.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np

from galdecon.core import lowrank
from galdecon.core.fidelity import weighted_beta
from galdecon.core.noise import (
    block_sigmas,
    block_weight_sigmas,
    check_image_sigmas,
    noise_sigma,
    sigma_summary,
)
from galdecon.core.operators.convolution import Convolution
from galdecon.core.operators.prox import nuclear_norm_of, svt_factors
from galdecon.core.problem import (
    NOISE_METHODS,
    Problem,
    Settings,
    make_problem,
    sparse_weights,
)
from galdecon.core.solver import Block, ConvergenceTest, lowr_step, reweight, sparse_iterate
from galdecon.engines.base import Engine
from galdecon.errors import ConfigError, DivergenceError

log = logging.getLogger("galdecon")


@dataclass
class Position:
    """Where a run is: the round, its iterations, and whether its reweighting is done."""

    round: int = 0
    done_round: int = 0
    converged: bool = False
    reweighted: bool = False
    done_total: int = 0


@dataclass
class History:
    """What happened during a run (JSON-friendly)."""

    cost_iterations: list = field(default_factory=list)
    costs: list = field(default_factory=list)
    iterations_per_round: list = field(default_factory=list)
    converged_per_round: list = field(default_factory=list)
    #: the convergence test's last value in each round (None: it never ran)
    last_test_per_round: list = field(default_factory=list)
    iteration_seconds: list = field(default_factory=list)
    rollbacks: int = 0


def block_beta(block: Block, settings: Settings, shape) -> float:
    """β of one block's PSFs (times the largest relative pixel weight, if weighted)."""
    beta = Convolution(block.psfs, shape, settings.boundary).beta()
    return beta if block.pixel_weights is None else weighted_beta(beta, block.pixel_weights)


def has_pixel_weights(block: Block) -> bool:
    """Whether the run weighs its pixels (``--weights``)."""
    return block.pixel_weights is not None


def galaxy_sigmas(block: Block, problem: Problem, sigmas: np.ndarray | None):
    """The σ the block's sparse weights scale with: its galaxies' of the stack's per-image
    ``sigmas`` (gathered once at set-up), or the problem's one σ."""
    if sigmas is None:
        return problem.noise_sigma
    return sigmas[block.start:block.stop, None]


def init_block(block: Block, problem: Problem,
               sigmas: np.ndarray | None = None) -> tuple[Block, None]:
    """Set the initial primal (ones, or zeros with pixel weights, unless given), dual
    (ones) and sparse weights (from ``sigmas``, one per galaxy of the stack, if given)."""
    s = problem.settings
    dtype = problem.dtype
    m = block.size
    shape = problem.shape
    if block.primal is not None:
        primal = np.array(block.primal, dtype=dtype)
    elif block.pixel_weights is not None:
        # Zeros, not the reference's ones: masked pixels couple a constant offset into the
        # slowest modes of the weighted data term (with 10 % of the pixels masked, ones
        # need over 1,000 iterations to reach the error zeros reach in ~200).
        primal = np.zeros((m,) + shape, dtype=dtype)
    else:
        primal = np.ones((m,) + shape, dtype=dtype)
    images = np.asarray(block.images, dtype=dtype)
    changes = {"primal": primal, "images": images, "pending": None}
    if block.dual is not None:  # a resumed run: the saved state, exactly
        changes["dual"] = np.array(block.dual, dtype=dtype)
        if s.mode == "lowr" and block.pending is not None:  # saved between syncs
            changes["pending"] = np.array(block.pending, dtype=dtype)
        if s.mode == "sparse":
            changes["weights"] = np.array(block.weights)
            changes["weights0"] = np.array(block.weights0)
    elif s.mode == "sparse":
        changes["dual"] = np.ones((m, s.n_bands) + shape, dtype=dtype)
        weights = sparse_weights(block.psfs, shape, s, galaxy_sigmas(block, problem, sigmas))
        weights = np.broadcast_to(weights, (m, s.n_bands)).copy()
        changes["weights"] = weights
        changes["weights0"] = weights.copy()
    else:
        changes["dual"] = np.ones((m,) + shape, dtype=dtype)
    return block.evolve(**changes), None


def _pending_dual(block: Block) -> np.ndarray:
    return block.pending


class Driver:
    """Runs one deconvolution on an engine whose blocks are already scattered.

    Parameters
    ----------
    engine : Engine
    settings : Settings
    n_images : int
    shape : tuple of int
    sync_every : int, optional
        Iterations each block runs between synchronisations (sparse mode). Default
        ``4 * cost_window * engine.sync_multiple`` (4 locally, 16 on Spark). Any value
        stops at the same iteration as 1: when the convergence test fires inside a step,
        the step is replayed from its snapshot up to that iteration.
    progress : callable, optional
        Called as ``progress(done, planned, cost)`` after every synchronisation.
    on_sync : callable, optional
        Called as ``on_sync(driver)`` after every synchronisation, when the engine's
        blocks hold a consistent state (where checkpoints are written).
    stop : StopRequest, optional
        Checked between synchronisations; when set, the run stops at the last complete
        synchronisation and raises :class:`~galdecon.errors.RunInterrupted`.
    """

    def __init__(self, engine: Engine, settings: Settings, n_images: int, shape,
                 sync_every: int | None = None,
                 progress: Callable[[int, int, float], None] | None = None,
                 on_sync: Callable[[Driver], None] | None = None, stop=None):
        self.engine = engine
        self.settings = settings
        self.n_images = int(n_images)
        self.shape = (int(shape[0]), int(shape[1]))
        self.sync_every = (4 * settings.cost_window * engine.sync_multiple if sync_every is None
                           else sync_every)
        if isinstance(self.sync_every, bool) or not isinstance(self.sync_every, numbers.Integral) \
                or self.sync_every < 1:
            raise ConfigError(f"option sync_every={sync_every!r}: expected an integer >= 1")
        self.sync_every = int(self.sync_every)
        self.progress = progress
        self.on_sync = on_sync
        self.stop = stop
        self.history = History()
        self.position = Position()
        self.problem: Problem | None = None
        self.test = ConvergenceTest(settings.tolerance, settings.cost_window)
        self.setup_seconds = 0.0
        self.ready = False  # set up: the blocks hold a complete state
        # Low rank between synchronisations: the SVT factors of the blocks' pending ỹ
        # (the iteration they finish); None when the blocks are settled.
        self._factors = None

    @property
    def pending(self) -> bool:
        """Whether the blocks hold a low-rank iteration begun (``pending`` ỹ, saved too)."""
        return self._factors is not None

    # -- state (checkpoints) ------------------------------------------------------------
    def state(self) -> dict:
        """The driver's side of the run's state (JSON-friendly): all but the blocks."""
        if self.problem is None:
            raise ConfigError("the driver has no state before setup()")
        return {"noise_sigma": self.problem.noise_sigma, "beta": self.problem.beta,
                "sync_every": self.sync_every, "position": asdict(self.position),
                "test": self.test.state(), "history": asdict(self.history),
                "lowr_pending": self.pending, "noise_extra": self.problem.extra}

    def restore_state(self, state: dict) -> None:
        """Take over a saved :meth:`state` (the engine's blocks must hold its arrays)."""
        self.position = Position(**state["position"])
        self.history = History(**state["history"])
        test = state["test"]
        self.test.counter, self.test.costs = int(test["counter"]), list(test["costs"])
        self.test.last_test = test["last_test"]

    # -- set-up -------------------------------------------------------------------------
    def setup(self, saved: dict | None = None) -> Problem:
        """Global reductions (σ, β), the problem, and every block's initial state.

        With ``saved`` (a :meth:`state`), σ and β are the saved ones and the blocks
        keep the saved primal, dual and weights they were scattered with — in low rank
        also the pending ỹ, whose SVT factors are then computed again: from the same
        blocks, the same reduction gives the same factors as the interrupted run's.
        """
        t0 = time.perf_counter()
        s = self.settings
        extra, sigmas = {}, None
        if saved is not None:  # the saved weights hold the σ_i: none are needed
            sigma, beta = saved["noise_sigma"], saved["beta"]
            extra = saved.get("noise_extra") or {}
        else:
            sigma, sigmas = self._noise_level()
            extra = {} if sigmas is None else sigma_summary(sigmas)
            beta = self.engine.reduce(partial(block_beta, settings=s, shape=self.shape), max)
        self.problem = dataclasses.replace(
            make_problem(s, self.n_images, self.shape, sigma, beta), extra=extra)
        self.engine.map(partial(init_block, problem=self.problem, sigmas=sigmas))
        self._factors = None
        if saved is not None:
            self.restore_state(saved)
            if saved.get("lowr_pending"):
                self._factors = self._threshold(lowrank.factor_of(self.engine, _pending_dual))
        self.ready = True
        self.setup_seconds = time.perf_counter() - t0
        log.info("set-up: sigma=%.6g beta=%.8g tau=%.4g sigma_step=%.4g lambda=%.6g (%.2fs)",
                 sigma, beta, self.problem.tau, self.problem.sigma, self.problem.lowr_lambda,
                 self.setup_seconds)
        return self.problem

    def _noise_level(self) -> tuple[float, np.ndarray | None]:
        """σ for the problem, and the per-image σ_i (None with one σ for the stack).

        Per-image estimates — from each stamp's pixels, or from its inverse-variance
        weights when the run has them and no ``noise_est`` — are gathered (one number a
        galaxy) and checked here, then handed to the blocks for their weights. The
        problem's σ is their RMS, the noise level of the whole matrix.
        """
        s = self.settings
        weighted = s.noise_est is None and self.engine.first(has_pixel_weights)
        if s.noise_est in NOISE_METHODS or weighted:
            fn = block_weight_sigmas if weighted else partial(block_sigmas, method=s.noise_est)
            sigmas = self.engine.reduce(fn, lambda a, b: np.concatenate([a, b]))
            if not weighted:  # weights are checked as an input (every stamp has some)
                check_image_sigmas(sigmas, s.noise_est)
            return float(np.sqrt(np.mean(sigmas ** 2))), sigmas
        if s.noise_est is not None:
            return s.noise_est, None
        return noise_sigma(self.engine), None

    # -- iterations ---------------------------------------------------------------------
    def _sparse_step(self, n_iter: int, mask) -> np.ndarray:
        fn = partial(_sparse_task, problem=self.problem, n_iter=n_iter, mask=mask)
        costs = self.engine.map(fn)
        return np.sum(costs, axis=0)

    def _threshold(self, factor) -> tuple:
        """The SVT factors ``(basis, scale)`` of the matrix whose TSQR factor is given."""
        return svt_factors(factor.matrix(), self.problem.lowr_lambda,
                           self.settings.lowr_thresh_type)

    def _lowr_step(self, want_cost: bool) -> float:
        """One low-rank iteration: one map over the blocks and one reduction, together.

        The map finishes the iteration the blocks hold (with the factors of the previous
        synchronisation) and begins the next; its TSQR factors give the next threshold and,
        when the cost is due, the nuclear norm of the relaxed x (:func:`lowr_step`).
        """
        p = self.problem
        fn = partial(_lowr_task, problem=p, factors=self._factors, want_cost=want_cost)
        share = self.engine.map_reduce(fn, lowrank.combine_shares, lowrank.fold_share)
        factors = self._threshold(share.dual)
        cost = np.nan
        if want_cost:
            cost = share.cost + p.lowr_lambda * nuclear_norm_of(share.primal.matrix())
        self._factors = factors  # only once the step is complete (a failure restores)
        return cost

    def settle(self) -> None:
        """Finish the low-rank iteration the blocks hold (their primal and dual final)."""
        if self._factors is not None:
            self.engine.map(partial(_lowr_task, problem=self.problem, factors=self._factors,
                                    begin=False))
            self._factors = None

    def _advance(self, n_iter: int) -> tuple[int, bool]:
        """Run up to ``n_iter`` iterations; return (iterations done, converged)."""
        mask = self.test.cost_mask(n_iter)
        t0 = time.perf_counter()
        snapshot = self.engine.snapshot()
        rollbacks = self.history.rollbacks
        try:
            if self.settings.mode == "sparse":
                costs = self._sparse_step(n_iter, mask)
            else:
                costs = np.array([self._lowr_step(bool(mask[0]))])
        except BaseException:
            self.engine.restore(snapshot)  # the state before the step, unchanged
            self.engine.release(snapshot)
            raise
        elapsed = time.perf_counter() - t0
        self._check_finite(costs, mask, snapshot)
        trial = self.test.copy()
        done, converged = n_iter, False
        for j in range(n_iter):
            if trial.update(costs[j]):
                done, converged = j + 1, True
                break
        if done < n_iter:
            # The test fired inside the step: replay the step from its snapshot up to the
            # iteration where it fired, so the result is that of synchronising every time.
            self.engine.restore(snapshot)
            self.history.rollbacks += 1
            t0 = time.perf_counter()
            try:
                costs = self._sparse_step(done, mask[:done])
            except BaseException:
                self.engine.restore(snapshot)
                self.engine.release(snapshot)
                self.history.rollbacks = rollbacks
                raise
            elapsed += time.perf_counter() - t0
        self.engine.release(snapshot)
        for j in range(done):
            iteration = self.test.counter
            self.test.update(costs[j])
            if mask[j]:
                self.history.cost_iterations.append(iteration)
                self.history.costs.append(float(costs[j]))
        self.history.iteration_seconds.extend([elapsed / done] * done)
        return done, converged

    def _check_finite(self, costs, mask, snapshot) -> None:
        """Stop at a non-finite cost: a diverged run must never end as a result."""
        bad = [j for j in range(len(costs)) if mask[j] and not np.isfinite(costs[j])]
        if not bad:
            return
        self.engine.restore(snapshot)  # leave the last finite state (a checkpoint never
        self.engine.release(snapshot)  # holds the diverged one)
        iteration = self.position.done_total + bad[0] + 1
        names = ("--noise-est, --wave-thresh-factor" if self.settings.mode == "sparse"
                 else "--noise-est, --lowr-thresh-factor")
        raise DivergenceError(
            f"the cost at iteration {iteration} is {costs[bad[0]]} (not finite): the "
            f"iteration diverged; check {names}, --condat-tau and --condat-sigma; no "
            "output was written")

    @property
    def rounds(self) -> int:
        """The first solve and each reweighting (sparse mode); one round in low rank."""
        s = self.settings
        return s.n_reweights + 1 if s.mode == "sparse" else 1

    def planned(self) -> int:
        """Iterations planned: n_iter per round, less what finished rounds did not need."""
        n_iter = self.settings.n_iter
        return self.rounds * n_iter - sum(n_iter - d for d in self.history.iterations_per_round)

    def _check_stop(self) -> None:
        if self.stop is not None and self.stop.requested:
            raise self.stop.interrupted(self)

    def run(self) -> History:
        """Run every round (the first solve and each reweighting) to convergence or n_iter.

        A driver restored from a saved state continues where that state stopped.
        """
        if self.problem is None:
            self.setup()
        s = self.settings
        rounds = self.rounds
        pos = self.position
        step = self.sync_every if s.mode == "sparse" else 1
        while pos.round < rounds:
            if pos.round > 0 and not pos.reweighted:
                self._check_stop()
                self.engine.map(partial(_reweight_task, problem=self.problem))
                pos.reweighted = True
                log.info("reweighting %d of %d", pos.round, rounds - 1)
            while pos.done_round < s.n_iter and not pos.converged:
                self._check_stop()
                n_iter = min(step, s.n_iter - pos.done_round)
                try:
                    done, converged = self._advance(n_iter)
                except Exception:
                    if self.stop is not None and self.stop.requested:
                        raise self.stop.interrupted(self) from None
                    raise
                pos.done_round += done
                pos.done_total += done
                pos.converged = converged
                last = self.history.costs[-1] if self.history.costs else float("nan")
                if self.progress is not None:
                    self.progress(pos.done_total, self.planned(), last)
                if self.on_sync is not None:
                    self.on_sync(self)
            self.history.iterations_per_round.append(pos.done_round)
            self.history.converged_per_round.append(bool(pos.converged))
            self.history.last_test_per_round.append(self.test.last_test)
            log.info("round %d: %d iterations, converged=%s, cost=%.6g", pos.round,
                     pos.done_round, pos.converged, self.history.costs[-1]
                     if self.history.costs else float("nan"))
            pos.round += 1
            pos.done_round, pos.converged, pos.reweighted = 0, False, False
        self.settle()
        return self.history


def _sparse_task(block, problem, n_iter, mask):
    return sparse_iterate(block, problem, n_iter, mask)


def _lowr_task(block, problem, factors, want_cost=False, begin=True):
    new, cost = lowr_step(block, problem, factors, begin, want_cost)
    return new, (lowrank.share_of(new, cost, want_cost) if begin else None)


def _reweight_task(block, problem):
    return reweight(block, problem), None
