"""The public names of the data layer, in one place for callers."""

from galdecon.data.digest import array_digest, chunk_sha256, sha256
from galdecon.data.files import (
                                 FITS_SUFFIXES,
                                 NPY_SUFFIXES,
                                 check_dtype,
                                 check_file,
                                 check_size_limit,
                                 file_format,
)
from galdecon.data.fitsfile import FITS_BITPIX
from galdecon.data.output import (
                                 OUTPUT_FORMATS,
                                 atomic_path,
                                 check_inputs_exist,
                                 check_outputs,
                                 fsync_dir,
                                 json_default,
                                 output_paths,
                                 write_array,
                                 write_json,
)
from galdecon.data.readers import peek_shape, read_array
from galdecon.data.spec import split_hdu
from galdecon.data.validate import (
                                 PSF_SUM_TOLERANCE,
                                 PsfSummary,
                                 as_array,
                                 as_stack,
                                 check_finite,
                                 check_psfs_not_zero,
                                 combine_psf_summaries,
                                 psf_summary,
                                 validate_like,
                                 validate_psfs,
                                 validate_weights,
                                 warn_psfs,
)

__all__ = ["FITS_BITPIX", "FITS_SUFFIXES", "NPY_SUFFIXES", "OUTPUT_FORMATS", "PSF_SUM_TOLERANCE",
           "PsfSummary", "array_digest", "as_array", "as_stack", "atomic_path", "check_dtype",
           "check_file", "check_finite", "check_inputs_exist", "check_outputs",
           "check_psfs_not_zero", "check_size_limit", "chunk_sha256", "combine_psf_summaries",
           "file_format", "fsync_dir", "json_default", "output_paths", "peek_shape",
           "psf_summary", "read_array", "sha256", "split_hdu", "validate_like", "validate_weights",
           "validate_psfs", "warn_psfs", "write_array", "write_json"]
