"""Stacks in and out: reading, validating and writing npy/FITS files and chunked stores."""
