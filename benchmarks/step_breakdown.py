"""Where an engine step goes: phase timers per step, and the matmul share of op time from torch.profiler.

    .venv/bin/python benchmarks/step_breakdown.py --batch 1 16 32             # offline decode steps
    .venv/bin/python benchmarks/step_breakdown.py --http --concurrency 16     # the same through HTTP/SSE

Offline: B prompts are prefilled, then --steps decode steps at batch B are timed phase by phase
(schedule, prepare, forward, logits, sample, process) and --profile-steps more run under the torch
profiler. HTTP: the server runs in this process as `exaone-serve serve` runs it (model loaded and
stepped on one thread, uvicorn on the main thread), benchmarks/serving.py drives it from another
process, and the phases are timed on the engine thread; "between steps" is the loop's own work
(delivering outputs to the event loop, draining its inbox) plus waiting for the GIL.
On a shared machine read the shares, which hold up under load better than absolute times.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from throughput import chat_prompts
from torch.profiler import ProfilerActivity, profile

from engine import SamplingParams
from engine.config import QUANTIZATION_MODES, EngineConfig
from engine.core.llm_engine import LLMEngine

PHASES = ("schedule", "prepare", "forward", "logits", "sample", "process")
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "mkldnn::_linear_pointwise", "exaone_cpu::int8_linear",
              "exaone_cpu::int8_x8_linear",
              "exaone_cpu::fp16_linear"}


class StepTimer:
    """Wraps an engine's phase methods with perf_counter timers; one record per step."""

    def __init__(self, engine: LLMEngine) -> None:
        self.records: list[dict[str, float]] = []
        self.current: dict[str, float] = defaultdict(float)
        self.batch_sizes: list[int] = []
        targets = {"schedule": (engine.scheduler, "schedule"), "prepare": (engine.runner, "prepare"),
                   "forward": (engine.model, "forward"), "logits": (engine.model, "compute_logits"),
                   "sample": (engine, "sampler"), "process": (engine.output_processor, "process")}
        for phase, (obj, name) in targets.items():
            setattr(obj, name, self._timed(phase, getattr(obj, name)))
        step = engine.step

        def timed_step() -> Any:
            start = time.perf_counter()
            outputs = step()
            self.current["step"] = time.perf_counter() - start
            self.current["start"] = start
            self.records.append(dict(self.current))
            self.current = defaultdict(float)
            return outputs

        engine.step = timed_step
        schedule = engine.scheduler.schedule

        def counting_schedule() -> Any:
            batch = schedule()
            self.batch_sizes.append(len(batch))
            return batch

        engine.scheduler.schedule = counting_schedule

    def _timed(self, phase: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[phase] += time.perf_counter() - start
        return wrapper

    def table(self, records: list[dict[str, float]], title: str) -> str:
        """Median ms per phase and its share of the step, as markdown rows."""
        step = statistics.median(r["step"] for r in records)
        rows = [f"| {title} | phase | median ms | share |", "| --- | --- | --- | --- |"]
        medians = {phase: statistics.median(r.get(phase, 0.0) for r in records) for phase in PHASES}
        for phase, ms in medians.items():
            rows.append(f"| | {phase} | {ms * 1e3:.2f} | {ms / step:.0%} |")
        rest = step - sum(medians.values())
        rows.append(f"| | other (step loop) | {rest * 1e3:.2f} | {rest / step:.0%} |")
        starts = [r["start"] for r in records]
        if len(starts) > 1:
            gaps = [b - (a + r["step"]) for a, b, r in zip(starts, starts[1:], records, strict=False)]
            gap = statistics.median(gaps)
            rows.append(f"| | between steps | {gap * 1e3:.2f} | {gap / (step + gap):.0%} of step+gap |")
        rows.append(f"| | **step** | **{step * 1e3:.2f}** | |")
        return "\n".join(rows)


def op_shares(engine: LLMEngine, steps: int) -> str:
    """Profile `steps` steps: matmul share of the wall time, and the largest other ops."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / 1e6
    others = sorted((e for e in events if e.key not in MATMUL_OPS), key=lambda e: -e.self_cpu_time_total)[:8]
    calls = sum(e.count for e in events) / steps
    lines = [f"profiled {steps} steps: {wall / steps * 1e3:.1f} ms/step (profiler on), {calls:.0f} op calls per "
             f"step; matmul ops {matmul / wall:.0%} of wall, everything else {1 - matmul / wall:.0%}",
             "largest other ops (self time share of wall, calls per step):"]
    lines += [f"  {e.key:<32} {e.self_cpu_time_total / 1e6 / wall:6.1%}  {e.count / steps:7.1f}" for e in others]
    return "\n".join(lines)


def prompts(engine: LLMEngine, n: int) -> list[list[int]]:
    return [engine.tokenizer.apply_chat_template(c) for c in chat_prompts(n)]


def make_engine(args: argparse.Namespace, max_num_seqs: int) -> LLMEngine:
    config = EngineConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                          prepack_weights=args.prepack_weights, max_model_len=args.max_model_len,
                          compile=args.compile, quantization=args.quantization)
    return LLMEngine(args.model, "cpu", args.dtype, config, progress=False)


def offline(args: argparse.Namespace) -> None:
    engine = make_engine(args, max(args.batch))
    timer = StepTimer(engine)
    for batch in args.batch:
        total = args.warmup + args.steps + args.profile_steps + 4
        params = SamplingParams(max_tokens=total, temperature=0.0, ignore_eos=True)
        for i, ids in enumerate(prompts(engine, batch)):
            engine.add_request(f"b{batch}-{i}", ids, params)
        while any(s.num_output_tokens == 0 for s in engine.scheduler.running) or engine.scheduler.waiting:
            engine.step()
        for _ in range(args.warmup):
            engine.step()
        timer.records.clear()
        for _ in range(args.steps):
            engine.step()
        print(timer.table(timer.records, f"offline batch {batch}"))
        print(f"decode: {batch / statistics.median(r['step'] for r in timer.records):.1f} tok/s")
        print(op_shares(engine, args.profile_steps))
        while engine.has_unfinished():
            engine.step()
        print()


def http(args: argparse.Namespace) -> None:
    import uvicorn

    from engine.core.async_engine import AsyncEngine
    from server.app import attach_engine, create_app

    app = create_app(None, served_model_names=["bench"])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning"))
    timers: list[StepTimer] = []
    engines: list[AsyncEngine] = []

    def load_and_run() -> None:  # as server/cli.py: load and step on the same thread
        engine = make_engine(args, args.concurrency)
        timers.append(StepTimer(engine))
        engines.append(AsyncEngine(engine, start=False))
        attach_engine(app, engines[0])
        engines[0].run_loop()

    threading.Thread(target=load_and_run, daemon=True).start()
    client = threading.Thread(target=lambda: _client(args))
    threading.Thread(target=lambda: (client.start(), client.join(), setattr(server, "should_exit", True))).start()
    server.run()
    engines[0].shutdown()
    timer = timers[0]
    full = [r for r, n in zip(timer.records, timer.batch_sizes, strict=False) if n == args.concurrency]
    print(timer.table(full or timer.records, f"http concurrency {args.concurrency} (steps at full batch)"))


def _client(args: argparse.Namespace) -> None:
    base = f"http://127.0.0.1:{args.port}"
    deadline = time.monotonic() + 600
    import urllib.request
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5):
                break
        except OSError:
            time.sleep(0.5)
    serving = Path(__file__).resolve().parent / "serving.py"
    subprocess.run([sys.executable, str(serving), "--base-url", f"{base}/v1", "--concurrency", str(args.concurrency),
                    "--num-prompts", str(args.num_prompts), "--output-tokens", str(args.output_tokens)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 32])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--profile-steps", type=int, default=8)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512)
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--dtype", default="auto", help="float32 (auto) or bfloat16")
    parser.add_argument("--prepack-weights", action=argparse.BooleanOptionalAction, default=True,
                        help="oneDNN-packed linear weights (the engine's CPU default)")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="the decoder layers under torch.compile")
    parser.add_argument("--quantization", default="none", choices=QUANTIZATION_MODES)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    http(args) if args.http else offline(args)


if __name__ == "__main__":
    main()
