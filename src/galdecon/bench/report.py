"""The outputs of ``galdecon bench``: bench.json, bench.csv, the figures and summary.md."""

from __future__ import annotations

import json
from pathlib import Path

from galdecon.bench.sampling import peaks
from galdecon.data import io
from galdecon.errors import InputError


def rewrite_report(out: Path) -> dict:
    """Figures, CSV and summary again from ``OUT/bench.json`` (no measurement)."""
    out = Path(out)
    path = out / "bench.json"
    if not path.is_file():
        raise InputError(f"{path}: no bench.json to report from")
    result = json.loads(path.read_text())
    write_outputs(result, out)
    return result


def write_outputs(result: dict, out: Path) -> None:
    """bench.json, bench.csv (Fig. 2 rows), figures and summary.md."""
    from galdecon.bench.figures import bench_figures

    io.write_json(out / "bench.json", result)
    columns = ["engine", "mode", "partitions", "sync", "mean_s", "std_s", "median_s",
               "syncs_timed", "setup_s", "scatter_s"]
    lines = [",".join(columns)] + [",".join(str(row[c]) for c in columns)
                                   for row in result["fig2"]]
    with io.atomic_path(out / "bench.csv") as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    bench_figures(result, out)
    with io.atomic_path(out / "summary.md") as tmp:
        Path(tmp).write_text(summary(result))


def summary(result: dict) -> str:
    """The markdown tables of a run."""
    m, d = result["machine"], result["data"]
    text = [f"# galdecon bench — n = {d['n']:,}, SNR {d['snr']:g}",
            "", f"{m['cpus']} cores, {m['memory_gib']:.0f} GiB, {m['platform']}; numpy "
            f"{m['numpy']}, pyspark {m.get('pyspark')}, Java {m.get('java')}; load average "
            f"{m['load_average'][0]:.2f} at the start.", "",
            "## Time per iteration (Fig. 2)", "",
            "| engine | mode | N | K | median s/it | mean | std | ratio to local |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    local = {(r["mode"], r["sync"]): r["median_s"] for r in result["fig2"]
             if r["engine"] == "local"}
    for r in result["fig2"]:
        ref = local.get((r["mode"], r["sync"]))
        ratio = f"{r['median_s'] / ref:.2f}" if ref else "–"
        text.append(f"| {r['engine']} | {r['mode']} | {r['partitions']} | {r['sync']} | "
                    f"{r['median_s']:.3f} | {r['mean_s']:.3f} | {r['std_s']:.3f} | {ratio} |")
    text += ["", f"## Full runs, {result['config']['iterations']} sparse iterations (Fig. 4)",
             "", "| engine | N | K | iterations s | set-up s | total s | end to end s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for c in result["fig4"]:
        iterations = c["total_s"] - c["setup_s"] - c["scatter_s"]
        text.append(f"| {c['engine']} | {c.get('partitions', 1)} | {c['sync']} | "
                    f"{iterations:.1f} | {c['setup_s']:.1f} | {c['total_s']:.1f} | "
                    f"{c.get('end_to_end_s', c['total_s']):.1f} |")
    if result["fig3"]:
        text += ["", "## Disk and memory per Spark run (Fig. 3)", "",
                 "Peak disk under Spark's local dirs, MiB written by the JVM and Python "
                 "workers during the run, peak resident memory.", "",
                 "| mode | N | K | group | disk MiB | written MiB | JVM RSS MiB | Python RSS MiB |",
                 "|---|---:|---:|---|---:|---:|---:|---:|"]
        for r in result["fig3"]:
            label = f"{r['sync']} (full run)" if r.get("full_run") else r["sync"]
            for group, p in peaks(r["samples"]).items():
                text.append(f"| {r['mode']} | {r['partitions']} | {label} | {group} | "
                            f"{p['disk_mib']:.0f} | {p['written_mib']:.0f} | "
                            f"{p['jvm_rss_mib']:.0f} | {p['python_rss_mib']:.0f} |")
    floor = result.get("floor")
    if floor:
        r = floor["rates"]
        text += ["", "## The floor", "",
                 f"{floor['flops_per_iteration'] / 1e9:.1f} GFLOP per sparse iteration "
                 f"({floor['flops_per_stamp']['total'] / 1e6:.2f} MFLOP per stamp). One core "
                 f"runs the solver's products at {r['dense_dft_gflops']:.1f} GFLOP/s (DFTs) "
                 f"and {r['wavelet_gflops']:.1f} GFLOP/s (Φ, Φᵀ); scipy.fft takes "
                 f"{r['scipy_fft_s_per_stamp'] * 1e6:.1f} µs per stamp for what the dense "
                 f"DFTs do in {r['dense_dft_s_per_stamp'] * 1e6:.1f} µs; memory copies at "
                 f"{r['memory_gb_per_s']:.1f} GB/s. Floor on {floor['cores']} cores: "
                 f"compute {floor['compute_floor_s']:.3f} s, memory "
                 f"{floor['memory_floor_s']:.3f} s per iteration; measured "
                 f"{floor['measured_s']:.3f} s ({floor['achieved_gflops']:.1f} GFLOP/s, "
                 f"{100 * floor['fraction_of_floor']:.0f}% of the floor's speed)."]
    loop = result.get("loop")
    if loop:
        text += ["", "## Against a per-galaxy loop (reference style)", "",
                 f"{loop['per_galaxy_loop_s'] * 1e3:.3f} ms per galaxy per iteration on "
                 f"{loop['subset']} galaxies (one FFT convolution call per galaxy and "
                 f"filter), i.e. {loop['loop_s_per_iteration_at_n']:.1f} s per iteration at "
                 f"n = {d['n']:,}; the local engine: "
                 f"{loop['per_galaxy_local_s'] * 1e6:.1f} µs per galaxy — "
                 f"**{loop['speedup']:.0f}×** faster."]
    return "\n".join(text) + "\n"
