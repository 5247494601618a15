"""Disk and memory of groups of processes, sampled over a run (``galdecon bench``'s Fig. 3)."""

from __future__ import annotations

import os
import threading
import time


def directory_bytes(path) -> int:
    """Bytes of the regular files under ``path`` (``du -sb``), 0 if it does not exist."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass  # removed while walking
    return total


def _rss_and_writes(processes) -> tuple[float, float]:
    rss = written = 0.0
    for process in processes:
        try:
            rss += process.memory_info().rss
            written += process.io_counters().write_bytes
        except Exception:  # noqa: BLE001 - a process may end between listing and reading
            pass
    return rss / 2**20, written / 2**20


class Sampler:
    """Samples, every ``interval`` seconds, disk and memory of named groups of processes.

    ``groups`` maps a name (``driver``, ``worker0``, ...) to ``(directories, roots)``: the
    bytes under the directories, and the RSS and bytes written of the root processes with
    all their descendants (JVM, Python workers) split into ``jvm`` and ``python``.
    """

    def __init__(self, groups: dict, interval: float = 0.5):
        self.groups, self.interval = groups, float(interval)
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._t0 = time.perf_counter()

    def _sample(self) -> dict:
        import psutil

        row = {"t": time.perf_counter() - self._t0}
        for name, (directories, roots) in self.groups.items():
            procs = []
            for root in roots:
                try:
                    parent = psutil.Process(root)
                    procs += [parent] + parent.children(recursive=True)
                except psutil.Error:
                    continue
            jvm = [p for p in procs if _is_java(p)]
            python = [p for p in procs if p not in jvm]
            jvm_rss, jvm_written = _rss_and_writes(jvm)
            py_rss, py_written = _rss_and_writes(python)
            row[name] = {"disk_mib": sum(directory_bytes(d) for d in directories) / 2**20,
                         "jvm_rss_mib": jvm_rss, "python_rss_mib": py_rss,
                         "written_mib": jvm_written + py_written}
        return row

    def _loop(self):
        while not self._stop.is_set():
            self.samples.append(self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append(self._sample())


def _is_java(process) -> bool:
    try:
        return "java" in os.path.basename(process.exe() or process.name())
    except Exception:  # noqa: BLE001
        return False


def peaks(samples: list[dict]) -> dict:
    """Per group: the largest disk and RSS over the samples, and the MiB written meanwhile."""
    out: dict = {}
    for row in samples:
        for name, values in row.items():
            if name == "t":
                continue
            group = out.setdefault(name, {})
            for key, value in values.items():
                group[key] = max(group.get(key, 0.0), value)
    for name, group in out.items():
        # write_bytes counts since each process started: the run wrote the difference
        group["written_mib"] = samples[-1][name]["written_mib"] - samples[0][name]["written_mib"]
    return out
