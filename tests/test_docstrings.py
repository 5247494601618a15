"""The Examples blocks of the public docstrings run and give what they show."""

import doctest

import pytest

import galdecon.api
import galdecon.metrics
import galdecon.operators.wavelet


@pytest.mark.parametrize("module", [galdecon.api, galdecon.metrics, galdecon.operators.wavelet])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
