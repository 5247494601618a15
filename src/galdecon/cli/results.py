"""The outputs of ``galdecon deconvolve``: where they go, claimed before the run, written as a set.

Before anything is read or computed, :func:`claim_outputs` locks the output stem
(``STEM.lock``: a second run on the same stem is refused), proves that a file can be created
in the output directory, checks that no output exists (unless ``--overwrite``), that the
checkpoint directory is usable, and that the outputs fit in the free space. After the run,
:func:`write_results` writes every output under a temporary name and renames them together:
a failure (a full disk) leaves none of them, and the previous ones (``--overwrite``) intact.

The outputs are the keys of :func:`output_paths`; adding one is one key there and one
:meth:`~galdecon.data.outputset.OutputSet.write` in :func:`write_results`.
"""

from __future__ import annotations

import contextlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from galdecon.data import io
from galdecon.data.outputset import OutputSet, StemLock, check_free_space, probe_writable
from galdecon.errors import OutputError

#: Bytes allowed for an npy header, or a FITS header block and the last block's padding.
ARRAY_OVERHEAD = 2 * 2880
#: The run record: its fixed part, and what each iteration adds (cost, timing).
RECORD_BYTES = 64 * 1024
RECORD_BYTES_PER_ITERATION = 160
#: Any other output (a figure).
FIGURE_BYTES = 2**20
#: A chunked store: its metadata and manifest, and the metadata of each chunk file.
STORE_BYTES = 64 * 1024
STORE_BYTES_PER_CHUNK = 4096


def output_stem(output, input_spec) -> Path:
    """The output stem: ``-o`` as given, or inside it when it is a directory.

    ``-o DIR/`` (a trailing separator) or ``-o DIR`` naming an existing directory writes
    ``DIR/<input stem>_primal.npy``...; without ``-o`` the input file's stem is used in the
    current directory.
    """
    default = Path(io.split_hdu(input_spec)[0].name.split(".")[0])
    if not output:
        return default
    text = os.fspath(output)
    separators = (os.sep, os.altsep) if os.altsep else (os.sep,)
    if text.endswith(separators) or Path(text).is_dir():
        return Path(text) / default.name
    return Path(text)


def output_paths(stem: Path, fmt: str, plots: bool = True) -> dict[str, Path]:
    """The files a deconvolution writes: npy/FITS files, or one chunked store (zarr)."""
    if fmt != "zarr":
        return io.output_paths(stem, fmt, plots=plots)
    paths = {"store": stem.with_name(stem.name + ".zarr"),
             "record": stem.with_name(stem.name + "_run.json")}
    if plots:
        paths["plot"] = stem.with_name(stem.name + "_cost.png")
        paths["gallery"] = stem.with_name(stem.name + "_gallery.png")
    return paths


def lock_path(stem: Path) -> Path:
    """The lock file of an output stem."""
    return stem.with_name(stem.name + ".lock")


def output_sizes(paths: dict, layout: tuple, settings) -> dict[str, int]:
    """Estimated bytes of each output, from the stack's shape and the settings.

    ``layout`` is ``(n, N0, N1, chunk)``: the images' shape and galaxies per chunk (a
    store's; the outputs store is chunked like its input). The arrays are exact (plus
    their headers); a store counts them uncompressed, so it is an upper bound.
    """
    n, n0, n1, chunk = layout
    stack = n * n0 * n1 * np.dtype(settings.dtype).itemsize
    sparse = settings.mode == "sparse"
    arrays = {"primal": stack + ARRAY_OVERHEAD,
              "dual": stack * (settings.n_bands if sparse else 1) + ARRAY_OVERHEAD}
    iterations = settings.n_iter * (1 + (settings.n_reweights if sparse else 0))
    sizes = {}
    for key in paths:
        if key in arrays:
            sizes[key] = arrays[key]
        elif key == "store":
            chunks = 2 * math.ceil(n / max(1, chunk))
            sizes[key] = (arrays["primal"] + arrays["dual"] + STORE_BYTES
                          + chunks * STORE_BYTES_PER_CHUNK)
        elif key == "record":
            sizes[key] = RECORD_BYTES + RECORD_BYTES_PER_ITERATION * iterations
        else:
            sizes[key] = FIGURE_BYTES
    return sizes


def input_layout(spec, stored: bool) -> tuple | None:
    """``(n, N0, N1, chunk)`` of the images from their header or manifest (None if odd)."""
    if stored:
        from galdecon.data import chunked
        from galdecon.data.sources import split_spec

        url, name = split_spec(spec, "images")
        store = chunked.open_store(url)
        shape, chunk = store.shape(name), store.chunk(name)
    else:
        shape = io.peek_shape(spec)[0]
        chunk = shape[0] if shape else 1
    if len(shape) == 2:
        shape, chunk = (1, *shape), 1
    if len(shape) != 3:
        return None  # refused by the validation, with a better message
    return (*shape, chunk)


