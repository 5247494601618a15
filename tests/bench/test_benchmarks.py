"""Smoke-sized runs of the benchmark scripts, so that they cannot rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


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
                        "--gallery", 2, "--gallery-snr", 10, "--rl-grid", 2, 5, "--out", out,
                        "--figures", figures, cwd=tmp_path)
    results = json.loads((out / "quality.json").read_text())
    runs = results["runs"]
    assert set(runs) == {f"n24_snr10_{m}" for m in
                         ("sparse", "lowr", "wiener", "rl", "rl@2", "rl@5", "observed")}
    # Richardson–Lucy: the best of its grid, by median pixel error
    grid = [runs[f"n24_snr10_rl@{k}"]["summary"]["pixel_error"]["median"] for k in (2, 5)]
    assert runs["n24_snr10_rl"]["summary"]["pixel_error"]["median"] == min(grid)
    pixel = {m: runs[f"n24_snr10_{m}"]["summary"]["pixel_error"]["median"]
             for m in ("sparse", "observed")}
    assert pixel["sparse"] < pixel["observed"]  # deconvolution helps at SNR 10
    assert (figures / "quality_vs_snr.png").read_bytes()[:4] == b"\x89PNG"
    assert (figures / "gallery_n24_snr10.png").is_file()
    assert "galdecon sparse" in stdout and (out / "quality_tables.md").is_file()


@pytest.mark.slow
def test_convergence_quality_benchmark_smoke(tmp_path):
    """The replayed default stop gives the default run's result, bit for bit."""
    pytest.importorskip("galsim")
    import galdecon
    from galdecon.science.metrics import pixel_error
    from galdecon.science.simulate import read_dataset

    out = tmp_path / "quality"
    run_script("convergence_quality.py", "--sizes", 16, "--snr", 10, "--max-iter", 300,
               "--hsm-every", 8, "--data", out, "--out", out, "--figures", tmp_path, cwd=tmp_path)
    runs = json.loads((out / "convergence.json").read_text())["runs"]
    data = read_dataset(out / "sim_n16_seed2017.npz")
    result = galdecon.deconvolve(data["noisy"][10.0], data["psfs"], mode="lowr")
    stop = runs["n16_snr10_lowr"]["stops"]["0.0001"]
    assert stop == [result.record["result"]["iterations"]]
    row = [r for r in runs["n16_snr10_lowr"]["rows"] if r["iteration"] == stop[0]][0]
    assert row["pixel_error"] == float(np.median(pixel_error(data["truth"], result.primal)))
    # the reference's test (a cost every iteration), replayed on the same costs
    reference = galdecon.deconvolve(data["noisy"][10.0], data["psfs"], mode="lowr",
                                    cost_window=1)
    stop = runs["n16_snr10_lowr"]["stops_window1"]["0.0001"]
    assert stop == [reference.record["result"]["iterations"]]
    assert (tmp_path / "quality_vs_iterations.png").is_file()


def test_lowrank_step_benchmark_smoke(tmp_path):
    stdout = run_script("lowrank_step.py", "--sizes", 30, "--iters", 10, "--kinds", "soft",
                        cwd=tmp_path)
    rows = [line.split("|") for line in stdout.splitlines() if line.startswith("| 30 ")]
    assert [(r[2].strip(), r[3].strip()) for r in rows] == [("soft", "10"), ("soft", "1")]
    # the nuclear norm is paid on every iteration with window 1, on one in ten with 10
    nuclear = [float(r[7]) for r in rows]
    assert nuclear[1] > 0 and nuclear[0] < nuclear[1]


def test_iteration_benchmark_smoke(tmp_path):
    stdout = run_script("iteration.py", "--sizes", 20, 40, "--iters", 2, "--dtypes",
                        "float32", "--no-memory", cwd=tmp_path)
    rows = [line for line in stdout.splitlines() if line.startswith("| sparse")
            or line.startswith("| lowr")]
    assert len(rows) == 4


