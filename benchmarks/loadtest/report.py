"""A run's output directory: requests.jsonl, summary.json, summary.csv, report.md, PNG plots, manifest.json."""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import subprocess
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from benchmarks.loadtest.runner import RunData
from benchmarks.loadtest.stats import LATENCIES, PERCENTILES, percentiles, summarize_run

CDF_METRICS = ("ttft", "ttfo", "tpot", "e2e")
SATURATED_CPU = 0.9  # share of one core: the gevent loop of a process runs on one


def client_view(data: RunData, open_loop: bool, max_lag: float) -> dict[str, Any]:
    """Client CPU, event-loop lag and schedule lateness; a run whose client fell behind is invalid."""
    cpu = [s[1] for s in data.client_samples]
    loop_lag = [s[2] for s in data.client_samples]
    lateness = percentiles(r["sent"] - r["scheduled"] for r in data.records if r["sent"] and r["scheduled"])
    out: dict[str, Any] = {"cpu": percentiles(cpu), "loop_lag": percentiles(loop_lag), "schedule_lag": lateness,
                           "saturated": bool(cpu) and max(cpu) >= SATURATED_CPU, "valid": True, "warnings": []}
    if out["saturated"]:
        out["warnings"].append(f"the load generator's CPU reached {max(cpu):.0%} of a core: its timings are "
                               "suspect; use --processes N or a lighter load")
    if open_loop and lateness is not None and lateness["p99"] > max_lag:
        out["valid"] = False
        out["warnings"].append(f"INVALID: requests left late (p99 schedule lag {lateness['p99'] * 1000:.0f} ms > "
                               f"{max_lag * 1000:.0f} ms): the client fell behind its arrival schedule")
    return out


def server_view(samples: list[dict[str, float]]) -> dict[str, Any] | None:
    """Peaks of our server's gauges over the run, and the preemptions it counted."""
    if not samples:
        return None
    peak = {k: max(s.get(k, 0.0) for s in samples) for k in ("running", "waiting", "kv_usage", "fast_lane")}

    def counted(key: str) -> float | None:  # a counter's growth over the run
        values = [s[key] for s in samples if key in s]
        return values[-1] - values[0] if values else None

    drafts, accepted = counted("spec_drafts"), counted("spec_accepted")
    # speculative decoding: tokens per verified draft step, the accepted drafts plus the target's own
    acceptance = 1 + accepted / drafts if drafts and accepted is not None else None
    return {**{f"{k}_max": v for k, v in peak.items()},
            "preemptions": counted("preemptions"), "preemptions_memory": counted("preemptions_memory"),
            "preemptions_policy": counted("preemptions_policy"), "samples": len(samples),
            "spec_drafts": drafts, "mean_acceptance_length": acceptance}


