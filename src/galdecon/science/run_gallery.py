"""The gallery of a finished run, drawn from the files its run record names.

``galdecon deconvolve`` draws it as it ends and ``galdecon show`` draws it again later,
both through :func:`run_gallery`, so they give the same figure. Only the galaxies shown
are read — rows of an npy or FITS file at computed offsets, the chunks that hold them
in a chunked store — never the whole stack. :func:`check_inputs` compares the inputs
with the checksums in the record, so a gallery never shows data other than the run's.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from galdecon.data import chunked
from galdecon.data.digest import sha256
from galdecon.data.sources import StoreStack, split_spec
from galdecon.data.spec import split
from galdecon.data.streaming import open_sources
from galdecon.errors import InputError
from galdecon.science.gallery import gallery, pick_galaxies

RECORD_SUFFIX = "_run.json"


def record_path(stem) -> Path:
    """The run record of an output stem: ``STEM_run.json`` (a ``.json`` path as it is)."""
    path = Path(stem)
    return path if path.name.endswith(".json") else path.with_name(path.name + RECORD_SUFFIX)


def load_record(path: Path) -> dict:
    """Read a ``galdecon deconvolve`` run record, or raise InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: run record not found (galdecon deconvolve -o STEM writes "
                         "STEM_run.json)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable JSON run record ({exc})") from None
    if not (isinstance(record, dict) and record.get("command") == "deconvolve"
            and isinstance(record.get("data"), dict) and record.get("outputs")):
        raise InputError(f"{path}: not the run record of a galdecon deconvolve command "
                         "(no data or outputs section)")
    return record


def _locate(spec: str, where: Path | None, role: str, beside_only: bool = False) -> str:
    """A file the record names: as written, else beside the record; or InputError.

    Names in a record are as the user typed them, relative to the directory the run was
    started in; outputs (``beside_only``) always sit beside the record.
    """
    text, inner = split(spec)
    suffix = f"[{inner}]" if inner is not None else ""
    path = Path(text)
    if "://" in text or path.exists():
        return spec
    if where is not None:
        other = where.parent / (path.name if beside_only else path)
        if not path.is_absolute() and other.exists():
            return str(other) + suffix
    raise InputError(f"{text}: not found: the {role} of the run recorded in "
                     f"{where or 'the record'} (run galdecon show from the directory the "
                     "run was started in, or keep the file beside the record)")


def run_inputs(record: dict, where: Path | None = None) -> dict:
    """The run's images and PSFs specs, located, and whether they are chunked stores."""
    names = record["data"].get("inputs") or {}
    digests = record["data"].get("sha256") or {}
    stored = str(digests.get("images", "")).startswith("store:")
    if "images" not in names:
        raise InputError(f"{where or 'the run record'}: names no images input (data.inputs)")
    images = _locate(names["images"], where, "images input")
    psfs = names.get("psfs")
    if psfs is None and not stored:
        raise InputError(f"{where or 'the run record'}: names no PSF input (data.inputs)")
    psfs = None if psfs is None else _locate(psfs, where, "PSF input")
    return {"images": images, "psfs": psfs, "stored": stored}


def check_inputs(record: dict, inputs: dict, where: Path | None = None) -> None:
    """Refuse inputs whose checksums differ from the record's: they changed since the run.

    Files are hashed whole (streamed, not loaded); stores by their manifests' chunk
    checksums, as the run did.
    """
    recorded = record["data"].get("sha256") or {}
    if inputs["stored"]:
        now = StoreStack.open(inputs["images"], inputs["psfs"]).digests()
    else:
        now = {key: sha256(inputs[key]) for key in ("images", "psfs")}
    for key in ("images", "psfs"):
        if key in recorded and now[key] != recorded[key]:
            name = inputs[key] or inputs["images"]
            raise InputError(f"{name}: changed since the run recorded in "
                             f"{where or 'the record'} (its checksum differs); the gallery "
                             "would not show that run's data")


