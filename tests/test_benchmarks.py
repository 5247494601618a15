"""Smoke-sized runs of the benchmark scripts, so that they cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name, *args, cwd):
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), *map(str, args)],
                          capture_output=True, text=True, timeout=600, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_quality_benchmark_smoke(tmp_path):
    pytest.importorskip("galsim")
    out, figures = tmp_path / "quality", tmp_path / "figures"
    stdout = run_script("quality.py", "--sizes", 24, "--snr", 10, "--n-iter", 30,
                        "--gallery", 2, "--gallery-snr", 10, "--out", out,
                        "--figures", figures, cwd=tmp_path)
    results = json.loads((out / "quality.json").read_text())
    runs = results["runs"]
    assert set(runs) == {f"n24_snr10_{m}" for m in
                         ("sparse", "lowr", "wiener", "rl", "observed")}
    pixel = {m: runs[f"n24_snr10_{m}"]["summary"]["pixel_error"]["median"]
             for m in ("sparse", "observed")}
    assert pixel["sparse"] < pixel["observed"]  # deconvolution helps at SNR 10
    assert (figures / "quality_vs_snr.png").read_bytes()[:4] == b"\x89PNG"
    assert (figures / "gallery_n24_snr10.png").is_file()
    assert "galdecon sparse" in stdout and (out / "quality_tables.md").is_file()


def test_iteration_benchmark_smoke(tmp_path):
    stdout = run_script("iteration.py", "--sizes", 20, 40, "--iters", 2, "--dtypes",
                        "float32", "--no-memory", cwd=tmp_path)
    rows = [line for line in stdout.splitlines() if line.startswith("| sparse")
            or line.startswith("| lowr")]
    assert len(rows) == 4