@pytest.mark.slow
@pytest.mark.spark
def test_paper_benchmark_smoke(tmp_path):
    """galdecon bench end to end on 120 galaxies: every figure and table, sane values."""
    pytest.importorskip("galsim")
    from spark_fixtures import spark_or_skip

    spark_or_skip()
    out = tmp_path / "bench"
    stdout = run_script("paper.py", "-o", out, "-n", 120, "--partitions", 2, 3, "--sync", 1, 4,
                        "--timing-iterations", 4, "--lowr-timing-iterations", 2,
                        "--iterations", 8, "--loop-subset", 6, "--loop-iterations", 1,
                        "--driver-memory", "1g", "--sample-seconds", 0.2, cwd=tmp_path)
    result = json.loads((out / "bench.json").read_text())
    rows = {(r["engine"], r["mode"], r["partitions"], r["sync"]): r for r in result["fig2"]}
    assert set(rows) == {("local", "sparse", 1, 1), ("local", "sparse", 1, 4),
                         ("local", "lowr", 1, 1)} | {
        ("spark", "sparse", n, k) for n in (2, 3) for k in (1, 4)} | {
        ("spark", "lowr", n, 1) for n in (2, 3)}
    assert all(r["median_s"] > 0 and r["std_s"] >= 0 for r in rows.values())
    # the full runs: 8 iterations each, the same costs on both engines
    local, spark = result["fig4"]
    assert local["iterations"] == spark["iterations"] == 8
    np.testing.assert_allclose(spark["costs"], local["costs"], rtol=1e-10)
    assert np.all(np.diff(local["elapsed_s"]) >= 0)
    # disk and memory were sampled, per run
    assert len(result["fig3"]) == 7 and all(len(r["samples"]) >= 2 for r in result["fig3"])
    from galdecon.bench.sampling import peaks

    run = next(r for r in result["fig3"] if (r["mode"], r["partitions"], r["sync"])
               == ("sparse", 2, 4))
    driver = peaks(run["samples"])["driver"]
    assert driver["jvm_rss_mib"] > 50 and driver["python_rss_mib"] > 20
    assert 0 <= driver["written_mib"] < 1000
    # the per-galaxy loop is slower per galaxy than the batched engine
    assert result["loop"]["subset"] == 6 and result["loop"]["speedup"] > 1
    assert result["machine"]["cpus"] == os.cpu_count()
    assert 0 < result["floor"]["floor_s"] and result["floor"]["measured_s"] > 0
    for name in ("fig2_time_per_iteration.png", "fig3_disk_memory.png",
                 "fig4_cost_vs_time.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "Time per iteration" in (out / "summary.md").read_text()
    assert (out / "bench.csv").read_text().count("\n") == len(rows) + 1
    assert "results in" in stdout
    # the report again from bench.json alone
    (out / "summary.md").unlink()
    run_script("paper.py", "-o", out, "--report-only", cwd=tmp_path)
    assert "Disk and memory per Spark run" in (out / "summary.md").read_text()


def test_floor_counts_and_arithmetic():
    from galdecon.bench.floor import floor_estimate, iteration_flops

    flops = iteration_flops(41, 3)
    # one transform: real 41×41·41×42 (2 flops a MAC) + complex 41×41·41×21 (8 a MAC)
    assert flops["dft_forward"] == 2 * 41 * 41 * 42 + 8 * 41 * 41 * 21 == 423_612
    # Φ: 41×41·41×123 then three 41×41·41×41 products
    assert flops["wavelet"] == 2 * 41 * 41 * 123 + 3 * 2 * 41**3 == 827_052
    assert flops["total"] == sum(v for k, v in flops.items() if k != "total")
    rates = {"dense_dft_s_per_stamp": 2e-5, "wavelet_s_per_stamp": 3e-5,
             "memory_gb_per_s": 10.0}
    floor = floor_estimate(1000, 2, 0.05, rates=rates, state_bytes_per_galaxy=1e5, sync=4)
    assert floor["compute_floor_s"] == pytest.approx(1000 * 5e-5 / 2)
    assert floor["memory_floor_s"] == pytest.approx(2 * 1000 * 1e5 / 4 / 1e10)
    assert floor["fraction_of_floor"] == pytest.approx(0.025 / 0.05)
    assert floor["achieved_gflops"] == pytest.approx(1000 * flops["total"] / 0.05 / 1e9)


@pytest.mark.spark
def test_spark_long_run_smoke(tmp_path):
    from spark_fixtures import spark_or_skip

    spark_or_skip()
    stdout = run_script("spark_long_run.py", "-n", 40, "--iterations", 20, "--stretch", 10,
                        "--partitions", 2, cwd=tmp_path)
    rows = [line for line in stdout.splitlines() if line.startswith("| 1") and "–" in line]
    assert len(rows) == 2 and "last/first stretch median" in stdout
