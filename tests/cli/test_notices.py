"""Notices: options that do not apply or are capped, and rounds that ran out of iterations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from galdecon.cli.app import main

DATA = Path(__file__).resolve().parents[2] / "data" / "sf_deconvolve_example"
INPUTS = ["-i", str(DATA / "example_image_stack.npy"), "-p", str(DATA / "example_psfs.npy"),
          "--no-plots"]


def notices(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("galdecon: notice: ")]


def test_rounds_stopped_at_n_iter_are_named_with_the_last_test(tmp_path, capsys):
    assert main(["deconvolve", *INPUTS, "-o", str(tmp_path / "a"), "--n-iter", "6"]) == 0
    found = notices(capsys.readouterr().err)
    record = json.loads((tmp_path / "a_run.json").read_text())["result"]
    assert record["stopped_unconverged"] == [0, 1]
    tests = record["last_test_per_round"]
    assert len(tests) == 2 and all(value > 1e-4 for value in tests)
    assert found == [
        f"galdecon: notice: the first solve stopped at --n-iter 6 without converging: the "
        f"last convergence test was {tests[0]:.3g} against --convergence 0.0001",
        f"galdecon: notice: reweighting 1 stopped at --n-iter 6 without converging: the last "
        f"convergence test was {tests[1]:.3g} against --convergence 0.0001"]


@pytest.mark.parametrize("extra", [["--convergence", "0"], ["--convergence", "1e9"]])
def test_no_notice_for_a_fixed_count_or_a_converged_run(tmp_path, capsys, extra):
    # --convergence 0 asks for exactly --n-iter iterations; 1e9 converges at the first test
    assert main(["deconvolve", *INPUTS, "-o", str(tmp_path / "a"), "--n-iter", "8",
                 *extra]) == 0
    assert notices(capsys.readouterr().err) == []
    assert json.loads((tmp_path / "a_run.json").read_text())["result"][
        "stopped_unconverged"] == []


def test_spark_options_on_the_local_engine_are_said_to_be_ignored(tmp_path, capsys):
    assert main(["deconvolve", *INPUTS, "-o", str(tmp_path / "a"), "--n-iter", "2",
                 "--convergence", "0", "--master", "local[2]", "--partitions", "4"]) == 0
    assert notices(capsys.readouterr().err) == [
        "galdecon: notice: --master and --partitions apply to --engine spark; ignored (this "
        "run uses the local engine)"]
    assert main(["deconvolve", *INPUTS, "-o", str(tmp_path / "q"), "--n-iter", "2", "-q",
                 "--convergence", "0", "--master", "local[2]"]) == 0
    assert notices(capsys.readouterr().err) == []  # -q: quiet
    assert main(["deconvolve", *INPUTS, "-o", str(tmp_path / "s"), "--n-iter", "2",
                 "--convergence", "0", "--spark-storage", "disk"]) == 0
    assert notices(capsys.readouterr().err) == [
        "galdecon: notice: --spark-storage applies to --engine spark; ignored (this run uses "
        "the local engine)"]


def test_spark_storage_is_the_one_asked_for_and_recorded(tmp_path, spark_session):
    for storage in ("auto", "disk"):
        out = tmp_path / storage
        assert main(["deconvolve", *INPUTS, "-o", str(out), "--n-iter", "2", "-q",
                     "--convergence", "0", "--engine", "spark", "--spark-storage", storage]) == 0
        record = json.loads((tmp_path / f"{storage}_run.json").read_text())
        assert record["engine"]["storage"] == ("memory" if storage == "auto" else "disk")


def test_partitions_beyond_the_galaxies_are_capped_on_spark(tmp_path, capsys, spark_session):
    assert main(["deconvolve", *INPUTS, "-o", str(tmp_path / "a"), "--n-iter", "2",
                 "--convergence", "0", "--engine", "spark", "--partitions", "500",
                 "--threads", "3"]) == 0
    assert notices(capsys.readouterr().err) == [
        "galdecon: notice: --threads applies to the local engine; ignored on Spark (its "
        "cores are set by --master, e.g. local[4])",
        "galdecon: notice: --partitions 500 capped at 100: one galaxy per partition"]
    record = json.loads((tmp_path / "a_run.json").read_text())
    assert record["engine"]["partitions"] == 100
