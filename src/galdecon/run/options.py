"""Keyword options of :func:`~galdecon.run.api.deconvolve`: Settings fields or engine options."""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers

from galdecon.core.problem import Settings
from galdecon.engines.local import LocalEngine
from galdecon.engines.spark.engine import SparkEngine
from galdecon.errors import ConfigError


def engine_keywords(*engines: type) -> tuple[str, ...]:
    """The keyword parameters the engines' constructors accept (read, so they cannot drift)."""
    names = []
    for engine in engines:
        for name, param in inspect.signature(engine.__init__).parameters.items():
            if name != "self" and param.kind in (param.POSITIONAL_OR_KEYWORD,
                                                 param.KEYWORD_ONLY) and name not in names:
                names.append(name)
    return tuple(names)


#: Options passed to the engine: any keyword of LocalEngine's or SparkEngine's constructor.
ENGINE_OPTIONS = engine_keywords(LocalEngine, SparkEngine)


def split_options(options: dict) -> tuple[dict, dict]:
    """Split keyword options into Settings fields and engine options; reject unknowns."""
    fields = {f.name for f in dataclasses.fields(Settings)}
    settings, engine = {}, {}
    for key, value in options.items():
        if key in fields:
            settings[key] = value
        elif key in ENGINE_OPTIONS:
            engine[key] = value
        else:
            raise ConfigError(f"unknown option {key!r}; expected one of "
                              f"{', '.join(sorted(fields | set(ENGINE_OPTIONS)))}")
    return settings, engine


def resolve_options(settings: Settings | None, options: dict) -> tuple[Settings, dict]:
    """The run's Settings (``settings`` with keyword fields overriding) and engine options."""
    setting_opts, engine_opts = split_options(options)
    if setting_opts or settings:
        settings = (settings or Settings()).replace(**setting_opts)
    else:
        settings = Settings()
    return settings, engine_opts


def check_kernel(kernel) -> float | None:
    """The σ (pixels) of the metrics' Gaussian window: None, or a finite number > 0.

    A NaN σ made every metric NaN and a negative one was taken as given, both silently.
    """
    if kernel is None:
        return None
    if isinstance(kernel, bool) or not isinstance(kernel, numbers.Real) \
            or not math.isfinite(kernel) or kernel <= 0:
        raise ConfigError(f"option kernel={kernel!r}: expected a finite number > 0 (the σ "
                          "in pixels of the Gaussian window applied before the metrics)")
    return float(kernel)
