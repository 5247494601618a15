"""One deconvolution: the API, the driver loop, checkpoints, interruption and recovery."""
