"""What crosses a process survives pickling: errors, settings, stores, checkpoints, records."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
import signal

import numpy as np
import pytest

import galdecon
from galdecon import errors
from galdecon.core.problem import Settings
from galdecon.run import checkpoint
from galdecon.run.record import CliFacts
from pickle_check import check_pickle

ERRORS = [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
          if issubclass(cls, BaseException) and cls.__module__ == errors.__name__]


def same_error(a, b) -> bool:
    return (type(a) is type(b) and a.args == b.args and str(a) == str(b)
            and a.__dict__ == b.__dict__)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_every_error_survives_pickling(cls):
    if cls is errors.RunInterrupted:
        exc = cls("interrupted by SIGTERM: saved", signal.SIGTERM, "/tmp/ck", 12)
    else:
        exc = cls("/data/x.npy: stamp 3 is not finite")
    exc.note = "an attribute set later"
    copy = check_pickle(exc, eq=same_error)
    assert str(copy) == str(exc)


def test_run_interrupted_keeps_its_attributes():
    exc = errors.RunInterrupted("interrupted by SIGINT", signal.SIGINT, None, 8)
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.signum, copy.checkpoint, copy.iteration) == (signal.SIGINT, None, 8)
    assert str(copy) == "interrupted by SIGINT"


def test_settings_survive_pickling():
    check_pickle(Settings())
    check_pickle(Settings(mode="lowr", n_iter=7, dtype="float32"))


def test_a_store_stack_survives_pickling(tmp_path):
    pytest.importorskip("zarr")
    from galdecon.data import chunked
    from galdecon.data.sources import StoreStack

    images = np.ones((6, 9, 9))
    psfs = np.zeros((6, 5, 5))
    psfs[:, 2, 2] = 1.0
    chunked.write_store(tmp_path / "in.zarr", {"images": images, "psfs": psfs}, chunk=3)
    stack = StoreStack.open(str(tmp_path / "in.zarr"))
    copy = check_pickle(stack, eq=lambda a, b: repr(a) == repr(b) and a.digests() == b.digests())
    np.testing.assert_array_equal(copy.read(0, 6)["images"], images)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    psf = np.zeros((5, 5))
    psf[2, 2] = 1.0
    directory = tmp_path_factory.mktemp("ck") / "ck"
    result = galdecon.deconvolve(np.ones((2, 9, 9)), psf, n_iter=8, noise_est=0.1,
                                 checkpoint=directory, checkpoint_every=4)
    return result, directory


def test_a_checkpoint_survives_pickling(small_run, tmp_path):
    result, _ = small_run
    saved = checkpoint.Checkpoint(tmp_path, {"format": checkpoint.FORMAT, "n_images": 2,
                                             "driver": {"position": {"done_total": 4}}})
    copy = check_pickle(saved)
    assert copy.iteration == 4


def test_the_record_and_result_survive_pickling(small_run):
    result, _ = small_run
    record = dataclasses.replace(result.run_record,
                                 cli=CliFacts(argv=["deconvolve", "-i", "x.npy"], random_seed=3))
    copy = check_pickle(record)
    assert copy.to_dict() == record.to_dict()

    def same_result(a, b):
        return (np.array_equal(a.primal, b.primal) and np.array_equal(a.dual, b.dual)
                and a.record == b.record and a.run_record == b.run_record)

    check_pickle(result, eq=same_result, irreprable=True)


def test_the_record_is_the_json_layout(small_run):
    result, _ = small_run
    assert result.record == result.run_record.to_dict()
    assert list(result.record) == ["created", "command", "settings", "problem", "data",
                                   "engine", "result", "history", "timing", "versions",
                                   "reliability"]
    assert result.record["settings"] == dataclasses.asdict(Settings(n_iter=8, noise_est=0.1))
