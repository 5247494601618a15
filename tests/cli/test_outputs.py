"""``galdecon deconvolve``'s outputs appear as a complete set or not at all (issue 11).

Real failures only: writes cut short by a file-size limit (``RLIMIT_FSIZE``, as a full
disk does), a real small filesystem where one can be mounted, ``/proc`` (which takes no
file though ``os.access`` says it is writable to root), and real concurrent processes.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from galdecon.cli.app import main
from galdecon.data import io

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "sf_deconvolve_example"
SRC = str(ROOT / "src")


@pytest.fixture
def small(tmp_path):
    """The first 10 stamps (primal 134,608 bytes as npy, dual 403,568) and 12 others."""
    images, psfs = np.load(DATA / "example_image_stack.npy"), np.load(DATA / "example_psfs.npy")
    np.save(tmp_path / "im.npy", images[:10])
    np.save(tmp_path / "ps.npy", psfs[:10])
    np.save(tmp_path / "other.npy", images[10:22])
    np.save(tmp_path / "other_psf.npy", psfs[10:22])
    return tmp_path


def galdecon_process(cwd, *args, file_size=None, **popen):
    """``python -m galdecon deconvolve ARGS`` in ``cwd`` (optionally under a file-size limit)."""
    def limit():
        # Ignoring SIGXFSZ turns a write beyond the limit into EFBIG, as ENOSPC on a full disk.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    env = dict(os.environ, PYTHONPATH=SRC, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.Popen([sys.executable, "-m", "galdecon", "deconvolve", *map(str, args)],
                            cwd=cwd, env=env, preexec_fn=limit if file_size else None,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finished(process, timeout=120):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err.strip().splitlines()


def listing(directory):
    return sorted(p.name for p in Path(directory).iterdir())


INPUTS = ["im.npy", "other.npy", "other_psf.npy", "ps.npy"]


def test_a_full_disk_leaves_no_output_and_the_next_run_succeeds(small):
    # The primal fitted and the dual did not: a traceback, and r_primal.npy left alone, so
    # the next run was refused ("exists"). Now: one line, exit 2, no file, no temporary.
    args = ["-i", "im.npy", "-p", "ps.npy", "-o", "r", "--n-iter", 5]
    rc, _, err = finished(galdecon_process(small, *args, file_size=200_000))
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("galdecon: error: r_dual.npy: cannot be written (")
    assert err[0].endswith("; no output was written")
    assert listing(small) == INPUTS
    rc, _, err = finished(galdecon_process(small, *args, "-q"))
    assert rc == 0, err
    assert listing(small) == sorted(INPUTS + ["r_cost.png", "r_dual.npy", "r_gallery.png",
                                              "r_primal.npy", "r_run.json"])
    assert np.load(small / "r_dual.npy").shape == (10, 3, 41, 41)


def test_a_full_disk_with_a_store_output_leaves_no_store(small):
    # The workers' store was renamed into place before the record and figure were written:
    # a failure then left s.zarr without s_run.json. Now the store is renamed with them.
    pytest.importorskip("zarr")
    for name, array in (("im", "images"), ("ps", "psfs")):
        assert main(["convert", str(small / f"{name}.npy"), str(small / f"{name}.zarr"),
                     "--array", array, "--chunk", "1", "-q"]) == 0
    args = ["-i", "im.zarr", "-p", "ps.zarr", "-o", "s", "--mode", "lowr", "--n-iter", 5,
            "--cost-window", 1]
    # a chunk of the store is ~12.5 kB, the cost figure (five costs) ~31 kB: it fails
    rc, _, err = finished(galdecon_process(small, *args, file_size=20_000))
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("galdecon: error: s_cost.png: cannot be written (")
    assert listing(small) == sorted(INPUTS + ["im.zarr", "ps.zarr"])
    rc, _, err = finished(galdecon_process(small, *args, "-q"))
    assert rc == 0, err
    from galdecon.data import chunked

    assert chunked.open_store(small / "s.zarr").shape("dual") == (10, 41, 41)
    record = json.loads((small / "s_run.json").read_text())
    assert record["outputs"]["store"] == "s.zarr"


def test_a_small_filesystem_is_refused_before_computing(small):
    # A 400 KiB tmpfs in a user and mount namespace: refused from the sizes, with the numbers;
    # with --force the run writes and the disk really fills (ENOSPC): nothing is left.
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user and mount namespaces here (unshare -rm)")
    disk = small / "disk"
    disk.mkdir()
    command = (f'mount -t tmpfs -o size=400k tmpfs {disk} || exit 99; '
               f'{sys.executable} -m galdecon deconvolve -i im.npy -p ps.npy -o {disk}/r '
               f'--n-iter 5 -q "$@"; echo "rc=$?"; ls -A {disk}')
    env = dict(os.environ, PYTHONPATH=SRC, PYTHONDONTWRITEBYTECODE="1")
    for force in ([], ["--force"]):
        done = subprocess.run(["unshare", "-rm", "sh", "-c", command, "sh", *force], cwd=small,
                              env=env, capture_output=True, text=True, timeout=120)
        if done.returncode == 99:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        assert done.stdout.split() == ["rc=2"], (done.stdout, done.stderr)  # nothing listed
        err = [line for line in done.stderr.splitlines() if line.startswith("galdecon:")]
        if not force:
            assert len(err) == 1, done.stderr
            assert err[0].startswith(f"galdecon: error: {disk}: the outputs need about 2.6 "
                                     "MiB (primal 137.0 KiB, dual 399.6 KiB, record 65.6 "
                                     "KiB, plot 1.0 MiB, gallery 1.0 MiB); the file system "
                                     "has 39")
            assert err[0].endswith("(or pass --force to try anyway: a failed write leaves "
                                   "no output behind)")
        else:
            assert "writing anyway (--force)" in err[0]
            assert err[-1].startswith(f"galdecon: error: {disk}/r_dual.npy: cannot be written (")
            assert err[-1].endswith("; no output was written")


def test_an_output_directory_that_takes_no_file_is_refused_before_computing(small, capsys):
    # os.access(W_OK) is true for /proc to root: the run computed (here 100,000 iterations)
    # and then failed with a traceback. Now a real file is created and removed first.
    # An unwritable --checkpoint passed the same way, and the run went on without one.
    long_run = ["-i", small / "im.npy", "-p", small / "ps.npy", "--n-iter", 100_000,
                "--n-reweights", 0, "--no-plots"]
    for options, expected in ((["-o", "/proc/out"], "/proc: output directory is not writable "
                                                     "(creating a file there failed: "),
                              (["-o", small / "r", "--checkpoint", "/proc/ckpt"],
                               "/proc/ckpt: checkpoint directory is not writable")):
        start = time.perf_counter()
        assert main(["deconvolve", *map(str, long_run + options)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert time.perf_counter() - start < 20
        assert len(err) == 1 and err[0].startswith(f"galdecon: error: {expected}"), err
    assert listing(small) == INPUTS


def wait_for_lock(process, lock: Path, timeout=60) -> int:
    """Wait until ``process`` holds the stem's lock; return the pid written in it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = lock.read_text() if lock.exists() else ""
        if text.strip():
            return int(text)
        assert process.poll() is None, f"the run ended without taking {lock}"
        time.sleep(0.005)
    raise AssertionError(f"{lock} never appeared")


