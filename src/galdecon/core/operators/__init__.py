"""Pure, stateless, batched linear algebra on stacks of stamps."""

from galdecon.core.operators.convolution import Convolution, kernel_to_grid
from galdecon.core.operators.prox import hard_threshold, positivity, soft_threshold
from galdecon.core.operators.wavelet import Wavelet, atrous_filters

__all__ = [
    "Convolution",
    "Wavelet",
    "atrous_filters",
    "hard_threshold",
    "kernel_to_grid",
    "positivity",
    "soft_threshold",
]
