"""``check_pickle``: an object survives pickling (as GalSim's ``galsim.utilities.check_pickle``).

Whatever crosses a process — to Spark's workers, a process pool, or back — is pickled;
this checks the copy is of the same type, equal (or ``eq``-equal) and has the same repr,
with :mod:`pickle` and with cloudpickle (what Spark uses) when it is installed.
"""

from __future__ import annotations

import pickle


def picklers() -> list:
    """pickle, and cloudpickle if installed."""
    out = [pickle]
    try:
        import cloudpickle
    except ImportError:
        return out
    return out + [cloudpickle]


def check_pickle(obj, eq=None, irreprable: bool = False):
    """Round-trip ``obj`` through every pickler; assert type, equality and repr are kept.

    ``eq(copy, obj)`` compares (default ``==``); ``irreprable`` skips the repr check (for
    objects whose repr holds an address). Returns the last copy.
    """
    copy = None
    for module in picklers():
        copy = module.loads(module.dumps(obj))
        assert type(copy) is type(obj), (module.__name__, type(copy), type(obj))
        same = eq(copy, obj) if eq is not None else copy == obj
        assert same, f"{module.__name__}: {copy!r} != {obj!r}"
        if not irreprable:
            assert repr(copy) == repr(obj), (module.__name__, repr(copy), repr(obj))
    return copy
