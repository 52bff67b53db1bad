"""Prometheus metrics named as vLLM names them, with the `exaone:` prefix."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.core.outputs import RequestOutput

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                    40.0, 80.0, 160.0, 640.0)
_TOKEN_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                          1.0, 2.5, 5.0, 10.0)


class EngineStatsCollector(Collector):
    """Gauges and the preemption counter read from the engine's stats at scrape time."""

    def __init__(self, stats: Callable[[], dict[str, Any] | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        """Yield the engine's current numbers (nothing while the model loads)."""
        stats = self._stats()
        if stats is None:
            return
        yield GaugeMetricFamily("exaone:num_requests_running", "Requests in the running batch.",
                                value=stats["running"])
        yield GaugeMetricFamily("exaone:num_requests_waiting", "Requests waiting to be scheduled.",
                                value=stats["waiting"])
        usage = GaugeMetricFamily("exaone:kv_cache_usage_perc",
                                  "Fraction of KV-cache blocks in use, per layer kind (0 to 1).",
                                  labels=["kind"])
        blocks = GaugeMetricFamily("exaone:kv_cache_used_blocks", "KV-cache blocks in use, per layer kind.",
                                   labels=["kind"])
        for kind, total in stats["kv_blocks_total"].items():
            used = stats["kv_blocks_used"].get(kind, 0)
            usage.add_metric([kind], used / total if total else 0.0)
            blocks.add_metric([kind], used)
        yield usage
        yield blocks
        yield GaugeMetricFamily("exaone:server_draining", "1 while the server drains after SIGTERM/SIGINT, else 0.",
                                value=int(stats.get("draining", False)))
        preemptions = CounterMetricFamily("exaone:num_preemptions", "Sequences preempted, by cause: memory (a "
                                          "running one could not grow), policy (a waiting one took its place).",
                                          labels=["cause"])
        for cause, count in stats["num_preemptions_by_cause"].items():
            preemptions.add_metric([cause], count)
        yield preemptions
        yield CounterMetricFamily("exaone:num_recomputed_tokens",
                                  "Tokens preempted sequences had computed that the prefix cache no longer held.",
                                  value=stats["num_recomputed_tokens"])
        yield GaugeMetricFamily("exaone:fast_lane_running", "Quick requests running in the fast lane's headroom "
                                "(beyond --max-num-seqs).", value=stats["fast_lane_running"])
        yield GaugeMetricFamily("exaone:fast_lane_slots", "The fast lane's headroom (--fast-lane-slots).",
                                value=stats["fast_lane_slots"])
        yield CounterMetricFamily("exaone:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                                  value=stats["prefix_cache_queries"])
        yield CounterMetricFamily("exaone:prefix_cache_hits", "Prompt tokens the prefix cache supplied.",
                                  value=stats["prefix_cache_hits"])
        yield GaugeMetricFamily("exaone:prefix_cache_hit_rate",
                                "Share of looked-up prompt tokens the prefix cache supplied, since start.",
                                value=stats["prefix_cache_hit_rate"])
        yield from _vllm_gauges(stats)
        if stats.get("spec_decode"):
            yield from _spec_decode_counters(stats["spec_decode"])


def _spec_decode_counters(spec: dict[str, Any]) -> Iterator[Metric]:
    """Speculative decoding's counters under vLLM's names: drafts, drafted and accepted tokens, per position."""
    for name, what in (("num_drafts", "Drafts verified (one per sequence and step)."),
                       ("num_draft_tokens", "Drafted tokens verified."),
                       ("num_accepted_tokens", "Drafted tokens accepted.")):
        yield CounterMetricFamily(f"exaone:spec_decode_{name}", what, value=spec[name])
    per_pos = CounterMetricFamily("exaone:spec_decode_num_accepted_tokens_per_pos",
                                  "Drafted tokens accepted at each position of the draft.", labels=["position"])
    for position, count in enumerate(spec["num_accepted_tokens_per_pos"]):
        per_pos.add_metric([str(position)], count)
    yield per_pos


def _vllm_gauges(stats: dict[str, Any]) -> Iterator[Metric]:
    """The gauges vLLM-aware routers read, under vLLM's names (Gateway API Inference Extension's endpoint
    picker and llm-d by default: waiting, running, KV usage, cache config)."""
    yield GaugeMetricFamily("vllm:num_requests_running", "Requests in the running batch.", value=stats["running"])
    yield GaugeMetricFamily("vllm:num_requests_waiting", "Requests waiting to be scheduled.", value=stats["waiting"])
    # The fuller pool is the one that stops admission, so a router should see that one.
    usage = max((stats["kv_blocks_used"].get(kind, 0) / total
                 for kind, total in stats["kv_blocks_total"].items() if total), default=0.0)
    for name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):  # the current name and the older one
        yield GaugeMetricFamily(name, "KV-cache usage of the fullest pool (1 means 100 percent).", value=usage)
    info = GaugeMetricFamily("vllm:cache_config_info", "KV-cache configuration (value 1).",
                             labels=["block_size", "num_gpu_blocks"])
    info.add_metric([str(stats["block_size"]), str(sum(stats["kv_blocks_total"].values()))], 1.0)
    yield info


class ServerMetrics:
    """One registry per app, so several apps (tests) can live in one process."""

    def __init__(self, engine_stats: Callable[[], dict[str, Any] | None]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.time_to_first_token = Histogram(
            "exaone:time_to_first_token_seconds", "Time from arrival to the first output token.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.inter_token_latency = Histogram(
            "exaone:inter_token_latency_seconds", "Time between two outputs of a request.",
            buckets=_TOKEN_LATENCY_BUCKETS, registry=r)
        self.time_per_output_token = Histogram(
            "exaone:request_time_per_output_token_seconds",
            "Mean time per output token after the first, per request.", buckets=_TOKEN_LATENCY_BUCKETS, registry=r)
        self.e2e_request_latency = Histogram(
            "exaone:e2e_request_latency_seconds", "Time from arrival to the last output.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram(
            "exaone:request_queue_time_seconds", "Time a request waited before its prefill was first scheduled.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("exaone:prompt_tokens", "Prompt tokens processed.", registry=r)
        self.generation_tokens = Counter("exaone:generation_tokens", "Tokens generated.", registry=r)
        self.request_success = Counter(
            "exaone:request_success", "Finished sequences (one per choice) by finish reason.",
            ["finished_reason"], registry=r)
        self.reasoning_cuts = Counter(
            "exaone:reasoning_cuts", "Choices whose thinking was ended early, by what ended it "
            "(budget, answer_reserve, deadline).", ["reason"], registry=r)
        r.register(EngineStatsCollector(engine_stats))

    def count_reasoning_cut(self, reason: str | None) -> None:
        """Count one choice's thinking cut (nothing when the model ended it itself)."""
        if reason is not None:
            self.reasoning_cuts.labels(reason).inc()

    def track(self, num_prompt_tokens: int, num_choices: int) -> RequestTracker:
        """Start timing one engine request."""
        return RequestTracker(self, num_prompt_tokens, num_choices)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class RequestTracker:
    """Latency and token accounting of one engine request, fed with its stream of deltas."""

    def __init__(self, metrics: ServerMetrics, num_prompt_tokens: int, num_choices: int) -> None:
        self.metrics = metrics
        self.arrival = time.monotonic()
        self.first_token: float | None = None
        self.last_output = self.arrival
        self.num_generated = 0
        self.num_choices = num_choices
        self.finished_choices: set[int] = set()
        self.num_prompt_tokens = num_prompt_tokens

    def observe(self, out: RequestOutput) -> None:
        """Account for one step's deltas."""
        now = time.monotonic()
        m = self.metrics
        if self.first_token is None:
            self.first_token = now
            m.time_to_first_token.observe(now - self.arrival)
            if out.metrics is not None and out.metrics.first_scheduled_time is not None:
                m.queue_time.observe(out.metrics.first_scheduled_time - out.metrics.arrival_time)
            m.prompt_tokens.inc(self.num_prompt_tokens)
        else:
            m.inter_token_latency.observe(now - self.last_output)
        self.last_output = now
        for delta in out.outputs:
            self.num_generated += len(delta.token_ids)
            m.generation_tokens.inc(len(delta.token_ids))
            if delta.finish_reason is not None:
                self.finished_choices.add(delta.index)
                m.request_success.labels(delta.finish_reason).inc()

    def finish(self) -> None:
        """Close the request: latencies, and `abort` for every choice that did not finish."""
        m = self.metrics
        now = time.monotonic()
        m.e2e_request_latency.observe(now - self.arrival)
        per_choice = self.num_generated / self.num_choices
        if self.first_token is not None and per_choice > 1:
            # the choices decode side by side, so time per token is per choice
            m.time_per_output_token.observe((now - self.first_token) / (per_choice - 1))
        aborted = self.num_choices - len(self.finished_choices)
        if aborted:
            m.request_success.labels("abort").inc(aborted)