def test_concurrent_runs_on_one_stem_never_mix_their_outputs(small):
    # Two runs on the same -o both exited 0, and the final set could mix files of both
    # (the record of one, the primal of the other). Now the second is refused at once.
    first = ["-i", "im.npy", "-p", "ps.npy", "-o", "r", "--n-iter", 200, "--overwrite", "-q"]
    second = ["-i", "other.npy", "-p", "other_psf.npy", "-o", "r", "--n-iter", 5,
              "--overwrite", "-q"]
    a = galdecon_process(small, *first)
    try:
        pid = wait_for_lock(a, small / "r.lock")
        a.send_signal(signal.SIGSTOP)  # hold it there, lock held, until the second is refused
        assert pid == a.pid and (small / "r.lock").exists()
        rc, _, err = finished(galdecon_process(small, *second))
        assert rc == 2 and len(err) == 1, err
        assert err[0] == (f"galdecon: error: r.lock: another galdecon process (pid {a.pid}) is "
                          "writing the outputs of r; wait for it to finish, or choose another "
                          "-o/--output")
    finally:
        a.send_signal(signal.SIGCONT)
    rc, _, err = finished(a)
    assert rc == 0, err
    assert listing(small) == sorted(INPUTS + ["r_cost.png", "r_dual.npy", "r_gallery.png",
                                              "r_primal.npy", "r_run.json"])  # the lock is gone too
    record = json.loads((small / "r_run.json").read_text())
    assert record["cli"]["argv"] == ["deconvolve", *map(str, first)]
    assert record["data"]["sha256"]["images"] == io.sha256(small / "im.npy")
    assert np.load(small / "r_primal.npy").shape == (10, 41, 41)  # the first's 10 stamps


def test_the_lock_of_a_killed_run_does_not_block_the_next(small):
    # A run killed while it holds the lock leaves r.lock behind; flock died with it.
    a = galdecon_process(small, "-i", "im.npy", "-p", "ps.npy", "-o", "r", "--n-iter", 200)
    wait_for_lock(a, small / "r.lock")
    a.kill()
    a.communicate(timeout=60)
    assert (small / "r.lock").exists()
    assert main(["deconvolve", "-i", str(small / "im.npy"), "-p", str(small / "ps.npy"), "-o",
                 str(small / "r"), "--n-iter", "5", "--no-plots", "-q"]) == 0
    assert listing(small) == sorted(INPUTS + ["r_dual.npy", "r_primal.npy", "r_run.json"])


def test_an_output_naming_a_directory_writes_inside_it(small, capsys):
    # -o DIR/ (or an existing DIR) wrote DIR_primal.npy beside the directory.
    (small / "out").mkdir()
    run = ["deconvolve", "-i", str(small / "im.npy"), "-p", str(small / "ps.npy"), "--n-iter",
           "5", "--no-plots", "-q"]
    assert main([*run, "-o", str(small / "out") + os.sep]) == 0
    assert listing(small / "out") == ["im_dual.npy", "im_primal.npy", "im_run.json"]
    shutil.rmtree(small / "out")
    (small / "out").mkdir()
    assert main([*run, "-o", str(small / "out")]) == 0
    assert listing(small / "out") == ["im_dual.npy", "im_primal.npy", "im_run.json"]
    record = json.loads((small / "out" / "im_run.json").read_text())
    assert record["outputs"]["primal"] == str(small / "out" / "im_primal.npy")
    assert main([*run, "-o", str(small / "missing") + os.sep]) == 2
    assert f"output directory {small / 'missing'} does not exist" in capsys.readouterr().err
    assert listing(small) == sorted(INPUTS + ["out"])
