"""Percentiles from the raw values, SLOs and goodput, per scenario and over all requests."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np

LATENCIES = ("ttft", "ttfo", "reasoning_time", "tpot", "itl", "itl_chunk", "e2e", "schedule_lag")
PERCENTILES = (50, 90, 99)
SLO_METRICS = ("ttft", "ttfo", "tpot", "itl", "e2e")
_UNIT = {"ms": 1e-3, "s": 1.0, "": 1.0}


def parse_duration(text: str) -> float:
    """`500ms`, `2s`, `1.5` (seconds), `2m` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|)\s*", text)
    if match is None:
        raise ValueError(f"expected a duration such as 500ms, 2s or 1m, got {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    return value * (60.0 if unit == "m" else _UNIT[unit])


def parse_slo(text: str | None) -> dict[str, float]:
    """`ttft=500ms,tpot=100ms` -> {"ttft": 0.5, "tpot": 0.1}; itl is the p99 of a request's per-token gaps."""
    if not text:
        return {}
    slo = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name not in SLO_METRICS:
            raise ValueError(f"unknown SLO metric {name!r}; known: {', '.join(SLO_METRICS)}")
        slo[name] = parse_duration(value)
    return slo


def is_good(record: dict[str, Any], slo: dict[str, float]) -> bool:
    """A request meets the SLO: it finished, produced an answer (content or a call) and every target holds."""
    m = record["metrics"]
    if record["status"] != "ok" or record["error"] or not m or m["ttfo"] is None:
        return False  # failed, or a reasoning answer cut by its budget with nothing after the thinking
    for name, limit in slo.items():
        value = np.percentile(m["itl"], 99) if name == "itl" and m["itl"] else m.get(name)
        if value is not None and value > limit:
            return False
    return True


def percentiles(values: Iterable[float]) -> dict[str, float] | None:
    """p50/p90/p99, mean and count of raw values (None when there are none)."""
    data = np.asarray([v for v in values if v is not None], dtype=float)
    if data.size == 0:
        return None
    out = {f"p{p}": float(np.percentile(data, p)) for p in PERCENTILES}
    return {**out, "mean": float(data.mean()), "max": float(data.max()), "count": int(data.size)}


def summarize(records: list[dict[str, Any]], slo: dict[str, float]) -> dict[str, Any]:
    """Counts, latency percentiles, throughput, goodput and validity of one group of request records."""
    done = [r for r in records if r["status"] == "ok" and r["metrics"]]
    out: dict[str, Any] = {
        "requests": len(records),
        "completed": len(done),
        "errors": sum(r["status"] == "error" for r in records),
        "cancelled": sum(r["status"] == "cancelled" for r in records),
        "not_asked": sum(r["status"] == "not_asked" for r in records),
    }
    if out["not_asked"] and out["not_asked"] == len(records):
        out["not_asked_reason"] = records[0]["not_asked"]
    if not done:
        return out
    start = min(r["sent"] for r in done)
    span = max(r["end"] for r in done) - start
    tokens = sum(r["metrics"]["output_tokens"] for r in done)
    good = [is_good(r, slo) for r in done]
    latency = {}
    for name in LATENCIES:
        if name in ("itl", "itl_chunk"):
            values: list[float] = [v for r in done for v in r["metrics"][name]]
        else:
            values = [r["metrics"][name] for r in done]
        latency[name] = percentiles(values)
    calls = [r for r in done if r["valid"] is not None]
    out.update(
        duration_s=span,
        output_tokens=tokens,
        output_tokens_per_s=tokens / span if span > 0 else None,
        requests_per_s=len(done) / span if span > 0 else None,
        good=int(sum(good)),
        goodput_share=sum(good) / len(records),
        goodput_requests_per_s=sum(good) / span if span > 0 else None,
        answered_share=sum(r["metrics"]["ttfo"] is not None for r in done) / len(done),
        valid_share=sum(bool(r["valid"]) for r in calls) / len(calls) if calls else None,
        validated=len(calls),
        token_counts_match_usage=all(r["metrics"].get("usage_completion_tokens") in (None, r["metrics"]["output_tokens"])
                                     for r in done),
        token_counts=sorted({r["token_counts"] for r in done}),
        latency=latency,
    )
    return out


def summarize_run(records: list[dict[str, Any]], slo: dict[str, float]) -> dict[str, Any]:
    """The whole run and each scenario in it."""
    names = sorted({r["scenario"] for r in records})
    return {"all": summarize(records, slo),
            "scenarios": {n: summarize([r for r in records if r["scenario"] == n], slo) for n in names}}