def write_run(out: Path, data: RunData, meta: dict[str, Any], slo: dict[str, float], max_lag: float) -> dict[str, Any]:
    """Write every file of one run and return its summary."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "requests.jsonl").open("w") as f:
        for r in sorted(data.records, key=lambda r: (r["sent"] or r["scheduled"] or 0.0)):
            f.write(json.dumps(r) + "\n")
    summary = {**meta, "slo": slo, "client": client_view(data, meta["load"]["kind"] == "open", max_lag),
               "server": server_view(data.server_samples), **summarize_run(data.records, slo)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    write_csv(out / "summary.csv", summary)
    plots = [plot_cdfs(out / "latency_cdf.png", data.records), plot_timeline(out / "timeline.png", data)]
    (out / "report.md").write_text(markdown(summary, [p.name for p in plots]))
    return summary


def _rows(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("all", summary["all"]), *summary["scenarios"].items()]


def write_csv(path: Path, summary: dict[str, Any]) -> None:
    """One row per scenario (and `all`): counts, throughput, goodput, percentiles in seconds."""
    fields = ["scenario", "requests", "completed", "errors", "not_asked", "output_tokens_per_s", "requests_per_s",
              "goodput_share", "goodput_requests_per_s", "valid_share"]
    fields += [f"{m}_{p}" for m in LATENCIES for p in (*[f"p{q}" for q in PERCENTILES], "mean")]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for name, s in _rows(summary):
            row = {"scenario": name, **{k: s.get(k) for k in fields[1:10]}}
            for m, values in (s.get("latency") or {}).items():
                for k, v in (values or {}).items():
                    if f"{m}_{k}" in fields:
                        row[f"{m}_{k}"] = v
            writer.writerow(row)


def _ms(values: dict[str, float] | None) -> str:
    if not values:
        return "-"
    return " / ".join(f"{values[f'p{p}'] * 1000:.0f}" for p in PERCENTILES)


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def markdown(summary: dict[str, Any], plots: list[str]) -> str:
    """report.md: the run, validity, a p50/p90/p99 table per scenario, throughput and goodput, client, server."""
    client = summary["client"]
    lines = [f"# Load run against `{summary['target']}` ({summary['base_url']})", "",
             f"`{summary['command']}`", "", f"Load: {summary['load']['text']}; SLO: "
             f"{', '.join(f'{k} <= {v * 1000:.0f} ms' for k, v in summary['slo'].items()) or 'none'}; "
             f"extensions asked: {', '.join(summary['extensions']) or 'none'}.", ""]
    lines += [f"**{w}**" for w in client["warnings"]] + ([""] if client["warnings"] else [])
    lines += ["Latencies in ms, p50 / p90 / p99 over raw values (ITL: per token; ITL chunk: per SSE chunk).", "",
              "| scenario | done / sent | TTFT | TTFO | reasoning | TPOT | ITL | ITL chunk | E2E | lag |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in _rows(summary):
        if s.get("not_asked_reason"):
            lines.append(f"| {name} | not asked ({s['not_asked_reason']} not supported) |" + " |" * 8)
            continue
        lat = s.get("latency") or {}
        lines.append(f"| {name} | {s['completed']} / {s['requests'] - s['not_asked']} | "
                     + " | ".join(_ms(lat.get(m)) for m in LATENCIES) + " |")
    lines += ["", "| scenario | output tok/s | req/s | goodput req/s | good share | valid calls/JSON | errors |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in _rows(summary):
        if "latency" not in s:
            continue
        lines.append(f"| {name} | {_num(s['output_tokens_per_s'], '{:.1f}')} | {_num(s['requests_per_s'])} | "
                     f"{_num(s['goodput_requests_per_s'])} | {_num(s['goodput_share'], '{:.0%}')} | "
                     f"{_num(s['valid_share'], '{:.0%}')} | {s['errors']} |")
    if summary["all"]["cancelled"]:
        lines += ["", f"{summary['all']['cancelled']} requests were still running when the drain ended "
                      "(--drain): cancelled, and left out of the latencies above."]
    cpu, lag = client["cpu"] or {}, client["loop_lag"] or {}
    lines += ["", f"Client: CPU p50 {_num(cpu.get('p50'), '{:.0%}')}, max {_num(cpu.get('max'), '{:.0%}')} of a "
              f"core; event-loop lag p99 {_num((lag.get('p99') or 0) * 1000, '{:.0f}')} ms; run "
              f"{'valid' if client['valid'] else 'INVALID'}."]
    if summary["server"]:
        sv = summary["server"]
        lines.append(f"Server (/metrics): running max {sv['running_max']:.0f}, waiting max {sv['waiting_max']:.0f}, "
                     f"KV use max {sv['kv_usage_max']:.0%}, preemptions {_num(sv['preemptions'], '{:.0f}')} "
                     f"(memory {_num(sv.get('preemptions_memory'), '{:.0f}')}, policy "
                     f"{_num(sv.get('preemptions_policy'), '{:.0f}')}), fast lane max {sv['fast_lane_max']:.0f}.")
        if sv.get("spec_drafts") is not None:
            lines.append(f"Speculative decoding: {sv['spec_drafts']:.0f} drafts verified, mean acceptance length "
                         f"{_num(sv['mean_acceptance_length'], '{:.2f}')} tokens per draft step.")
    lines += ["", *[f"![{p}]({p})" for p in plots], ""]
    return "\n".join(lines)


def plot_cdfs(path: Path, records: list[dict[str, Any]]) -> Path:
    """Latency CDFs per scenario, one panel per metric."""
    fig, axes = plt.subplots(1, len(CDF_METRICS), figsize=(4 * len(CDF_METRICS), 3.2))
    done = [r for r in records if r["metrics"]]
    for ax, metric in zip(axes, CDF_METRICS, strict=True):
        for name in sorted({r["scenario"] for r in done}):
            values = np.sort([r["metrics"][metric] for r in done if r["scenario"] == name
                              and r["metrics"][metric] is not None])
            if values.size:  # from (first value, 0) so that a single request still draws a step
                ax.step(np.r_[values[0], values] * 1000, np.arange(values.size + 1) / values.size, where="post",
                        label=name)
        ax.set(title=metric.upper(), xlabel="ms", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of requests")
    if done:
        axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_timeline(path: Path, data: RunData) -> Path:
    """Output tokens/s and requests in flight per second (client view), beside the server's gauges."""
    done = [r for r in data.records if r["sent"] and r["end"]]
    t0 = data.start
    horizon = max([r["end"] - t0 for r in done] or [1.0])
    bins = np.arange(0, math.ceil(horizon) + 1)
    arrivals = [c[0] - t0 for r in done for c in r["chunks"]]
    weights = [c[1] for r in done for c in r["chunks"]]
    tokens, _ = np.histogram(arrivals, bins=bins, weights=weights)
    in_flight = [sum(r["sent"] - t0 <= t < r["end"] - t0 for r in done) for t in bins[:-1]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    top.plot(bins[:-1], tokens, label="output tok/s")
    top.set(ylabel="tok/s", title="throughput")
    bottom.plot(bins[:-1], in_flight, label="in flight (client)")
    if data.server_samples:
        ts = [s["t"] - t0 for s in data.server_samples]
        bottom.plot(ts, [s.get("running", 0) for s in data.server_samples], label="running (server)")
        bottom.plot(ts, [s.get("waiting", 0) for s in data.server_samples], label="waiting (server)")
        kv = bottom.twinx()
        kv.plot(ts, [s.get("kv_usage", 0) * 100 for s in data.server_samples], "k:", label="KV use %")
        kv.set(ylabel="KV use %", ylim=(0, 105))
    bottom.set(xlabel="s since start", ylabel="requests", title="requests")
    bottom.legend(fontsize=8, loc="upper left")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_sweep(path: Path, points: list[dict[str, Any]], target_share: float) -> Path:
    """Goodput share and goodput req/s against the offered rate, per scenario."""
    fig, (share, rps) = plt.subplots(1, 2, figsize=(9, 3.5))
    names = sorted({n for p in points for n in p["scenarios"]})
    for name in ["all", *names]:
        pts = sorted((p["rate"], p["all"] if name == "all" else p["scenarios"].get(name, {})) for p in points)
        pts = [(r, s) for r, s in pts if "goodput_share" in s]
        share.plot([r for r, _ in pts], [s["goodput_share"] for _, s in pts], "o-", label=name)
        rps.plot([r for r, _ in pts], [s["goodput_requests_per_s"] for _, s in pts], "o-", label=name)
    share.axhline(target_share, color="k", ls=":")
    share.set(xlabel="offered req/s", ylabel="good share", ylim=(0, 1.05))
    rps.set(xlabel="offered req/s", ylabel="goodput req/s")
    rps.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def manifest(args: argparse.Namespace, targets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The command, seeds, versions of the client and of each target (as far as it says)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        commit = None
    return {"command": args.command_line, "seed": args.seed, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "client": {"python": platform.python_version(), "locust": version("locust"),
                       "exaone_serve_commit": commit, "host": platform.node(), "machine": platform.machine()},
            "targets": targets,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if isinstance(v, str | int | float | bool | list | Path | type(None))}}


def write_manifest(out: Path, data: dict[str, Any]) -> None:
    """manifest.json in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps(data, indent=1, default=str))
