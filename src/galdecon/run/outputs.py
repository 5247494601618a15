"""The fourth step of a run: the primal and dual, gathered or written by the workers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from galdecon.run.inputs import Inputs


@dataclass
class Outputs:
    """What the engine handed back before it was closed.

    Attributes
    ----------
    primal, dual : ndarray or None
        Gathered to the driver (None when written to a store; the primal is still
        gathered then when the truth is given, for the metrics).
    written : object or None
        What the workers wrote into the output store (to finalize it with).
    facts : dict
        The engine's facts for the run record.
    """

    primal: np.ndarray | None
    dual: np.ndarray | None
    written: object = None
    facts: dict | None = None


def collect_outputs(eng, inputs: Inputs, output=None) -> Outputs:
    """Gather ``primal`` and ``dual``, or have each partition write its chunks to ``output``."""
    if output is None:
        out = Outputs(eng.gather("primal"), eng.gather("dual"))
    else:
        written = eng.write_arrays(output, ("primal", "dual"), inputs.n, inputs.chunk)
        primal = eng.gather("primal") if inputs.truth is not None else None
        out = Outputs(primal, None, written)
    out.facts = eng.facts()
    return out
