"""Outputs of the suite: the JSON result file, the Markdown table, the PNG chart. Called by
bench.suite (and by the smoke test through it)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

RATIO_TO = [("gocryptfs", "gocryptfs"), ("null", "null cipher"), ("raw", "raw file")]


def summarize(samples: list[float]) -> dict:
    """Median and spread (min, max, and max-min as a fraction of the median) of repeated runs."""
    med = statistics.median(samples)
    return {"median": med, "min": min(samples), "max": max(samples),
            "spread": (max(samples) - min(samples)) / med if med else 0.0, "runs": samples}


def build(results: dict) -> dict:
    """Add per-job summaries and ratios to ``results`` ({"fio": {job: {target: [samples]}}, ...})."""
    summary = {}
    for job, by_target in results["fio"].items():
        summary[job] = {}
        for target, samples in by_target.items():
            s = summarize([x["value"] for x in samples])
            s["unit"] = samples[0]["unit"]
            cpu = [x["daemon_cpu_us_per_request"] for x in samples if "daemon_cpu_us_per_request" in x]
            s["daemon_cpu_us_per_request"] = statistics.median(cpu) if cpu else None
            summary[job][target] = s
        for target, s in summary[job].items():
            s["ratios"] = {ref: (s["median"] / summary[job][ref]["median"]
                                 if ref in summary[job] and summary[job][ref]["median"] else None)
                           for ref, _ in RATIO_TO}
    results["summary"] = summary
    # --io-threads 2 against 1 (issue 12: at least 1.6x on random reads at QD16).
    results["io_threads_ratio"] = {
        job: summary[job]["xts-io2"]["median"] / summary[job]["xts-io1"]["median"]
        for job in summary if {"xts-io1", "xts-io2"} <= set(summary[job])
        and summary[job]["xts-io1"]["median"]}
    pg = results.get("pgbench") or {}
    if pg:
        tps = {k: summarize(v) for k, v in pg.items()}
        for k, s in tps.items():
            s["ratios"] = {ref: (s["median"] / tps[ref]["median"] if ref in tps and tps[ref]["median"]
                                 else None) for ref in ("gocryptfs", "plain")}
        results["pgbench_summary"] = tps
    return results


def _fmt(v, unit) -> str:
    if unit == "MB/s":
        return f"{v:,.0f} MB/s"
    return f"{v / 1000:,.1f}k" if v >= 1000 else f"{v:,.0f}"


def _r(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


def markdown(results: dict, labels: dict) -> str:
    """The Markdown table: per job and target, median (spread) and the ratios to gocryptfs, the
    null cipher and the raw file; then pgbench TPS and ratios."""
    meta = results["meta"]
    lines = [f"fio {meta['fio_version']}, buffered, end_fsync=1, psync (queue depth = threads), "
             f"{meta['size_mib']} MiB file (sequential jobs: one pass; random jobs: {meta['runtime']} s), "
             f"{meta['repeats']} runs per "
             f"configuration in interleaved order, caches dropped before each run. Median (spread = "
             f"(max-min)/median).", "",
             "| job | target | median | spread | vs gocryptfs | vs null cipher | vs raw file | "
             "daemon CPU/request |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for job, by_target in results["summary"].items():
        for target, s in by_target.items():
            r = s["ratios"]
            cpu = s.get("daemon_cpu_us_per_request")
            lines.append(f"| {job} | {labels.get(target, target)} | {_fmt(s['median'], s['unit'])} | "
                         f"{s['spread'] * 100:.0f}% | {_r(r['gocryptfs'])} | {_r(r['null'])} | {_r(r['raw'])} | "
                         f"{'-' if cpu is None else f'{cpu:.1f} us'} |")
    for job, ratio in (results.get("io_threads_ratio") or {}).items():
        lines.append(f"\n{job}: --io-threads 2 / --io-threads 1 = {ratio:.2f}x")
    pg = results.get("pgbench_summary")
    if pg:
        lines += ["", f"pgbench (scale {meta['pg_scale']}, 4 clients, {meta['pg_seconds']} s; ext4 on "
                      "a loop device over the file):", "",
                  "| file under ext4 | TPS (median) | spread | vs gocryptfs | vs plain loop file |",
                  "|---|---:|---:|---:|---:|"]
        for k, s in pg.items():
            lines.append(f"| {k} | {s['median']:,.0f} | {s['spread'] * 100:.0f}% | "
                         f"{_r(s['ratios']['gocryptfs'])} | {_r(s['ratios']['plain'])} |")
    return "\n".join(lines) + "\n"


def chart(results: dict, labels: dict, path: Path) -> None:
    """A grouped bar chart of each job's medians relative to the raw file (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    jobs = list(summary)
    targets = list(next(iter(summary.values())))
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(targets)
    for i, t in enumerate(targets):
        vals = [(summary[j].get(t) or {"ratios": {"raw": 0}})["ratios"]["raw"] or 0 for j in jobs]
        ax.bar([x + i * width for x in range(len(jobs))], vals, width, label=labels.get(t, t))
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(jobs))], jobs, rotation=15, fontsize=8)
    ax.set_ylabel("median relative to the raw file")
    ax.set_title("volumed throughput (fio, one run; ratios carry over between machines)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_all(results: dict, labels: dict, out_dir: Path) -> dict:
    """Write results.json, results.md and results.png into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    build(results)
    paths = {"json": out_dir / "fio.json", "markdown": out_dir / "fio.md", "png": out_dir / "fio.png"}
    paths["json"].write_text(json.dumps(results, indent=2) + "\n")
    paths["markdown"].write_text(markdown(results, labels))
    chart(results, labels, paths["png"])
    return paths
