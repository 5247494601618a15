"""The second step of a run: the engine, the checkpointer and where the run starts."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from galdecon.core.problem import Settings
from galdecon.engines import Engine, make_engine
from galdecon.run import checkpoint as ckpt
from galdecon.run.inputs import Inputs
from galdecon.run.interrupt import StopRequest

log = logging.getLogger("galdecon")


@dataclass
class Plan:
    """How a run will go: on which engine, from which state, checkpointed where.

    Attributes
    ----------
    engine : Engine
        Made for this run (the caller closes it).
    settings : Settings
    start : Checkpoint or None
        The checkpoint a resumed run starts from.
    sync_every : int or None
        Iterations per synchronisation (a resumed run's saved one unless given).
    digests : dict or None
        Checksums of the images and PSFs (with checkpoints or resuming).
    checkpointer : Checkpointer or None
        Writes the run's checkpoints.
    """

    engine: Engine
    settings: Settings
    start: ckpt.Checkpoint | None = None
    sync_every: int | None = None
    digests: dict | None = None
    checkpointer: ckpt.Checkpointer | None = None

    @property
    def resumed_from(self) -> dict | None:
        """For the run record: the checkpoint resumed and its iterations."""
        if self.start is None:
            return None
        return {"checkpoint": str(self.start.path), "iteration": self.start.iteration}


def resume_point(resume, settings: Settings, digests: dict, inputs: Inputs):
    """The checkpoint to resume (a path or a Checkpoint), checked against the run's data."""
    start = resume if isinstance(resume, ckpt.Checkpoint) else ckpt.load(resume)
    ckpt.check_compatible(start, settings, digests, inputs.n, inputs.shape)
    ckpt.check_contents(start, settings)
    log.info("resuming from %s after %d iterations", start.path, start.iteration)
    return start


def plan_run(inputs: Inputs, settings: Settings, engine: str, engine_options: dict, *,
             sync_every: int | None = None, checkpoint=None,
             checkpoint_every: int | None = None, checkpoint_extra: dict | None = None,
             resume=None) -> Plan:
    """Check a resumed run's checkpoint, then make the engine and the checkpointer."""
    digests = inputs.digests() if checkpoint is not None or resume is not None else None
    start = None if resume is None else resume_point(resume, settings, digests, inputs)
    if start is not None and sync_every is None:
        sync_every = start.meta["driver"]["sync_every"]
    plan = Plan(make_engine(engine, **engine_options), settings, start, sync_every, digests)
    if checkpoint is not None:
        try:
            plan.checkpointer = ckpt.Checkpointer(
                checkpoint, plan.engine, digests, checkpoint_every, checkpoint_extra,
                chunk=inputs.chunk, base=0 if start is None else start.iteration)
        except BaseException:
            plan.engine.close()
            raise
    return plan


def connect_stop(stop: StopRequest | None, plan: Plan) -> None:
    """Let a stop request cancel the engine's maps and save the plan's checkpoint."""
    if stop is None:
        return
    stop.reclaim_signals()  # a new SparkContext installs its own SIGINT handler
    stop.on_request(plan.engine.cancel)
    if plan.checkpointer is not None:
        stop.on_save(plan.checkpointer.write)