@contextlib.contextmanager
def claim_outputs(args, files):
    """Lock the stem, check the outputs and the checkpoint directory; yield the OutputSet.

    Everything here runs before any data is read. The lock is held, and the outputs not
    committed are removed, when the block exits.
    """
    from galdecon.data.store.writer import looks_like_store

    paths, inputs = files.paths, files.inputs
    io.check_outputs(paths, inputs, args.overwrite)  # names, inputs, directory: no lock yet
    directory = files.stem.absolute().parent
    probe_writable(directory)
    with StemLock(lock_path(files.stem), f"the outputs of {files.stem}",
                  "wait for it to finish, or choose another -o/--output"):
        io.check_outputs(paths, inputs, args.overwrite)  # again: a run may just have ended
        check_checkpoint_dir(files.checkpoint, inputs, args.resume, args.overwrite)
        directories = {"store": looks_like_store} if "store" in paths else {}
        with OutputSet(paths, args.overwrite, directories) as outputs:
            outputs.check()
            layout = input_layout(args.input, files.stored)
            if layout is not None:
                check_free_space(directory, output_sizes(paths, layout, files.settings),
                                 force=args.force,
                                 hint="free some space or choose another -o/--output (or "
                                      "pass --force to try anyway: a failed write leaves "
                                      "no output behind)")
            yield outputs


def write_results(result, args, files, images, names: dict, argv, outputs: OutputSet) -> dict:
    """Write the primal and dual (unless in a store), the cost curve and the run record.

    All under temporary names, renamed together at the end (with the store, when the
    workers wrote one): a failure leaves no output. The figures are drawn in a second
    thread while this one hashes the inputs and writes the arrays: drawing holds the GIL,
    hashing and writing mostly wait on the disk without it, so the two overlap.
    """
    from galdecon.run.record import CliFacts

    run = result.run_record
    run.cli = CliFacts(argv=list(argv), random_seed=args.random_seed, output_format=files.fmt)
    run.outputs = {k: str(v) for k, v in files.paths.items()}
    # A store's digests are its manifest's (no pass over the data); files are hashed below.
    run.data.sha256 = images.digests() if files.stored else {}
    with ThreadPoolExecutor(1, thread_name_prefix="galdecon-figures") as pool:
        figures = (pool.submit(_write_figures, run.to_dict(), result, files, outputs)
                   if "plot" in files.paths else None)
        if not files.stored:
            run.data.sha256 = {k: io.sha256(v) for k, v in names.items()}
        record = run.to_dict()
        if files.fmt != "zarr":
            header = {"GDMODE": files.settings.mode, "GDNITER": record["result"]["iterations"],
                      "GDSIGMA": record["problem"]["noise_sigma"]}
            outputs.write("primal", lambda p: io.write_array(p, result.primal, files.fmt, header))
            outputs.write("dual", lambda p: io.write_array(p, result.dual, files.fmt, header))
        if figures is not None:
            figures.result()  # its error, if any, is raised here
    outputs.write("record", lambda p: io.write_json(p, record))
    outputs.commit()
    return record


def _write_figures(record: dict, result, files, outputs: OutputSet) -> None:
    """The cost curve and the gallery, drawn from the outputs at their temporary names."""
    from galdecon.science.figures import cost_curve
    from galdecon.science.run_gallery import run_gallery

    outputs.write("plot", lambda p: cost_curve(record, p))
    located = ({"store": outputs.temporary("store")} if files.fmt == "zarr"
               else {"primal": result.primal})
    outputs.write("gallery", lambda p: run_gallery(record, p, where=files.paths["record"],
                                                   located=located))


def check_checkpoint_dir(directory: Path, inputs, resume, overwrite: bool) -> None:
    """Refuse a checkpoint directory that is an input, unwritable, or another run's."""
    from galdecon.run import checkpoint

    resolved = directory.resolve()
    for spec in inputs:
        if spec is not None and io.split_hdu(spec)[0].resolve() == resolved:
            raise OutputError(f"{directory}: the checkpoint directory would be an input file")
    if directory.exists() and not directory.is_dir():
        raise OutputError(f"{directory}: exists and is not a directory; choose another "
                          "--checkpoint")
    parent = resolved if directory.is_dir() else resolved.parent
    try:  # a real file, not os.access: root is told /proc is writable
        probe_writable(parent)
    except OutputError:
        raise OutputError(f"{directory}: checkpoint directory is not writable "
                          f"({parent} is missing or read-only)") from None
    ours = resume is not None and resume.path.resolve() == resolved
    if (directory / checkpoint.STATE_FILE).exists() and not ours and not overwrite:
        raise OutputError(f"{directory}: holds the checkpoint of another run; resume it with "
                          f"--resume {directory}, or pass --overwrite to replace it")
