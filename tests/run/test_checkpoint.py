"""Checkpoints, resuming and interruption: a stopped and resumed run is the uninterrupted run.

Local engine: bit for bit (same blocks, same steps, same state). The command line is run
in real subprocesses that receive real SIGINT/SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import galdecon
from galdecon.cli.app import main
from galdecon.errors import ConfigError, InputError, RunInterrupted
from galdecon.run import checkpoint
from galdecon.run.interrupt import StopRequest, handle_signals

DATA = Path(__file__).resolve().parents[2] / "data" / "sf_deconvolve_example"
IMAGES = DATA / "example_image_stack.npy"
PSFS = DATA / "example_psfs.npy"
SPARSE = {"n_iter": 30, "n_reweights": 1, "tolerance": 1e-6, "wavelet": "linear"}
LOWR = {"mode": "lowr", "n_iter": 24, "tolerance": 0.0}


@pytest.fixture(scope="module")
def stack(example_images, example_psfs):
    return np.array(example_images[:24]), np.array(example_psfs[:24])


@pytest.fixture(scope="module")
def references(stack):
    images, psfs = stack
    return {"sparse": galdecon.deconvolve(images, psfs, **SPARSE),
            "lowr": galdecon.deconvolve(images, psfs, **LOWR)}


def stop_after(iterations: int) -> tuple[StopRequest, callable]:
    """A stop request and a progress hook that asks to stop once ``iterations`` are done."""
    stop = StopRequest()

    def progress(done, planned, cost):
        if done >= iterations:
            stop.request(signal.SIGTERM)

    return stop, progress


def stopped_run(images, psfs, directory, at: int, **options) -> None:
    """Run until ``at`` iterations are done, then stop: the checkpoint is in ``directory``."""
    stop, progress = stop_after(at)
    with pytest.raises(RunInterrupted):
        galdecon.deconvolve(images, psfs, progress=progress, stop=stop,
                            checkpoint=directory, **options)


def assert_identical(result, reference):
    np.testing.assert_array_equal(result.primal, reference.primal)
    np.testing.assert_array_equal(result.dual, reference.dual)
    for key in ("cost_iterations", "costs", "iterations_per_round"):
        assert result.record["history"][key] == reference.record["history"][key]
    for key in ("iterations", "converged_per_round", "rollbacks", "convergence_test"):
        assert result.record["result"][key] == reference.record["result"][key]


# -- the API ------------------------------------------------------------------------------

@pytest.mark.parametrize(("mode", "at"), [("sparse", 0), ("sparse", 8), ("sparse", 30),
                                          ("sparse", 44), ("lowr", 5), ("lowr", 23)])
def test_stopped_and_resumed_run_is_bitwise_the_uninterrupted_one(stack, references, tmp_path,
                                                                 mode, at):
    # Stops: before the first step, mid-round, at the end of round 1 (before the
    # reweighting), mid-round 2; low rank mid-run and one iteration before the end.
    images, psfs = stack
    options = SPARSE if mode == "sparse" else LOWR
    stop, progress = stop_after(at)
    with pytest.raises(RunInterrupted) as info:
        galdecon.deconvolve(images, psfs, progress=progress, stop=stop,
                            checkpoint=tmp_path / "ck", checkpoint_every=0, **options)
    stopped = info.value
    assert stopped.signum == signal.SIGTERM and stopped.checkpoint == tmp_path / "ck"
    saved = checkpoint.load(tmp_path / "ck")
    assert saved.iteration == stopped.iteration >= at
    assert stopped.iteration < sum(references[mode].record["result"]["iterations_per_round"])
    result = galdecon.deconvolve(images, psfs, resume=tmp_path / "ck", **options)
    assert_identical(result, references[mode])
    assert result.record["reliability"]["resumed_from"] == {
        "checkpoint": str(tmp_path / "ck"), "iteration": stopped.iteration}


def test_periodic_checkpoints_and_a_resume_from_an_early_one(stack, references, tmp_path):
    images, psfs = stack
    kept = []

    def progress(done, planned, cost):
        state = tmp_path / "ck" / checkpoint.STATE_FILE
        if state.exists() and not kept:  # keep the first checkpoint written
            kept.append(checkpoint.load(tmp_path / "ck").iteration)
            os.replace(state, tmp_path / "first.npz")

    result = galdecon.deconvolve(images, psfs, progress=progress, checkpoint=tmp_path / "ck",
                                 checkpoint_every=8, sync_every=4, **SPARSE)
    assert_identical(result, references["sparse"])
    facts = result.record["reliability"]["checkpoints"]
    # Steps of 4 from each round's start (rounds of 30): written after 8, 16, 24, then at
    # the first synchronisation 8 or more iterations later: 34, 42, 50, 58.
    assert facts["every"] == 8 and facts["writes"] == 7
    assert facts["last_iteration"] == 58 and kept == [8]
    (tmp_path / "early").mkdir()
    os.replace(tmp_path / "first.npz", tmp_path / "early" / checkpoint.STATE_FILE)
    again = galdecon.deconvolve(images, psfs, resume=tmp_path / "early", **SPARSE)
    assert_identical(again, references["sparse"])


def test_resume_refuses_other_data_and_other_settings(stack, tmp_path):
    images, psfs = stack
    stopped_run(images, psfs, tmp_path / "ck", 8, **SPARSE)
    other = images.copy()
    other[3, 20, 20] += 1e-9
    with pytest.raises(InputError, match=r"images differ .* \(checksum mismatch\)"):
        galdecon.deconvolve(other, psfs, resume=tmp_path / "ck", **SPARSE)
    with pytest.raises(InputError, match="psfs differ"):
        galdecon.deconvolve(images, psfs[::-1].copy(), resume=tmp_path / "ck", **SPARSE)
    with pytest.raises(InputError, match="checkpoint is of 24 stamps"):
        galdecon.deconvolve(images[:10], psfs[:10], resume=tmp_path / "ck", **SPARSE)
    with pytest.raises(ConfigError, match=r"n_iter 31 \(checkpoint: 30\).*relax"):
        galdecon.deconvolve(images, psfs, resume=tmp_path / "ck", **(SPARSE | {"n_iter": 31,
                                                                            "relax": 0.4}))


def test_corrupt_or_foreign_checkpoints_are_refused(stack, tmp_path):
    images, psfs = stack
    with pytest.raises(InputError, match="no checkpoint here"):
        checkpoint.load(tmp_path)
    stopped_run(images, psfs, tmp_path / "ck", 4, **SPARSE)
    state = tmp_path / "ck" / checkpoint.STATE_FILE
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(InputError, match="not a readable galdecon checkpoint"):
        checkpoint.load(tmp_path / "ck")
    np.savez(state, meta=np.frombuffer(b'{"format": "other"}', dtype=np.uint8))
    with pytest.raises(InputError, match="not a galdecon checkpoint"):
        checkpoint.load(state)  # the state file itself names the checkpoint too
    np.savez(state, meta=np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="not a readable"):  # never unpickled
        checkpoint.load(tmp_path / "ck")


def rewrite_checkpoint(directory, meta: dict, arrays: dict) -> None:
    """Write a state file by hand (as an editor or another program would)."""
    with open(directory / checkpoint.STATE_FILE, "wb") as handle:
        np.savez(handle, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                 **arrays)


def test_checkpoint_contents_are_validated_before_resuming(stack, tmp_path):
    # A NaN primal, a counter beyond --n-iter or a wrong shape would otherwise resume to
    # exit 0 with NaN outputs or a false iteration count.
    images, psfs = stack
    stopped_run(images, psfs, tmp_path / "ck", 8, **SPARSE)
    saved = checkpoint.load(tmp_path / "ck")
    arrays = saved.arrays()
    ck = tmp_path / "ck"

    def position(**changes):
        driver = dict(saved.meta["driver"])
        driver["position"] = dict(driver["position"], **changes)
        return dict(saved.meta, driver=driver)

    cases = [
        (saved.meta, dict(arrays, primal=np.where(np.arange(24)[:, None, None] == 5, np.nan,
                                                  arrays["primal"])),
         r"primal is not finite \(galaxy 5\)"),
        (saved.meta, dict(arrays, weights=np.full_like(arrays["weights"], np.inf)),
         r"weights is not finite \(galaxy 0\)"),
        (position(done_total=61), arrays, r"done_total is 61; a run with --n-iter 30 has "
                                          r"an integer in \[\d+, 60\]"),
        (position(done_round=31), arrays, r"done_round is 31.*\[0, 30\]"),
        (position(round=2), arrays, r"round is 2.*\[0, 1\]"),
        (position(done_total="8"), arrays, r"done_total is '8'"),
        (dict(saved.meta, driver=dict(saved.meta["driver"], noise_sigma=float("nan"))),
         arrays, "noise_sigma is nan; expected a finite positive number"),
        (saved.meta, dict(arrays, dual=arrays["dual"][:, :2]),
         r"'dual' is float64 \(24, 2, 41, 41\); expected floating point \(24, 3, 41, 41\)"),
        (dict(saved.meta, arrays=["dual", "primal"]), arrays,
         r"holds the arrays \['dual', 'primal'\]; a sparse run saves"),
    ]
    for meta, state, message in cases:
        rewrite_checkpoint(ck, meta, state)
        with pytest.raises(InputError, match=message):
            galdecon.deconvolve(images, psfs, resume=ck, **SPARSE)
    rewrite_checkpoint(ck, saved.meta, arrays)  # the untouched state still resumes
    galdecon.deconvolve(images, psfs, resume=ck, **SPARSE)


def test_low_rank_checkpoint_holds_the_iteration_begun(stack, references, tmp_path):
    # Between two synchronisations a low-rank run holds x_k, y_{k-1} and the pending ỹ_k
    # (one map per iteration finishes k and begins k + 1). The checkpoint saves the three
    # (format version 2; version 1 never holds a pending ỹ and is still resumed).
    images, psfs = stack
    stopped_run(images, psfs, tmp_path / "ck", 7, **LOWR)
    saved = checkpoint.load(tmp_path / "ck")
    assert saved.meta["version"] == checkpoint.VERSION == 2
    assert saved.meta["arrays"] == ["dual", "pending", "primal"]
    assert saved.meta["driver"]["lowr_pending"] is True
    arrays = saved.arrays()
    assert arrays["pending"].shape == arrays["dual"].shape == images.shape
    assert not np.array_equal(arrays["pending"], arrays["dual"])
    # a version-1 document of a settled state is accepted; an unknown version is not
    state = tmp_path / "ck" / checkpoint.STATE_FILE
    for version, readable in [(1, True), (3, False)]:
        meta = dict(saved.meta, version=version)
        with open(state, "wb") as handle:
            np.savez(handle, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                     **arrays)
        if readable:
            assert checkpoint.load(tmp_path / "ck").meta["version"] == 1
        else:
            with pytest.raises(InputError, match="version 3; this galdecon resumes "
                                                 "versions 1, 2"):
                checkpoint.load(tmp_path / "ck")


def test_a_failed_checkpoint_write_keeps_the_previous_one(stack, tmp_path, monkeypatch):
    images, psfs = stack
    calls = []
    real_savez = np.savez

    def failing_savez(handle, **arrays):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint dies half-way through its write
            handle.write(b"PK\x03\x04 partial")
            raise OSError(28, "No space left on device")
        real_savez(handle, **arrays)

    monkeypatch.setattr(checkpoint.np, "savez", failing_savez)
    with pytest.raises(OSError, match="No space left"):
        galdecon.deconvolve(images, psfs, checkpoint=tmp_path / "ck", checkpoint_every=8,
                            sync_every=4, **SPARSE)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [checkpoint.STATE_FILE]
    assert checkpoint.load(tmp_path / "ck").iteration == 8  # the first one, whole


def test_signal_handler_first_asks_then_aborts():
    stop = StopRequest()
    cancelled = []
    stop.on_request(lambda: cancelled.append(1))
    with handle_signals(stop):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        assert stop.requested and stop.signum == signal.SIGINT and cancelled == [1]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    late = []
    stop.on_request(lambda: late.append(1))  # registered after the request: called at once
    assert late == [1]


# -- the command line, with real signals ----------------------------------------------------

def cli(*args) -> list[str]:
    return [sys.executable, "-m", "galdecon", "deconvolve", *map(str, args)]


COMMON = ["-i", IMAGES, "-p", PSFS, "--n-iter", 150, "--n-reweights", 1, "--convergence", 0,
          "--no-plots", "-q", "--threads", 1]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    done = subprocess.run(cli(*COMMON, "-o", out), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not Path(f"{out}_checkpoint").exists()  # a short run writes none by default
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_signal_writes_a_checkpoint_and_resume_finishes_the_same_run(tmp_path, sig,
                                                                        uninterrupted):
    out = tmp_path / "run"
    ck = tmp_path / "run_checkpoint"
    process = subprocess.Popen(cli(*COMMON, "-o", out, "--checkpoint-every", 40),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (ck / checkpoint.STATE_FILE).exists():  # mid-run: after the first checkpoint
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    t0 = time.monotonic()
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert time.monotonic() - t0 < 10
    assert process.returncode == 128 + sig, err
    name = signal.Signals(sig).name
    assert f"interrupted by {name}" in err and f"--resume {ck}" in err
    saved = checkpoint.load(ck)
    assert 40 <= saved.iteration < 300
    # nothing under a final name, and no temporary left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_checkpoint"]
    assert sorted(p.name for p in ck.iterdir()) == [checkpoint.STATE_FILE]

    done = subprocess.run(cli("--resume", ck), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for part in ("primal", "dual"):
        np.testing.assert_array_equal(np.load(f"{out}_{part}.npy"),
                                      np.load(f"{uninterrupted}_{part}.npy"))
    record = json.loads(Path(f"{out}_run.json").read_text())
    whole = json.loads(Path(f"{uninterrupted}_run.json").read_text())
    assert record["history"]["costs"] == whole["history"]["costs"]
    assert record["reliability"]["resumed_from"]["iteration"] == saved.iteration
    assert not ck.exists()  # removed once the outputs are written


def test_cli_resume_refuses_changed_settings_and_inputs(tmp_path, capsys):
    out = tmp_path / "run"
    stop_at = ["--checkpoint-every", 0]
    # A run stopped by hand: an API stop gives the same checkpoint as a signal.
    stop, progress = stop_after(4)
    images, psfs = np.load(IMAGES), np.load(PSFS)
    with pytest.raises(RunInterrupted):
        galdecon.deconvolve(images, psfs, stop=stop, progress=progress,
                            checkpoint=tmp_path / "api", n_iter=10)
    assert main(["deconvolve", "--resume", str(tmp_path / "api"), "-q"]) == 2
    assert "holds no command-line options" in capsys.readouterr().err

    process = subprocess.Popen(cli(*COMMON, "-o", out, *stop_at), stderr=subprocess.PIPE,
                               text=True)
    time.sleep(3)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    ck = tmp_path / "run_checkpoint"
    assert main(["deconvolve", "--resume", str(ck), "--n-iter", "99", "-q"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume with other settings" in err and "--n-iter 99 (checkpoint: 150)" in err
    other = tmp_path / "other.npy"
    np.save(other, images * 2)
    assert main(["deconvolve", "--resume", str(ck), "-i", str(other), "-q"]) == 2
    assert "images differ" in capsys.readouterr().err
    # a new run refuses to overwrite the checkpoint of the stopped one
    assert main(["deconvolve", *map(str, COMMON), "-o", str(out)]) == 2
    assert f"{ck}: holds the checkpoint of another run" in capsys.readouterr().err
    saved = checkpoint.load(ck)
    assert saved.iteration >= 0  # still there
    # an edited counter: refused on the command line too, exit 2, the file named
    driver = dict(saved.meta["driver"])
    driver["position"] = dict(driver["position"], done_total=10**6)
    rewrite_checkpoint(ck, dict(saved.meta, driver=driver), saved.arrays())
    assert main(["deconvolve", "--resume", str(ck), "-q"]) == 2
    assert f"{ck}: the checkpoint's done_total is 1000000" in capsys.readouterr().err
