"""Stopping a run on SIGINT/SIGTERM at a consistent state.

The first signal only *asks* to stop: :class:`StopRequest` records it and cancels the
engine's running map (the local engine stops between blocks, Spark cancels its jobs), so
the driver is back at its last complete synchronisation within a fraction of a second;
the driver then saves a checkpoint and raises :class:`~galdecon.errors.RunInterrupted`.
A second signal raises ``KeyboardInterrupt`` at once (outputs and checkpoints are written
atomically, so that never leaves a half-written file under a final name).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable

from galdecon.errors import RunInterrupted

log = logging.getLogger("galdecon")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """A request to stop a run, set from a signal handler (or any thread).

    Attributes
    ----------
    signum : int or None
        The signal that asked to stop (None: not asked).
    """

    def __init__(self):
        self.signum: int | None = None
        self._save: Callable | None = None
        self._cancel: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._handler = None

    def reclaim_signals(self) -> None:
        """Install this request's handlers again (after e.g. SparkContext replaced them)."""
        if self._handler is not None and threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                signal.signal(sig, self._handler)

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.signum is not None

    def on_request(self, cancel: Callable[[], None]) -> None:
        """Call ``cancel()`` when a stop is asked for (at once if it already was)."""
        with self._lock:
            self._cancel.append(cancel)
            asked = self.requested
        if asked:
            cancel()

    def on_save(self, save: Callable) -> None:
        """Call ``save(driver) -> path or None`` once when the driver stops.

        It writes the checkpoint the resume command will read.
        """
        self._save = save

    def request(self, signum: int = signal.SIGINT) -> None:
        """Ask the run to stop at its next consistent state."""
        with self._lock:
            first = self.signum is None
            if first:
                self.signum = int(signum)
            cancels = list(self._cancel) if first else []
        for cancel in cancels:
            try:
                cancel()
            except Exception as exc:  # a dead engine must not hide the request
                log.debug("cancel failed: %s", exc)

    def interrupted(self, driver) -> RunInterrupted:
        """Save the driver's state (once) and return the exception to raise.

        ``driver`` is None when the run stopped before its set-up was complete.
        """
        path = self._save(driver) if self._save is not None and driver is not None else None
        self._save = None
        done = driver.position.done_total if driver is not None else 0
        name = signal.Signals(self.signum).name
        where = (f"state after {done} iterations saved to {path}" if path is not None
                 else "no checkpoint was written")
        return RunInterrupted(f"interrupted by {name}: {where}", self.signum, path, done)


@contextlib.contextmanager
def handle_signals(stop: StopRequest):
    """Route SIGINT and SIGTERM to ``stop`` while the block runs (main thread only).

    The first signal calls :meth:`StopRequest.request`; a second one raises
    ``KeyboardInterrupt``. The previous handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.requested:
            raise KeyboardInterrupt
        log.warning("%s received: stopping at the next synchronisation (again to abort)",
                    signal.Signals(signum).name)
        stop.request(signum)

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    stop._handler = handler
    try:
        yield stop
    finally:
        stop._handler = None
        for sig, old in previous.items():
            signal.signal(sig, old)
