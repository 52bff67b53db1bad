"""run, sweep and compare: probe each target, drive the load, write the reports."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from contextlib import AbstractContextManager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import requests

from benchmarks.loadtest.report import manifest, plot_sweep, write_manifest, write_run
from benchmarks.loadtest.runner import run_load
from benchmarks.loadtest.scenarios import EXTENSIONS, ScenarioOptions, parse_mix
from benchmarks.loadtest.servers import exaone_serve, started
from benchmarks.loadtest.stats import LATENCIES, parse_slo
from benchmarks.loadtest.users import LoadConfig


def probe(base_url: str, extensions: str, api_key: str | None) -> dict[str, Any]:
    """What the target is: its models, whether it is exaone-serve (/metrics), its version endpoints."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        models = requests.get(f"{base_url}/v1/models", headers=headers, timeout=10)
        models.raise_for_status()
    except requests.RequestException as e:
        reason = f"HTTP {e.response.status_code}" if e.response is not None else type(e).__name__
        raise ValueError(f"{base_url} does not answer /v1/models ({reason})") from None
    info: dict[str, Any] = {"base_url": base_url, "models": [m["id"] for m in models.json()["data"]]}
    for path in ("/version", "/props"):  # vLLM, llama.cpp
        try:
            r = requests.get(f"{base_url}{path}", headers=headers, timeout=5)
            if r.ok and r.headers.get("content-type", "").startswith("application/json"):
                body = r.json()
                info[path[1:]] = {k: body[k] for k in ("version", "build_info", "model_path") if k in body} or body
        except (requests.RequestException, ValueError):
            pass
    try:
        info["ours"] = "exaone:num_requests_running" in requests.get(f"{base_url}/metrics", timeout=5).text
    except requests.RequestException:
        info["ours"] = False
    if extensions == "auto":
        info["extensions"] = list(EXTENSIONS) if info["ours"] else []
    else:
        info["extensions"] = [] if extensions == "none" else extensions.split(",")
    return info


def load_config(args: argparse.Namespace, target: dict[str, Any], rate: float | None = None) -> LoadConfig:
    """The LoadConfig of one run of `args` against a probed target."""
    options = ScenarioOptions(model=args.model or target["models"][0], prompt_words=args.prompt_words,
                              output_tokens=args.output_tokens, long_prompt_words=args.long_prompt_words,
                              thinking_budget=args.thinking_budget, temperature=args.temperature)
    return LoadConfig(base_url=target["base_url"], mix=parse_mix(args.scenario), options=asdict(options),
                      extensions=target["extensions"], duration=args.duration,
                      users=None if (rate or args.rate) else args.users, rate=rate or args.rate,
                      arrival=args.arrival, burstiness=args.burstiness, drain=args.drain, seed=args.seed,
                      api_key=args.api_key, max_in_flight=args.max_in_flight, processes=args.processes,
                      logprobs=args.logprobs == "on" or (args.logprobs == "auto" and target["ours"]),
                      timeout=args.timeout)


def _load_text(cfg: LoadConfig) -> dict[str, Any]:
    if cfg.rate:
        text = f"open loop, {cfg.rate:g} req/s {cfg.arrival}" + (
            f" (burstiness {cfg.burstiness:g})" if cfg.arrival == "gamma" else "")
    else:
        text = f"closed loop, {cfg.users} users"
    return {"kind": "open" if cfg.rate else "closed", "text": f"{text}, {cfg.duration:g} s, mix {cfg.mix}",
            "users": cfg.users, "rate": cfg.rate, "arrival": cfg.arrival, "duration": cfg.duration}


