"""How much memory this machine has for a run: what is available, and sizes for people.

What a run needs is counted in :mod:`galdecon.run.preflight`, from the footprints the
allocating modules declare.
"""

from __future__ import annotations

import os


def format_bytes(n_bytes: float) -> str:
    """Return a size in binary units: ``'512 B'``, ``'3.2 MiB'``, ``'54.3 GiB'``.

    Examples
    --------
    >>> format_bytes(512), format_bytes(3.2 * 2**20), format_bytes(54.3 * 2**30)
    ('512 B', '3.2 MiB', '54.3 GiB')
    """
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"


def _cgroup_limit() -> int | None:
    """Memory left under this process's cgroup (v2 or v1) limit, if there is one."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as handle:
                text = handle.read().strip()
            with open(usage_file) as handle:
                usage = int(handle.read().strip())
        except (OSError, ValueError):
            continue
        if text.isdigit() and int(text) < 2**60:
            return max(0, int(text) - usage)
    return None


def available_bytes() -> int:
    """Return the memory this process can still use, in bytes.

    ``psutil.virtual_memory().available`` (free plus reclaimable page cache), else
    ``MemAvailable`` of ``/proc/meminfo``, else the free pages (``os.sysconf``); capped by
    a cgroup memory limit when the process runs under one (containers).
    """
    value = None
    try:
        import psutil

        value = int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or unsupported: use the fallbacks
        value = None
    if value is None:
        try:
            with open("/proc/meminfo") as handle:
                for line in handle:
                    if line.startswith("MemAvailable:"):
                        value = int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            value = None
    if value is None:
        try:
            value = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
            value = 0
    limit = _cgroup_limit()
    return int(value if limit is None else min(value, limit))
