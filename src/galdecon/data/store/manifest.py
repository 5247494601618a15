"""A store's manifest: validating what is read, and the provenance written into it."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from collections.abc import Mapping

import numpy as np

from galdecon.data.digest import sha256
from galdecon.data.output import json_default
from galdecon.data.store.location import Where, is_store
from galdecon.data.store.schema import FORMAT, FORMAT_VERSION, MANIFEST, NAME_PATTERN
from galdecon.errors import ConfigError, InputError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def validate_manifest(manifest, url: str) -> dict:
    """Check a manifest read from ``url``; return it, or raise InputError saying what is wrong."""
    def bad(what):
        return InputError(f"{url}: {MANIFEST} is malformed: {what}")

    if not isinstance(manifest, dict):
        raise bad("not a JSON object")
    if manifest.get("format") != FORMAT:
        raise InputError(f"{url}: {MANIFEST} has format {manifest.get('format')!r}; "
                         f"expected {FORMAT!r}")
    version = manifest.get("version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise InputError(f"{url}: {MANIFEST} is format version {version!r}; this galdecon "
                         f"reads versions 1 to {FORMAT_VERSION} (upgrade galdecon)")
    arrays = manifest.get("arrays")
    if not isinstance(arrays, dict) or not arrays:
        raise bad("no arrays")
    lengths = set()
    for name, spec in arrays.items():
        try:
            shape = tuple(int(v) for v in spec["shape"])
            np.lib.format.descr_to_dtype(spec["dtype"])
            chunk = int(spec["chunk"])
            sums = spec["sha256"]
            per_galaxy = spec["per_galaxy"]
            storage = spec["storage"]
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"array {name!r}: {type(exc).__name__}: {exc}") from None
        if not NAME_PATTERN.match(name) or not shape or min(shape) < 1 or chunk < 1:
            raise bad(f"array {name!r}: name, shape {shape} or chunk {chunk} invalid")
        if storage not in ("plain", "records") or not isinstance(per_galaxy, bool):
            raise bad(f"array {name!r}: storage {storage!r} or per_galaxy {per_galaxy!r}")
        n_chunks = -(-shape[0] // chunk)
        if (not isinstance(sums, list) or len(sums) != n_chunks
                or not all(isinstance(s, str) and _HEX64.match(s) for s in sums)):
            raise bad(f"array {name!r}: expected {n_chunks} SHA-256 hex digests")
        if per_galaxy:
            lengths.add(shape[0])
    if len(lengths) > 1 or manifest.get("n_galaxies") != (lengths.pop() if lengths else None):
        raise bad(f"n_galaxies {manifest.get('n_galaxies')!r} does not match the arrays")
    if not isinstance(manifest.get("provenance", {}), dict):
        raise bad("provenance is not an object")
    return manifest


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def make_provenance(command: str | None = None, sources=(), run: dict | None = None) -> dict:
    """The provenance recorded in a store's manifest.

    Parameters
    ----------
    command : str, optional
        The command line (or call) that made the store.
    sources : iterable
        Source files: paths (checksummed here; a store's manifest is checksummed, a file
        ``path[HDU]`` names its file) or ready ``{"path": ..., "sha256": ...}`` dicts.
    run : dict, optional
        Free-form, JSON-serialisable facts of the run (e.g. a simulation's settings).

    Returns
    -------
    dict
        ``command``, ``galdecon_version``, ``created`` (UTC, ISO 8601), ``sources`` and
        ``run``.
    """
    from galdecon.version import __version__

    listed = []
    for source in sources:
        if isinstance(source, Mapping):
            listed.append(dict(source))
            continue
        text = os.fspath(source)
        if is_store(text):
            where = Where(text)
            try:
                digest = hashlib.sha256(where.read_bytes(MANIFEST)).hexdigest()
            except (OSError, ValueError):
                digest = None
            listed.append({"path": text, "sha256": digest, "of": MANIFEST})
        else:
            listed.append({"path": text, "sha256": sha256(text)})
    return {"command": command, "galdecon_version": __version__, "created": _now(),
            "sources": listed, "run": dict(run or {})}


def normalize_provenance(given) -> dict:
    """The provenance given to :func:`create_store`, completed and checked."""
    if given is None:
        return make_provenance()
    if not isinstance(given, Mapping):
        raise ConfigError(f"provenance: expected a dict, got {type(given).__name__}")
    known = {"command", "sources", "run", "galdecon_version", "created"}
    extra = set(given) - known
    if extra:
        raise ConfigError(f"provenance: unknown key(s) {', '.join(sorted(extra))}; expected "
                          f"{', '.join(sorted(known))}")
    made = make_provenance(given.get("command"), given.get("sources", ()), given.get("run"))
    for key in ("galdecon_version", "created"):
        if key in given:
            made[key] = given[key]
    try:
        json.dumps(made, default=json_default)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"provenance: not JSON-serialisable ({exc})") from None
    return made
