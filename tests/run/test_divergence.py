"""Runs that would diverge or lose their thresholds are refused or stopped (issue 11).

On the old main each of these ended with exit 0: ``--condat-tau 100`` diverged (cost 56,
2.9e21, inf), a zero noise estimate removed every threshold, ``--noise-est 1e308`` ended
with an infinite cost, and low rank crashed with a scipy traceback.
"""

from pathlib import Path

import numpy as np
import pytest

import galdecon
from galdecon.cli import main
from galdecon.core.problem import Settings, check_steps, make_problem
from galdecon.errors import ConfigError, DivergenceError

DATA = Path(__file__).resolve().parents[2] / "data" / "sf_deconvolve_example"
IMAGES = DATA / "example_image_stack.npy"
PSFS = DATA / "example_psfs.npy"


def run_cli(tmp_path, capsys, *options):
    out = tmp_path / "out"
    out.mkdir()
    rc = main(["deconvolve", "-i", str(IMAGES), "-p", str(PSFS), "-o", str(out / "run"),
               "--no-plots", "--n-iter", "10", "--n-reweights", "0", *map(str, options)])
    return rc, capsys.readouterr().err.strip(), sorted(p.name for p in out.iterdir())


def test_steps_outside_condats_condition_are_refused_with_the_largest_valid_tau(
        tmp_path, capsys):
    rc, err, files = run_cli(tmp_path, capsys, "--condat-tau", 100)
    assert rc == 2 and files == []
    line = err.splitlines()[-1]
    # beta = 1.0000002 on the example, ||L||^2 = 1, sigma = 0.5: tau <= 1/(beta/2 + 0.5).
    assert "--condat-tau 100.0" in line and "expected at most 0.99999988 " in line
    assert "1/tau - sigma*||L||^2 >= beta/2" in line


def test_the_condition_is_exact_at_its_bound():
    beta, lip, sigma = 1.0000002, 1.0, 0.5
    largest = 1.0 / (beta / 2 + sigma * lip)
    check_steps(largest, sigma, beta, lip)  # 'auto' meets it with equality
    with pytest.raises(ConfigError, match=r"expected at most 0\.9999"):
        check_steps(largest * (1 + 1e-9), sigma, beta, lip)
    # The defaults (tau = sigma = 0.5) hold for any beta <= 3 (unit-sum PSFs: beta <= 1).
    problem = make_problem(Settings(), 10, (41, 41), 3e-4, 3.0)
    assert problem.tau == 0.5
    with pytest.raises(ConfigError, match="condat_tau=0.5"):
        make_problem(Settings(), 10, (41, 41), 3e-4, 3.01)


def test_a_zero_noise_estimate_is_refused_naming_noise_est(example_images, example_psfs):
    padded = np.array(example_images[:8])
    padded[:, :, :26] = 0.0  # 63 % of the pixels equal: the MAD is 0
    with pytest.raises(ConfigError, match=r"noise estimate .* is 0 .*--noise-est SIGMA"):
        galdecon.deconvolve(padded, example_psfs[:8], n_iter=2, n_reweights=0)
    result = galdecon.deconvolve(padded, example_psfs[:8], n_iter=2, n_reweights=0,
                                 noise_est=3e-4)
    assert result.record["problem"]["noise_sigma"] == 3e-4


def test_a_non_finite_cost_stops_the_run_and_writes_nothing(tmp_path, capsys):
    rc, err, files = run_cli(tmp_path, capsys, "--noise-est", "1e308")
    assert rc == 2 and files == []
    line = err.splitlines()[-1]
    assert "the cost at iteration 1 is inf (not finite)" in line and "--noise-est" in line


def test_api_raises_divergence_error(example_images, example_psfs):
    # numpy's overflow warning is what σ = 1e308 does; the error is what the user gets
    with pytest.warns(RuntimeWarning, match="overflow"), \
            pytest.raises(DivergenceError, match="iteration 1 is inf"):
        galdecon.deconvolve(example_images[:4], example_psfs[:4], n_iter=3, n_reweights=0,
                            noise_est=1e308)


def test_low_rank_threshold_that_overflows_is_refused(tmp_path, capsys):
    # It crashed inside scipy's eigh ("eigenvalue bounds are not valid").
    rc, err, files = run_cli(tmp_path, capsys, "-m", "lowr", "--noise-est", "1e308")
    assert rc == 2 and files == []
    assert "low-rank threshold" in err and "not finite" in err


@pytest.mark.parametrize("options", [{"wave_thresh_factor": (1e300, 3, 4)},
                                     {"lowr_thresh_factor": 1e7}])
def test_absurd_threshold_factors_are_refused(options):
    with pytest.raises(ConfigError, match=r"expected .*\[0, 1e\+06\]"):
        Settings(**options)
