"""The third step of a run: scatter the blocks and iterate, restarting a failed engine.

On an engine that can lose workers (Spark) a failed run is restarted from its last
checkpoint (or its start) up to ``recoveries`` times; errors a user caused, and a stop
request, are raised at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import partial

from galdecon.data import io
from galdecon.errors import EngineError, GalDeconError, RunInterrupted
from galdecon.run import checkpoint as ckpt
from galdecon.run.driver import Driver, History
from galdecon.run.inputs import Inputs
from galdecon.run.interrupt import StopRequest
from galdecon.run.plan import Plan

log = logging.getLogger("galdecon")


@dataclass
class Execution:
    """A finished run on the engine: its driver and history, and what went wrong on the way.

    Attributes
    ----------
    driver : Driver
    history : History
    failures : list of str
        One line per engine failure the run recovered from.
    started : float
        ``time.perf_counter()`` when the blocks were first scattered.
    """

    driver: Driver
    history: History
    failures: list = field(default_factory=list)
    started: float = 0.0


def start_blocks(eng, driver: Driver, inputs: Inputs, start) -> None:
    """Scatter the blocks (from the inputs, or a checkpoint's state) and set the run up."""
    source = inputs.source
    if source is not None:
        if start is not None:
            source = source.with_state(start.store())
        eng.scatter_source(source, driver.n_images)
        if not source.shared_psf:
            warn_store_psfs(eng, source)
    else:
        arrays = {"images": inputs.images, "psfs": inputs.psfs, "primal": inputs.primal,
                  "pixel_weights": inputs.weights}
        if start is not None:
            saved = start.arrays()
            start.check_shapes(saved, driver.settings)
            arrays.update(saved)
        eng.scatter(arrays, driver.n_images)
        del arrays
    if start is not None:  # where the blocks are: a store's state is read by the workers
        bad = eng.reduce(partial(ckpt.bad_state, names=start.meta["arrays"]), ckpt.first_bad)
        ckpt.refuse_bad_state(start, bad)
    driver.setup(saved=None if start is None else start.meta["driver"])


def _psf_summary(block):
    return io.psf_summary(block.psfs, start=block.start)


def warn_store_psfs(eng, source) -> None:
    """Warn, as for in-memory PSFs, of PSFs held by the blocks that are negative or off 1."""
    io.warn_psfs(f"{source.psfs[0].url}[{source.psfs[1]}]",
                 eng.reduce(_psf_summary, io.combine_psf_summaries), stacklevel=2)


def first_line(exc: BaseException) -> str:
    """One line saying what failed (for a Py4JJavaError: the Java exception's message)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    cause = next((line.lstrip(": ") for line in lines[1:] if "Exception" in line), None)
    text = cause or (lines[0] if lines else "")
    return f"{type(exc).__name__}: {text}"[:400]


def engine_failure(eng, failures, checkpointer) -> EngineError:
    """The error of a run the engine could not finish, saying how to go on."""
    restarts = len(failures) - 1
    tries = f" after {restarts} restart(s)" if restarts else ""
    if not eng.usable():
        tries += " and cannot go on (its session has stopped)"
    cause = failures[-1] if len(set(failures)) == 1 else (
        f"{failures[-1]} (first failure: {failures[0]})")
    if checkpointer is not None and checkpointer.written is not None:
        hint = (f"; the state after {checkpointer.written} iterations is saved in "
                f"{checkpointer.directory} (resume with --resume {checkpointer.directory})")
    else:
        hint = "; no checkpoint was written"
    return EngineError(f"the {eng.name} engine failed{tries}: {cause}{hint}")


def restart_point(plan: Plan, exc: Exception, failures: list, recoveries: int, start):
    """After a failed try: where to restart from (raising when the run cannot go on)."""
    eng, checkpointer = plan.engine, plan.checkpointer
    if isinstance(exc, GalDeconError) and not isinstance(exc, EngineError):
        raise exc
    if not eng.recoverable:
        raise exc
    failures.append(first_line(exc))
    if len(failures) > recoveries or not eng.usable():
        raise engine_failure(eng, failures, checkpointer) from exc
    if checkpointer is not None and checkpointer.written is not None:
        start = ckpt.load(checkpointer.directory)
    log.warning("%s engine failed (%s); restarting from %s", eng.name, failures[-1],
                f"the checkpoint after {start.iteration} iterations"
                if start is not None else "the start")
    return start


def execute(plan: Plan, inputs: Inputs, *, progress=None, stop: StopRequest | None = None,
            recoveries: int = 2) -> Execution:
    """Run the plan to its end, restarting a failed engine up to ``recoveries`` times."""
    started = time.perf_counter()
    failures: list[str] = []
    start = plan.start
    while True:
        driver = None
        try:
            driver = Driver(plan.engine, plan.settings, inputs.n, inputs.shape,
                            sync_every=plan.sync_every, progress=progress,
                            on_sync=plan.checkpointer, stop=stop)
            start_blocks(plan.engine, driver, inputs, start)
            return Execution(driver, driver.run(), failures, started)
        except RunInterrupted:
            raise
        except Exception as exc:
            if stop is not None and stop.requested:  # stopped during the set-up
                ready = driver if driver is not None and driver.ready else None
                raise stop.interrupted(ready) from None
            start = restart_point(plan, exc, failures, recoveries, start)
