"""The one way galdecon imports GalSim, an optional dependency (``galdecon[sim]``)."""

from __future__ import annotations

from galdecon.errors import EngineError


def galsim(needed_for: str = "this", alternative: str | None = None):
    """Return the :mod:`galsim` module, or raise :class:`EngineError` saying how to get it.

    Parameters
    ----------
    needed_for : str
        What needs GalSim, for the message (e.g. ``"simulated data"``).
    alternative : str, optional
        How to do without it, appended to the message in parentheses.
    """
    try:
        import galsim as module
    except ImportError:
        hint = f" (or {alternative})" if alternative else ""
        raise EngineError(f"{needed_for} need GalSim: pip install 'galdecon[sim]'{hint}"
                          ) from None
    return module
