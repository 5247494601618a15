"""deconvolve's keyword options: every engine constructor keyword is accepted, unknowns refused."""

from __future__ import annotations

import inspect

import pytest

from galdecon.engines.local import LocalEngine
from galdecon.engines.spark.engine import SparkEngine
from galdecon.errors import ConfigError
from galdecon.run.api import ENGINE_OPTIONS, split_options


def keywords(cls):
    return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]


@pytest.mark.parametrize("name", keywords(LocalEngine) + keywords(SparkEngine))
def test_each_engine_keyword_is_an_engine_option(name):
    settings, engine = split_options({name: 1})
    assert settings == {} and engine == {name: 1}


def test_the_hand_listed_options_are_still_accepted():
    for name in ("master", "partitions", "spark", "threads", "block_size", "n_blocks",
                 "lineage_every", "verbose", "local_dir"):
        assert name in ENGINE_OPTIONS


def test_settings_fields_and_unknowns():
    assert split_options({"n_iter": 3, "threads": 2}) == ({"n_iter": 3}, {"threads": 2})
    with pytest.raises(ConfigError, match="unknown option 'nope'"):
        split_options({"nope": 1})
