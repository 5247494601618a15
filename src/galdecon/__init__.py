"""galdecon: space-variant PSF deconvolution of galaxy image stacks.

Sparse (wavelet) or low-rank regularised deconvolution solved with the Condat–Vũ
primal–dual algorithm, on one machine or on an Apache Spark cluster, with identical
results.
"""

from galdecon.core.problem import Settings  # noqa: E402
from galdecon.errors import (  # noqa: E402
    ConfigError,
    EngineError,
    GalDeconError,
    GalDeconWarning,
    InputError,
    OutputError,
    RunInterrupted,
)
from galdecon.run.api import Result, deconvolve  # noqa: E402
from galdecon.version import __version__  # noqa: E402

__all__ = [
    "ConfigError",
    "EngineError",
    "GalDeconError",
    "GalDeconWarning",
    "InputError",
    "OutputError",
    "Result",
    "RunInterrupted",
    "Settings",
    "__version__",
    "deconvolve",
]
