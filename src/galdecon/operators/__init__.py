"""Pure, stateless, batched linear algebra on stacks of stamps."""

from galdecon.operators.convolution import Convolution, kernel_to_grid
from galdecon.operators.prox import hard_threshold, positivity, soft_threshold
from galdecon.operators.wavelet import Wavelet, atrous_filters

__all__ = [
    "Convolution",
    "Wavelet",
    "atrous_filters",
    "hard_threshold",
    "kernel_to_grid",
    "positivity",
    "soft_threshold",
]
