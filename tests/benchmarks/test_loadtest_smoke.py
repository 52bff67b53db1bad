"""`exaone-serve bench run` and `bench compare` for a few seconds against real servers on loopback.

Two tiny random-weight EXAONE servers (one marked as a plain OpenAI server with --target-extensions); the
outputs are checked, not the speed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from harness import live_server, make_engine

from benchmarks.loadtest.scenarios import SCENARIOS
from benchmarks.loadtest.servers import EXAONE_SERVE
from benchmarks.loadtest.stats import LATENCIES
from server.app import create_app

# every scenario in the first round of 6 users (or the first 6 arrivals); short, so that the test is quick
LOAD = ["--scenario", "chat=1,reasoning=1,tools=1,json=1,long=1,copy=1", "--output-tokens", "6", "--prompt-words", "12",
        "--long-prompt-words", "150", "--thinking-budget", "3", "--duration", "2s", "--drain", "40s",
        "--slo", "ttft=30s,tpot=10s", "--quiet"]


@pytest.fixture(scope="module")
def servers(tiny_models):
    engines = [make_engine(str(tiny_models["exaone_hybrid"]), max_model_len=1024) for _ in range(2)]
    try:
        # No answer reserve: with 6 output tokens it would leave the reasoning scenario no thinking to time.
        with live_server(create_app(engines[0], served_model_names=["tiny"], reasoning_answer_reserve=0)) as ours, \
                live_server(create_app(engines[1], served_model_names=["tiny"], reasoning_answer_reserve=0)) as plain:
            yield ours, plain
    finally:
        for engine in engines:
            engine.shutdown()


def bench(*args: str) -> None:
    result = subprocess.run([EXAONE_SERVE, "bench", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def check_run(out: Path, asked: set[str]) -> tuple[dict, list[dict]]:
    """Every file there; every metric present; TTFT <= TTFO <= E2E; token counts equal usage.
    Returns the summary and the request records."""
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    done = [r for r in records if r["status"] == "ok"]
    assert set(summary["scenarios"]) == set(SCENARIOS)
    assert {r["scenario"] for r in done} == asked, [(r["scenario"], r["error"]) for r in records]
    assert all(r["status"] == "ok" or r["status"] == "not_asked" for r in records), records
    for r in done:
        m = r["metrics"]
        assert m["ttft"] is not None and m["e2e"] is not None, r
        assert m["ttft"] <= (m["ttfo"] if m["ttfo"] is not None else m["e2e"]) <= m["e2e"], r
        assert m["output_tokens"] == m["usage_completion_tokens"] == len(m["itl"]) + 1, r
        assert r["token_counts"] == "logprobs" and m["schedule_lag"] >= 0
    overall = summary["all"]
    assert overall["token_counts_match_usage"] and overall["output_tokens_per_s"] > 0
    expected = set(LATENCIES) - ({"reasoning_time"} if "reasoning" not in asked else set())
    assert {k for k, v in overall["latency"].items() if v is not None} == expected
    for values in overall["latency"].values():
        assert values is None or values["p50"] <= values["p90"] <= values["p99"] <= values["max"]
    assert overall["goodput_share"] is not None and summary["client"]["cpu"] is not None
    assert summary["server"]["samples"] > 0  # /metrics scraped: both targets are exaone-serve
    report = (out / "report.md").read_text()
    for name in ("all", *SCENARIOS):
        assert f"| {name} |" in report
    for plot in ("latency_cdf.png", "timeline.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    rows = (out / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("scenario,") and len(rows) == 1 + 1 + len(SCENARIOS)
    return summary, records


def test_run_open_loop_in_two_processes(servers, tmp_path: Path) -> None:
    ours, _ = servers
    bench("run", "--base-url", ours, "--rate", "3", "--arrival", "constant", "--processes", "2", "--out",
          str(tmp_path), *LOAD)
    summary, records = check_run(tmp_path, set(SCENARIOS))
    assert summary["extensions"] == ["reasoning", "thinking_budget", "ignore_eos"]
    assert summary["scenarios"]["reasoning"]["latency"]["reasoning_time"] is not None
    assert sorted(r["id"] for r in records if r["turn"] == 1) == list(range(6))  # 3/s for 2 s, both shares
    assert summary["client"]["valid"] and summary["client"]["schedule_lag"] is not None
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["targets"]["target"]["ours"] and "bench run" in manifest["command"]


def test_compare_closed_loop_marks_missing_extensions_not_asked(servers, tmp_path: Path) -> None:
    ours, plain = servers
    bench("compare", "--target", f"ours={ours}", "--target", f"plain={plain}/v1", "--target-extensions",
          "plain=none", "--users", "6", "--out", str(tmp_path), *LOAD)
    _, ours_records = check_run(tmp_path / "ours", set(SCENARIOS))
    plain_summary, records = check_run(tmp_path / "plain", set(SCENARIOS) - {"reasoning"})
    assert plain_summary["scenarios"]["reasoning"]["not_asked_reason"] == "reasoning, thinking_budget"
    # skipped, never spun on: a user skips reasoning once per round of the mix (5 asked), plus once per user
    asked = sum(r["status"] == "ok" and r["turn"] == 1 for r in records)
    assert 0 < plain_summary["all"]["not_asked"] <= asked / 5 + 6, (plain_summary["all"]["not_asked"], asked)
    # the same seeded conversations on both targets: conversation i is the same scenario everywhere
    streams = [{r["id"]: r["scenario"] for r in rs} for rs in (ours_records, records)]
    assert all(streams[1][i] == scenario for i, scenario in streams[0].items() if i in streams[1])
    report = (tmp_path / "report.md").read_text()
    assert "| reasoning | plain | not asked (reasoning, thinking_budget not supported) |" in report
    assert "| all | plain |" in report and "x) |" in report  # ratios to the first target


@pytest.mark.parametrize(("args", "message"), [
    (["run", "--base-url", "http://127.0.0.1:9", "--users", "2", "--rate", "1"], "not both"),
    (["run", "--base-url", "http://127.0.0.1:9"], "does not answer /v1/models"),
    (["run", "--base-url", "http://127.0.0.1:9", "--scenario", "poetry"], "unknown scenario"),
])
def test_bad_invocations_say_one_line(args: list[str], message: str) -> None:
    result = subprocess.run([EXAONE_SERVE, "bench", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
