"""The run record: what a deconvolution did, typed, and its JSON layout (:meth:`RunRecord.to_dict`).

The record holds the settings, σ, β, λ and the step sizes, the iterations and the
convergence, the cost history, timings, versions, what went wrong and was recovered from,
and (when the truth was given) metrics. The command line adds where its outputs went
(:attr:`RunRecord.outputs`), how it was called (:attr:`RunRecord.cli`) and the inputs'
checksums (:attr:`DataFacts.sha256`).
"""

from __future__ import annotations

import dataclasses
import datetime
import platform
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from galdecon.core.problem import Settings


def versions() -> dict:
    """Versions of galdecon and what it runs on."""
    import astropy
    import scipy

    from galdecon.version import __version__

    return {"galdecon": __version__, "python": sys.version.split()[0], "numpy": np.__version__,
            "scipy": scipy.__version__, "astropy": astropy.__version__,
            "platform": platform.platform()}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _fields(obj, skip_none=()) -> dict:
    """The dataclass's fields as a dict (not recursing), leaving out the ``skip_none`` unset."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
            if not (f.name in skip_none and getattr(obj, f.name) is None)}


@dataclass
class DataFacts:
    """The data: how many stamps, their shape, the PSFs', and the input files."""

    n_images: int
    stamp_shape: list
    psf_shape: list
    shared_psf: bool
    inputs: dict = field(default_factory=dict)
    sha256: dict | None = None  # the command line's checksums of its input files

    def to_dict(self) -> dict:
        """The record's ``data`` section."""
        return _fields(self, skip_none=("sha256",))


@dataclass
class Outcome:
    """Iterations, convergence and the final cost (the record's ``result``)."""

    iterations: int
    iterations_per_round: list
    converged_per_round: list
    converged: bool
    final_cost: float | None
    rollbacks: int
    convergence_test: dict
    #: the convergence test's last value at the end of each round (None: it never ran)
    last_test_per_round: list = field(default_factory=list)
    #: the rounds (0 = the first solve) that stopped at n_iter with a test above tolerance
    stopped_unconverged: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """The record's ``result`` section."""
        return _fields(self)


@dataclass
class CostHistory:
    """The cost at the iterations it was computed."""

    cost_iterations: list
    costs: list
    iterations_per_round: list

    def to_dict(self) -> dict:
        """The record's ``history`` section."""
        return _fields(self)


@dataclass
class Timing:
    """Where the time went (seconds)."""

    setup_s: float
    iterations_s: float
    median_iteration_s: float | None
    mean_iteration_s: float | None
    scatter_to_end_s: float
    total_s: float
    iteration_seconds: list

    @classmethod
    def of(cls, driver, history, started: float, t_start: float) -> Timing:
        """The timing of a finished run (``started``: the first scatter; ``t_start``: the call)."""
        seconds = np.asarray(history.iteration_seconds)
        now = time.perf_counter()
        return cls(setup_s=driver.setup_seconds, iterations_s=float(seconds.sum()),
                   median_iteration_s=float(np.median(seconds)) if seconds.size else None,
                   mean_iteration_s=float(seconds.mean()) if seconds.size else None,
                   scatter_to_end_s=now - started, total_s=now - t_start,
                   iteration_seconds=seconds.tolist())

    def to_dict(self) -> dict:
        """The record's ``timing`` section."""
        return _fields(self)


@dataclass
class Reliability:
    """Where a resumed run started, the engine failures recovered from, the checkpoints."""

    resumed_from: dict | None = None
    engine_failures: list = field(default_factory=list)
    checkpoints: dict | None = None

    def to_dict(self) -> dict:
        """The record's ``reliability`` section."""
        return _fields(self)


@dataclass
class CliFacts:
    """How the command line was called."""

    argv: list
    random_seed: int | None = None
    output_format: str | None = None

    def to_dict(self) -> dict:
        """The record's ``cli`` section."""
        return _fields(self)


@dataclass
class RunRecord:
    """Everything a run did (see the module docstring); :meth:`to_dict` is its JSON."""

    settings: Settings
    problem: dict
    data: DataFacts
    engine: dict
    result: Outcome
    history: CostHistory
    timing: Timing
    reliability: Reliability
    versions: dict = field(default_factory=versions)
    created: str = field(default_factory=_now)
    command: str = "deconvolve"
    metrics: dict | None = None
    outputs_store: str | None = None  # the chunked store the workers wrote the outputs to
    cli: CliFacts | None = None
    outputs: dict | None = None  # the files the command line wrote

    def to_dict(self) -> dict:
        """The run record as JSON-friendly dicts (the layout of ``STEM_run.json``)."""
        out = {"created": self.created, "command": self.command,
               "settings": dataclasses.asdict(self.settings), "problem": self.problem,
               "data": self.data.to_dict(), "engine": self.engine,
               "result": self.result.to_dict(), "history": self.history.to_dict(),
               "timing": self.timing.to_dict(), "versions": self.versions,
               "reliability": self.reliability.to_dict()}
        if self.metrics is not None:
            out["metrics"] = self.metrics
        if self.outputs_store is not None:
            out["outputs_store"] = self.outputs_store
        if self.cli is not None:
            out["cli"] = self.cli.to_dict()
        if self.outputs is not None:
            out["outputs"] = self.outputs
        return out


def unconverged_rounds(history, settings: Settings) -> list[int]:
    """The rounds that used all of ``n_iter`` while the test asked for more.

    A run with tolerance 0 asks for a fixed number of iterations, so it never appears
    here; nor does a round whose test never ran (it has nothing to say).
    """
    if settings.tolerance <= 0:
        return []
    tests = history.last_test_per_round
    return [k for k, (done, converged) in enumerate(zip(history.iterations_per_round,
                                                        history.converged_per_round))
            if not converged and done >= settings.n_iter and k < len(tests)
            and tests[k] is not None]


def build_record(plan, inputs, execution, facts: dict, t_start: float,
                 input_names: dict | None = None) -> RunRecord:
    """The record of a finished run (``facts``: the engine's, ``t_start``: when it was called)."""
    driver, history = execution.driver, execution.history
    psfs_shape = inputs.psfs_shape
    timing = Timing.of(driver, history, execution.started, t_start)
    return RunRecord(
        settings=plan.settings, problem=driver.problem.summary(),
        data=DataFacts(n_images=int(inputs.n), stamp_shape=list(inputs.shape),
                       psf_shape=list(psfs_shape[-2:]), shared_psf=len(psfs_shape) == 2,
                       inputs=input_names or {}),
        engine=facts | {"sync_every": driver.sync_every},
        result=Outcome(
            iterations=int(sum(history.iterations_per_round)),
            iterations_per_round=history.iterations_per_round,
            converged_per_round=history.converged_per_round,
            converged=bool(history.converged_per_round[-1]),
            final_cost=history.costs[-1] if history.costs else None,
            rollbacks=history.rollbacks, convergence_test=driver.test.state(),
            last_test_per_round=history.last_test_per_round,
            stopped_unconverged=unconverged_rounds(history, plan.settings)),
        history=CostHistory(cost_iterations=history.cost_iterations, costs=history.costs,
                            iterations_per_round=history.iterations_per_round),
        timing=timing,
        reliability=Reliability(
            resumed_from=plan.resumed_from, engine_failures=execution.failures,
            checkpoints=None if plan.checkpointer is None else plan.checkpointer.facts()))
