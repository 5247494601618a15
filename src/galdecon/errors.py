"""The one exception hierarchy of galdecon.

Every error a user can cause is a :class:`GalDeconError`; its message names the file,
the offending index and what was expected, so the command line can print it as one line.
"""


class GalDeconError(Exception):
    """Base class of every error galdecon raises on purpose."""


class InputError(GalDeconError, ValueError):
    """An input file or array is missing, unreadable or not what was expected."""


class ConfigError(GalDeconError, ValueError):
    """An option value is out of range or inconsistent with the data."""


class OutputError(GalDeconError, OSError):
    """An output cannot be written safely (exists, overlaps an input, unwritable)."""


class EngineError(GalDeconError, RuntimeError):
    """An execution engine is unavailable or failed (e.g. Spark or Java missing)."""


class Cancelled(EngineError):
    """A map stopped early because the run was asked to stop (the state is unchanged)."""


class DivergenceError(GalDeconError):
    """The iteration diverged: a cost or estimate became non-finite (no output is written)."""


class RunInterrupted(GalDeconError):
    """The run was stopped by a signal; a checkpoint (if any) says where to resume.

    Attributes
    ----------
    signum : int
        The signal received.
    checkpoint : pathlib.Path or None
        Where the state was saved.
    iteration : int
        Iterations done and saved.
    """

    def __init__(self, message: str, signum: int, checkpoint=None, iteration: int = 0):
        super().__init__(message)
        self.signum = signum
        self.checkpoint = checkpoint
        self.iteration = iteration

    def __reduce__(self):
        # Exception pickles as cls(*self.args), which lacks the signal: rebuild from all four.
        return (type(self), (str(self), self.signum, self.checkpoint, self.iteration),
                self.__dict__)


class GalDeconWarning(UserWarning):
    """Something suspicious in the data that does not stop the run (e.g. PSF sums)."""
