"""Output sets, the stem lock, the writability probe and the free-space check (issue 11).

Each writes real files; the failures are real (``/dev/full``, ``/proc``, a killed process).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from galdecon.data import io
from galdecon.data.memory import format_bytes
from galdecon.data.outputset import (
    OutputSet,
    StemLock,
    check_free_space,
    free_bytes,
    probe_writable,
)
from galdecon.errors import OutputError

SRC = str(Path(__file__).resolve().parents[2] / "src")


def names(directory):
    return sorted(p.name for p in Path(directory).iterdir())


def fill_dev_full(path):
    # A real failing write: /dev/full answers every write with ENOSPC.
    path.write_bytes(b"partial")
    with open("/dev/full", "wb") as handle:
        handle.write(b"x" * 10)


def test_an_output_set_appears_whole_or_not_at_all(tmp_path):
    # Before: each file was renamed into place as soon as written; a failure on the second
    # left the first alone under its final name.
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    paths = {"primal": tmp_path / "r_primal.npy", "dual": tmp_path / "r_dual.npy",
             "record": tmp_path / "r_run.json"}
    with pytest.raises(OutputError) as caught, OutputSet(paths) as out:
        out.write("primal", lambda p: io.write_array(p, np.arange(3.0), "npy"))
        out.write("dual", fill_dev_full)
        out.commit()
    assert str(caught.value) == (f"{paths['dual']}: cannot be written (No space left on "
                                 "device); no output was written")
    assert names(tmp_path) == []  # no final name, no temporary
    with OutputSet(paths) as out:
        out.write("primal", lambda p: io.write_array(p, np.arange(3.0), "npy"))
        out.write("dual", lambda p: io.write_array(p, np.ones(2), "npy"))
        assert len(names(tmp_path)) == 2 and all(n.startswith(".r_") and n.endswith(".tmp")
                                                 for n in names(tmp_path))
        out.write("record", lambda p: io.write_json(p, {"n": 3}))
        assert not any(p.exists() for p in paths.values())  # nothing final before commit
        assert out.commit() == paths
    assert names(tmp_path) == ["r_dual.npy", "r_primal.npy", "r_run.json"]
    np.testing.assert_array_equal(np.load(paths["primal"]), np.arange(3.0))
    assert paths["record"].stat().st_mode & 0o777 != 0o600  # not mkstemp's mode
    # a set with a member never written publishes nothing
    with pytest.raises(OutputError, match=r"r_dual\.npy: was never written"), \
            OutputSet(paths, overwrite=True) as out:
        out.write("primal", lambda p: p.write_bytes(b"new"))
        out.commit()
    assert np.load(paths["primal"]).tolist() == [0.0, 1.0, 2.0]
    assert names(tmp_path) == ["r_dual.npy", "r_primal.npy", "r_run.json"]


def test_commit_replaces_every_old_file_or_none(tmp_path):
    paths = {"a": tmp_path / "r_a.txt", "b": tmp_path / "r_b.txt"}
    for path in paths.values():
        path.write_text("old")
    with pytest.raises(OutputError, match=r"r_a\.txt: exists; pass --overwrite"):
        OutputSet(paths).check()
    with OutputSet(paths, overwrite=True) as out:
        out.write("a", lambda p: p.write_text("new a"))
        out.write("b", lambda p: p.write_text("new b"))
        paths["b"].unlink()
        paths["b"].mkdir()  # another program puts a directory there meanwhile
        with pytest.raises(OutputError, match=r"r_b\.txt: exists and is a directory"):
            out.commit()
    assert paths["a"].read_text() == "old" and paths["b"].is_dir()
    assert names(tmp_path) == ["r_a.txt", "r_b.txt"]  # no temporary, no backup
    paths["b"].rmdir()
    with OutputSet({"a": paths["a"]}) as out:  # without --overwrite a target that appears
        out.write("a", lambda p: p.write_text("mine"))
        with pytest.raises(OutputError, match=r"r_a\.txt: exists; pass --overwrite"):
            out.commit()
    assert paths["a"].read_text() == "old" and names(tmp_path) == ["r_a.txt"]
    paths["b"].write_text("old")
    with OutputSet(paths, overwrite=True) as out:  # a rename fails half-way through commit
        out.write("a", lambda p: p.write_text("new a"))
        out.write("b", lambda p: p.write_text("new b"))
        next(tmp_path.glob(".r_b.txt.*.tmp")).unlink()  # (another program removes it)
        with pytest.raises(OutputError, match=r"r_b\.txt: cannot be written \(No such file"):
            out.commit()
    assert [paths[k].read_text() for k in "ab"] == ["old", "old"]  # r_a.txt taken back
    assert names(tmp_path) == ["r_a.txt", "r_b.txt"]
    with OutputSet(paths, overwrite=True) as out:
        out.write("a", lambda p: p.write_text("new a"))
        out.write("b", lambda p: p.write_text("new b"))
        out.commit()
    assert [paths[k].read_text() for k in "ab"] == ["new a", "new b"]
    assert names(tmp_path) == ["r_a.txt", "r_b.txt"]


def test_a_store_is_published_only_with_its_set(tmp_path):
    # Before: StoreWriter.finalize renamed the store onto its name at once, before the run
    # record existed; with publish=False the set renames it together with the record.
    pytest.importorskip("zarr")
    from galdecon.data import chunked
    from galdecon.data.store.writer import looks_like_store

    paths = {"store": tmp_path / "s.zarr", "record": tmp_path / "s_run.json"}
    for fail in (True, False):
        writer = chunked.create_store(paths["store"], publish=False)
        with OutputSet(paths, directories={"store": looks_like_store}) as out:
            out.adopt("store", writer.work_path)
            with writer:
                writer.create_array("primal", (4, 3, 3), np.float64, chunk=2)
                for start, stop in writer.chunk_bounds("primal"):
                    writer.write_block("primal", start, np.full((stop - start, 3, 3), start))
            store = writer.finalize()
            assert store.read("primal")[3, 0, 0] == 2 and not paths["store"].exists()
            if fail:
                with pytest.raises(OutputError):
                    out.write("record", fill_dev_full)
                continue
            out.write("record", lambda p: io.write_json(p, {"store": str(paths["store"])}))
            out.commit()
        assert names(tmp_path) == ([] if fail else ["s.zarr", "s_run.json"])
    assert chunked.open_store(paths["store"]).read("primal")[3, 0, 0] == 2


def test_the_probe_creates_a_real_file(tmp_path):
    # os.access(W_OK) says yes for /proc to root: a run computed, then could not write.
    probe_writable(tmp_path)
    assert names(tmp_path) == []
    with pytest.raises(OutputError, match=r"^/proc: output directory is not writable "
                                          r"\(creating a file there failed: "):
        probe_writable("/proc")
    with pytest.raises(OutputError, match=r"missing: output directory does not exist"):
        probe_writable(tmp_path / "missing")


def test_free_space_is_checked_with_the_numbers(tmp_path, caplog):
    free = free_bytes(tmp_path)
    assert free > 0
    check_free_space(tmp_path, {"primal": 1000, "dual": 3000})
    sizes = {"primal": free // 2 + 2**30, "dual": free // 2 + 2**30}
    with pytest.raises(OutputError) as caught:
        check_free_space(tmp_path, sizes, hint="choose another -o")
    assert str(caught.value) == (
        f"{tmp_path}: the outputs need about {format_bytes(sum(sizes.values()))} (primal "
        f"{format_bytes(sizes['primal'])}, dual {format_bytes(sizes['dual'])}); the file "
        f"system has {format_bytes(free_bytes(tmp_path))} free; choose another -o")
    with caplog.at_level(logging.WARNING, logger="galdecon"):
        check_free_space(tmp_path, sizes, force=True)
    assert "writing anyway (--force)" in caplog.text


HOLDER = """
import sys, time
from galdecon.data.outputset import StemLock
lock = StemLock(sys.argv[1], "the outputs of r")
lock.acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_the_stem_lock_is_exclusive_and_dies_with_its_process(tmp_path):
    lock_file = tmp_path / "r.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_file)],
                              env=dict(os.environ, PYTHONPATH=SRC), stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        deadline = time.monotonic() + 30
        while not lock_file.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(OutputError) as caught:
            StemLock(lock_file, "the outputs of r", "choose another -o").acquire()
        assert str(caught.value) == (f"{lock_file}: another galdecon process (pid "
                                     f"{holder.pid}) is writing the outputs of r; choose "
                                     "another -o")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert lock_file.exists()  # left behind by the killed process, but no longer locked
    with StemLock(lock_file, "the outputs of r") as lock:
        assert lock_file.read_text() == f"{os.getpid()}\n"
        with pytest.raises(OutputError, match=rf"\(pid {os.getpid()}\)"):
            StemLock(lock_file, "the outputs of r").acquire()  # even from this process
    assert names(tmp_path) == []  # removed on release
    lock.release()  # idempotent
    with pytest.raises(OutputError, match=r"cannot create the lock file of the outputs of r"):
        StemLock("/proc/r.lock", "the outputs of r").acquire()
