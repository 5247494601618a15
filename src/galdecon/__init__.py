"""galdecon: space-variant PSF deconvolution of galaxy image stacks.

Sparse (wavelet) or low-rank regularised deconvolution solved with the Condat–Vũ
primal–dual algorithm, on one machine or on an Apache Spark cluster, with identical
results.
"""

__version__ = "0.1.0"

from galdecon.api import Result, deconvolve  # noqa: E402
from galdecon.errors import (  # noqa: E402
    ConfigError,
    EngineError,
    GalDeconError,
    GalDeconWarning,
    InputError,
    OutputError,
)
from galdecon.problem import Settings  # noqa: E402

__all__ = [
    "ConfigError",
    "EngineError",
    "GalDeconError",
    "GalDeconWarning",
    "InputError",
    "OutputError",
    "Result",
    "Settings",
    "__version__",
    "deconvolve",
]
