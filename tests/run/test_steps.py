"""The steps of a run, each alone: inputs, plan, execute (recovery), outputs, record."""

from __future__ import annotations

import numpy as np
import pytest

from galdecon.core.problem import Settings
from galdecon.errors import ConfigError, EngineError, InputError
from galdecon.run.execute import engine_failure, execute, first_line, restart_point
from galdecon.run.inputs import read_inputs
from galdecon.run.interrupt import StopRequest
from galdecon.run.outputs import collect_outputs
from galdecon.run.plan import connect_stop, plan_run
from galdecon.run.record import build_record

OPTIONS = Settings(n_iter=8, noise_est=0.1)


@pytest.fixture
def arrays():
    psf = np.zeros((5, 5))
    psf[2, 2] = 1.0
    return np.ones((3, 9, 9)), psf


def test_inputs_are_validated_and_know_their_shapes(arrays):
    inputs = read_inputs(*arrays, None, None, "float32")
    assert (inputs.n, inputs.shape, inputs.psfs_shape) == (3, (9, 9), (5, 5))
    assert inputs.images.dtype == np.float32 and inputs.chunk is None
    assert set(inputs.digests()) == {"images", "psfs"}
    with pytest.raises(InputError):
        read_inputs(np.ones((3, 9)), arrays[1], None, None, "float64")


def test_a_store_stack_is_not_changed_by_the_run(tmp_path, arrays):
    pytest.importorskip("zarr")
    from galdecon.data import chunked
    from galdecon.data.sources import StoreStack

    images, psf = arrays
    chunked.write_store(tmp_path / "s.zarr", {"images": images,
                                              "psfs": np.broadcast_to(psf, (3, 5, 5))}, chunk=2)
    stack = StoreStack.open(str(tmp_path / "s.zarr"))
    inputs = read_inputs(stack, None, None, None, "float32")
    assert inputs.source.dtype == "float32" and stack.dtype == "float64"
    with pytest.raises(ConfigError, match="StoreStack"):
        read_inputs(stack, psf, None, None, "float32")


def run_steps(inputs, **plan_options):
    plan = plan_run(inputs, OPTIONS, "local", {"threads": 1}, **plan_options)
    try:
        execution = execute(plan, inputs)
        outputs = collect_outputs(plan.engine, inputs)
    finally:
        plan.engine.close()
    return plan, execution, outputs


def test_the_steps_make_a_record(arrays, tmp_path):
    inputs = read_inputs(*arrays, None, None, "float64")
    plan, execution, outputs = run_steps(inputs, checkpoint=tmp_path / "ck", checkpoint_every=4)
    assert outputs.primal.shape == (3, 9, 9) and outputs.facts["engine"] == "local"
    assert execution.failures == [] and plan.resumed_from is None
    record = build_record(plan, inputs, execution, outputs.facts, 0.0).to_dict()
    assert record["result"]["iterations"] == 16
    assert record["reliability"]["checkpoints"]["writes"] == 4


def test_a_resumed_plan_starts_at_its_checkpoint(arrays, tmp_path):
    inputs = read_inputs(*arrays, None, None, "float64")
    run_steps(inputs, checkpoint=tmp_path / "ck", checkpoint_every=4, sync_every=4)
    plan = plan_run(inputs, OPTIONS, "local", {}, resume=tmp_path / "ck",
                    checkpoint=tmp_path / "ck2")
    plan.engine.close()
    assert plan.sync_every == 4 and plan.checkpointer.base == 16
    assert plan.resumed_from == {"checkpoint": str(tmp_path / "ck"), "iteration": 16}


def test_a_stop_request_is_connected_to_the_plan(arrays, tmp_path):
    inputs = read_inputs(*arrays, None, None, "float64")
    plan = plan_run(inputs, OPTIONS, "local", {}, checkpoint=tmp_path / "ck")
    cancelled = []
    plan.engine.cancel = lambda: cancelled.append(True)
    stop = StopRequest()
    connect_stop(stop, plan)
    stop.request()
    plan.engine.close()
    assert cancelled == [True]


class FakeEngine:
    name = "spark"
    recoverable = True

    def __init__(self, usable=True):
        self._usable = usable

    def usable(self):
        return self._usable


class FakePlan:
    def __init__(self, engine):
        self.engine, self.checkpointer = engine, None


def test_restart_point_restarts_then_gives_up():
    plan, failures = FakePlan(FakeEngine()), []
    assert restart_point(plan, RuntimeError("lost\nExecutorLostException: gone"), failures,
                         1, None) is None
    assert failures == ["RuntimeError: ExecutorLostException: gone"]
    with pytest.raises(EngineError, match="after 1 restart"):
        restart_point(plan, RuntimeError("again"), failures, 1, None)
    config = ConfigError("bad option")
    with pytest.raises(ConfigError):
        restart_point(plan, config, [], 2, None)


def test_engine_failure_says_how_to_go_on():
    error = engine_failure(FakeEngine(usable=False), ["E: x"], None)
    assert "cannot go on" in str(error) and "no checkpoint was written" in str(error)
    assert first_line(ValueError("")) == "ValueError: "
