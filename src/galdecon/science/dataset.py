"""The simulated data set on disk: one ``.npz`` file, written deterministically.

Members (each a plain ``.npy`` array, no pickles): ``truth``, ``psfs``, ``clean``,
``noisy_snr{S}`` per SNR level (``S`` written with ``%g``: ``noisy_snr1``,
``noisy_snr2.5``), ``snr``, ``sigma`` (n, levels), ``sigma_snr{S}`` (n,: the σ of each
galaxy's noise at level S, a column of ``sigma``; not in files of format version 1),
``catalogue`` (a structured array) and ``meta`` (a JSON string). :func:`numpy.savez`
stamps every member with the current time; this writer uses a fixed date, a fixed order
and no compression, so the same data give the same bytes. The file is written to a
temporary name and renamed (:func:`io.atomic_path`).
"""

from __future__ import annotations

import csv
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from galdecon.data import io
from galdecon.errors import InputError

FORMAT = "galdecon-simulation"
_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip file can hold
ARRAYS = ("truth", "psfs", "clean", "snr", "sigma", "catalogue")


def snr_label(level: float) -> str:
    """``1.0 -> '1'``, ``2.5 -> '2.5'``: how an SNR level appears in names."""
    return f"{float(level):g}"


def _members(dataset: dict):
    yield "meta", np.array(json.dumps(dataset["meta"], sort_keys=True, default=io.json_default))
    for key in ARRAYS:
        yield key, np.asarray(dataset[key])
    for level in dataset["snr"]:
        yield f"noisy_snr{snr_label(level)}", np.asarray(dataset["noisy"][float(level)])
    for k, level in enumerate(dataset["snr"]):
        yield f"sigma_snr{snr_label(level)}", np.asarray(dataset["sigma"])[:, k]


def write_dataset(path, dataset: dict) -> Path:
    """Write a data set (as returned by :func:`galdecon.science.simulate.simulate`) atomically."""
    path = Path(path)
    with io.atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for key, array in _members(dataset):
                info = zipfile.ZipInfo(f"{key}.npy", date_time=_DATE)
                info.external_attr = 0o644 << 16
                with archive.open(info, "w", force_zip64=True) as handle:
                    np.lib.format.write_array(handle, np.asarray(array, order="C"),
                                              allow_pickle=False)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
    return path


def read_dataset(path) -> dict:
    """Read a data set written by :func:`write_dataset`; the same dict :func:`simulate` returns.

    Raises
    ------
    InputError
        Missing file, not a zip of arrays, pickled content, or a missing member.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            members = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{path}: not a readable simulated data set ({exc})") from None
    missing = [k for k in ("meta",) + ARRAYS if k not in members]
    if missing:
        raise InputError(f"{path}: not a galdecon simulated data set; missing "
                         f"{', '.join(missing)} (members: {', '.join(sorted(members))})")
    meta = json.loads(str(members["meta"].item()))
    if meta.get("format") != FORMAT:
        raise InputError(f"{path}: format {meta.get('format')!r}; expected {FORMAT!r}")
    out = {key: members[key] for key in ARRAYS}
    out["meta"] = meta
    out["noisy"] = {}
    for level in out["snr"]:
        key = f"noisy_snr{snr_label(level)}"
        if key not in members:
            raise InputError(f"{path}: no member {key} for SNR {snr_label(level)}")
        out["noisy"][float(level)] = members[key]
    return out


def read_truth(spec) -> np.ndarray:
    """Read true images from a data set (``.npz``: its ``truth``) or an npy/FITS stack."""
    path = io.split_hdu(spec)[0]
    if path.name.lower().endswith(".npz"):
        return read_dataset(path)["truth"]
    return io.read_array(spec)


def export_npy(dataset: dict, directory) -> list[Path]:
    """Write the data set as plain ``.npy`` files and a CSV catalogue into ``directory``.

    ``truth.npy``, ``psfs.npy``, ``clean.npy``, ``noisy_snr{S}.npy`` and ``catalogue.csv``;
    the directory is created if needed, and each file is written atomically.

    These are what ``galdecon deconvolve -i noisy_snr10.npy -p psfs.npy -c truth.npy`` reads.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = [io.write_array(directory / f"{key}.npy", dataset[key], "npy")
               for key in ("truth", "psfs", "clean")]
    for level in dataset["snr"]:
        written.append(io.write_array(directory / f"noisy_snr{snr_label(level)}.npy",
                                      dataset["noisy"][float(level)], "npy"))
    written.append(write_catalogue_csv(directory / "catalogue.csv", dataset["catalogue"]))
    return written


def write_catalogue_csv(path, catalogue: np.ndarray) -> Path:
    """Write the catalogue as CSV; vector fields become one column per SNR level."""
    path = Path(path)
    names = catalogue.dtype.names
    levels = [snr_label(s) for s in catalogue["snr"][0]] if "snr" in names and len(catalogue) \
        else None
    header, columns = [], []
    for name in names:
        if name == "snr" and levels:
            continue  # the levels are in the column names
        values = catalogue[name]
        if values.ndim == 1:
            header.append(name)
            columns.append(values)
        else:
            for k in range(values.shape[1]):
                header.append(f"{name}_snr{levels[k]}" if levels else f"{name}_{k}")
                columns.append(values[:, k])
    with io.atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in zip(*columns, strict=True):
            writer.writerow([_csv_value(v) for v in row])
    return path


def _csv_value(value):
    if isinstance(value, (np.floating, float)):
        return repr(float(value))
    if isinstance(value, np.bool_):
        return int(value)
    return value.item() if isinstance(value, np.generic) else value