def read_galaxies(spec: str, indices, default: str, stored: bool) -> np.ndarray:
    """Stamps ``indices`` of a stack (k, N0, N1) — or a shared 2-D PSF whole — reading
    only those (a file's rows, a store's chunks)."""
    if stored:
        url, name = split_spec(spec, default)
        store = chunked.open_store(url)
        if not store.per_galaxy(name):
            return store.read(name)
        return np.concatenate([store.read(name, i, i + 1) for i in indices])
    with contextlib.ExitStack() as stack:
        reader = next(iter(open_sources(spec, None, stack)[0].values()))
        if len(reader.shape) == 2:  # one stamp, or one PSF for all
            whole = reader[0:reader.shape[0]]
            return whole if default == "psfs" else whole[None][list(indices)]
        return np.concatenate([reader[i:i + 1] for i in indices])


def _estimate(record: dict, indices, where: Path | None, located: dict) -> np.ndarray:
    """The primal of the galaxies shown, from the run's primal file or output store."""
    outputs = record["outputs"]
    if located.get("store") is not None:
        estimate = read_galaxies(f"{located['store']}[primal]", indices, "primal", stored=True)
        spec = str(located["store"])
    elif located.get("primal") is not None:  # the run's primal, in memory
        spec = "the primal"
        estimate = np.asarray(located["primal"])[list(indices)]
    elif "store" in outputs:
        spec = _locate(outputs["store"], where, "output store", beside_only=True)
        estimate = read_galaxies(f"{spec}[primal]", indices, "primal", stored=True)
    elif "primal" in outputs:
        spec = _locate(outputs["primal"], where, "primal output", beside_only=True)
        estimate = read_galaxies(spec, indices, "primal", stored=False)
    else:
        raise InputError(f"{where or 'the run record'}: names no primal output")
    shape = (len(indices), *record["data"]["stamp_shape"])
    if estimate.shape != shape:
        raise InputError(f"{spec}: galaxies of shape {estimate.shape[1:]}; the run recorded "
                         f"in {where or 'the record'} wrote {shape[1:]}: not its output")
    return estimate


def run_gallery(record: dict, path: Path, galaxies=None, where: Path | None = None,
                verify: bool = False, located: dict | None = None) -> Path:
    """Draw the gallery of a run from the files its record names; write it to ``path``.

    Parameters
    ----------
    record : dict
        The run record (``STEM_run.json``, or the dict the command line is writing).
    path : path
        The PNG to write (atomically).
    galaxies : sequence of int, optional
        Indices in the input stack; default :func:`~galdecon.science.gallery.pick_galaxies`.
    where : path, optional
        The record's file: names not found as written are looked for beside it.
    verify : bool
        Refuse inputs whose checksums differ from the record's (:func:`check_inputs`).
    located : dict, optional
        ``{'primal': array}`` or ``{'store': path}``: the run's outputs as they are now (a
        run draws its gallery before it renames its outputs into place).

    Returns
    -------
    Path

    Raises
    ------
    InputError
        A file the record names is missing, changed (``verify``), or not the run's.
    """
    n = int(record["data"]["n_images"])
    indices = list(galaxies) if galaxies is not None else pick_galaxies(n)
    inputs = run_inputs(record, where)
    if verify:
        check_inputs(record, inputs, where)
    stored = inputs["stored"]
    observed = read_galaxies(inputs["images"], indices, "images", stored)
    # A store run without -p takes the PSFs from the images' store (its psfs array).
    psfs_spec = inputs["psfs"] or split_spec(inputs["images"], "images")[0]
    psfs = read_galaxies(psfs_spec, indices, "psfs", stored)
    estimate = _estimate(record, indices, where, located or {})
    settings = record["settings"]
    label = Path(where).name.removesuffix(RECORD_SUFFIX) if where is not None else ""
    title = (f"{label + ': ' if label else ''}galdecon {settings['mode']}, "
             f"{record['result']['iterations']} iterations, n = {n}; residual = observed − "
             "PSF ⊛ deconvolved")
    return gallery(observed, psfs, estimate, indices, path, boundary=settings["boundary"],
                   sigma=record["problem"].get("noise_sigma"), title=title)