def one_run(args: argparse.Namespace, name: str, target: dict[str, Any], out: Path,
            rate: float | None = None) -> dict[str, Any]:
    """Run the load once against one target and write its directory; returns the summary."""
    cfg = load_config(args, target, rate)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{name}: {_load_text(cfg)['text']} -> {out}", file=sys.stderr)
    data = run_load(cfg, out, target["ours"], progress=not args.quiet)
    meta = {"target": name, "base_url": target["base_url"], "ours": target["ours"],
            "extensions": target["extensions"], "command": args.command_line, "load": _load_text(cfg)}
    summary = write_run(out, data, meta, parse_slo(args.slo), args.max_lag)
    for warning in summary["client"]["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return summary


def _own_server(args: argparse.Namespace) -> AbstractContextManager[None]:
    """With --serve, `exaone-serve serve` started for the run (args.base_url set to it)."""
    if not args.serve:
        return started(None, args.base_url)
    command, args.base_url = exaone_serve(args.serve_args)
    return started(command, args.base_url)


def run(args: argparse.Namespace) -> None:
    """`bench run`: one target, one load."""
    with _own_server(args):
        _run(args)


def _run(args: argparse.Namespace) -> None:
    target = probe(args.base_url, args.extensions, args.api_key)
    write_manifest(args.out, manifest(args, {"target": target}))
    summary = one_run(args, "target", target, args.out)
    print(f"{args.out / 'report.md'}: {summary['all'].get('completed', 0)} requests, "
          f"{summary['all'].get('output_tokens_per_s') or 0:.1f} output tok/s", file=sys.stderr)


def sweep(args: argparse.Namespace) -> None:
    """`bench sweep`: open-loop rates doubling from --start-rate until goodput falls under the target (or
    halving until it holds), then bisection between the last good and the first bad rate; the best rate
    per scenario is reported."""
    with _own_server(args):
        _sweep(args)


def _sweep(args: argparse.Namespace) -> None:
    target = probe(args.base_url, args.extensions, args.api_key)
    write_manifest(args.out, manifest(args, {"target": target}))
    points: list[dict[str, Any]] = []

    def measure(rate: float) -> bool:
        summary = one_run(args, f"rate {rate:g}", target, args.out / f"rate-{rate:g}", rate)
        points.append({"rate": rate, "valid": summary["client"]["valid"], "all": summary["all"],
                       "scenarios": summary["scenarios"]})
        return summary["all"].get("goodput_share", 0.0) >= args.goodput_target and summary["client"]["valid"]

    # bracket: double from a good rate up to the first bad one (past saturation, higher rates would only
    # queue), or halve from a bad start down to a good one; then bisect between the two
    good, bad, rate = None, None, args.start_rate
    while args.start_rate / 16 <= rate <= args.max_rate and (good is None or bad is None):
        if measure(rate):
            good, rate = rate, rate * 2
        else:
            bad, rate = rate, rate / 2
    for _ in range(args.bisections if good is not None and bad is not None else 0):
        mid = (good + bad) / 2
        if measure(mid):
            good = mid
        else:
            bad = mid
    names = sorted({n for p in points for n in p["scenarios"]})
    best = {"all": _best(points, "all", args.goodput_target),
            **{n: _best(points, n, args.goodput_target) for n in names}}
    result = {"goodput_target": args.goodput_target, "slo": parse_slo(args.slo), "best_rate": best, "points": points}
    (args.out / "sweep.json").write_text(json.dumps(result, indent=1))
    plot_sweep(args.out / "goodput_vs_rate.png", points, args.goodput_target)
    lines = [f"# Sweep of {args.base_url}", "", f"`{args.command_line}`", "",
             f"Highest offered rate whose goodput share stays >= {args.goodput_target:.0%}:", "",
             "| scenario | best req/s |", "| --- | --- |"]
    lines += [f"| {n} | {'-' if r is None else f'{r:g}'} |" for n, r in best.items()]
    lines += ["", "| rate | valid | good share | goodput req/s | output tok/s |", "| --- | --- | --- | --- | --- |"]
    for p in sorted(points, key=lambda p: p["rate"]):
        a = p["all"]
        lines.append(f"| {p['rate']:g} | {p['valid']} | {a.get('goodput_share', 0):.0%} | "
                     f"{a.get('goodput_requests_per_s') or 0:.2f} | {a.get('output_tokens_per_s') or 0:.1f} |")
    (args.out / "report.md").write_text("\n".join([*lines, "", "![goodput](goodput_vs_rate.png)", ""]))
    print(f"{args.out / 'report.md'}: best rate {best['all']}", file=sys.stderr)


def _best(points: list[dict[str, Any]], name: str, share: float) -> float | None:
    """The highest rate at which `name` (and every lower rate measured) held the goodput share."""
    best = None
    for p in sorted(points, key=lambda p: p["rate"]):
        s = p["all"] if name == "all" else p["scenarios"].get(name, {})
        if not p["valid"] or s.get("goodput_share", 0.0) < share:
            break
        best = p["rate"]
    return best


def compare(args: argparse.Namespace) -> None:
    """`bench compare`: the same seeded requests and arrivals to each target in turn, one table of ratios."""
    given = dict(e.split("=", 1) for e in args.target_extensions)
    commands = {name: shlex.split(command) for name, command in (e.split("=", 1) for e in args.target_serve)}
    targets, summaries = {}, {}
    for name, url in args.target:
        with started(commands.get(name), url):
            targets[name] = probe(url, given.get(name, "auto"), args.api_key)
            summaries[name] = one_run(args, name, targets[name], args.out / name)
    write_manifest(args.out, manifest(args, targets))
    (args.out / "compare.json").write_text(json.dumps(summaries, indent=1))
    (args.out / "report.md").write_text(compare_markdown(args.command_line, summaries))
    print(f"{args.out / 'report.md'}", file=sys.stderr)


def _p50(summary: dict[str, Any], metric: str) -> float | None:
    values = (summary.get("latency") or {}).get(metric)
    return values["p50"] if values else None


def compare_markdown(command: str, summaries: dict[str, dict[str, Any]]) -> str:
    """Per scenario: each target's p50 latencies, throughput and goodput, and its ratio to the first target."""
    names = list(summaries)
    base = names[0]
    lines = [f"# Compare: {', '.join(names)} (ratios to {base})", "", f"`{command}`", ""]
    metrics = [m for m in LATENCIES if m not in ("itl_chunk", "schedule_lag")]
    head = "| scenario | target | " + " | ".join(f"{m} p50 ms" for m in metrics) + " | output tok/s | goodput |"
    lines += [head, "|" + " --- |" * (len(metrics) + 4)]
    scenarios = ["all", *sorted({n for s in summaries.values() for n in s["scenarios"]})]
    for scenario in scenarios:
        ref = summaries[base]["all" if scenario == "all" else "scenarios"]
        ref = ref if scenario == "all" else ref.get(scenario, {})
        for name in names:
            s = summaries[name]["all"] if scenario == "all" else summaries[name]["scenarios"].get(scenario, {})
            if s.get("not_asked_reason"):
                lines.append(f"| {scenario} | {name} | not asked ({s['not_asked_reason']} not supported) |"
                             + " |" * (len(metrics) + 1))
                continue
            cells = [_cell(_p50(s, m), _p50(ref, m), 1000, "{:.0f}") for m in metrics]
            cells.append(_cell(s.get("output_tokens_per_s"), ref.get("output_tokens_per_s"), 1, "{:.1f}"))
            cells.append(_cell(s.get("goodput_share"), ref.get("goodput_share"), 100, "{:.0f}%"))
            lines.append(f"| {scenario} | {name} | " + " | ".join(cells) + " |")
    warnings = [f"{n}: {w}" for n, s in summaries.items() for w in s["client"]["warnings"]]
    return "\n".join([*lines, "", *[f"**{w}**" for w in warnings], ""])


def _cell(value: float | None, ref: float | None, scale: float, fmt: str) -> str:
    if value is None:
        return "-"
    text = fmt.format(value * scale)
    return f"{text} ({value / ref:.2f}x)" if ref else text
