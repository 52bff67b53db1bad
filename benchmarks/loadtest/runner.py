"""Drive one load run with locust as a library: a local runner, or a master and N worker processes.

Workers write their records to files in the output directory; the master (this process) shows the live
progress line from locust's aggregated stats and scrapes the target's /metrics when it is ours.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gevent
import requests
from locust.env import Environment
from locust.log import setup_logging
from locust.runners import STATE_STOPPED

from benchmarks.loadtest.servers import free_port, server_gauges
from benchmarks.loadtest.users import LoadConfig, LoadContext, RunShape, clock, user_classes


@dataclass
class RunData:
    """What a run collected: request records, client samples (time, cpu, loop lag), server samples."""

    records: list[dict[str, Any]]
    client_samples: list[list[float]]
    server_samples: list[dict[str, float]] = field(default_factory=list)
    start: float = 0.0
    wall_s: float = 0.0


def _scraper(base_url: str, out: list[dict[str, float]]) -> None:
    session = requests.Session()
    while True:
        with contextlib.suppress(requests.RequestException, ValueError):  # the client view goes on without it
            out.append({"t": clock(), **server_gauges(base_url, session)})
        gevent.sleep(1.0)


def _progress(env: Environment, cfg: LoadConfig, started: float) -> None:
    # locust's aggregated stats (workers included) are good enough for a live view; the report uses raw records
    tty = sys.stderr.isatty()
    last_tokens, last_t = 0, time.monotonic()
    while True:
        gevent.sleep(1.0 if tty else 5.0)
        total = env.stats.total
        now = time.monotonic()
        rate = (total.total_content_length - last_tokens) / max(now - last_t, 1e-9)
        last_tokens, last_t = total.total_content_length, now
        workers = getattr(env.runner, "clients", {})  # a master's view of its workers
        cpu = max([env.runner.current_cpu_usage, *(w.cpu_usage for w in workers.values())])
        phase = "" if now - started < cfg.duration else " draining"
        line = (f"[{now - started:5.0f}s/{cfg.duration:.0f}s{phase}] users {env.runner.user_count:3d}  done "
                f"{total.num_requests:5d}  failed {total.num_failures:3d}  {rate:7.1f} tok/s  "
                f"p50 e2e {total.get_response_time_percentile(0.5) / 1000:6.2f}s  client cpu {cpu:3.0f}%"
                + ("  SATURATED: try --processes N" if cpu >= 90 else ""))
        print(("\r" if tty else "") + line, end="" if tty else "\n", file=sys.stderr, flush=True)


def run_load(cfg: LoadConfig, out_dir: Path, ours: bool, progress: bool = True) -> RunData:
    """Run `cfg` to its end (duration plus drain) and return every record."""
    setup_logging("WARNING")
    ctx = LoadContext(cfg)
    classes = user_classes(ctx)
    users = cfg.processes if cfg.rate else (cfg.users or 1)
    env = Environment(user_classes=classes, shape_class=RunShape(users, cfg.duration, cfg.drain),
                      host=cfg.base_url)
    ctx.environment = env
    workers: list[subprocess.Popen] = []
    if cfg.processes > 1:
        port = free_port()
        runner = env.create_master_runner(master_bind_host="127.0.0.1", master_bind_port=port)
        config_path = out_dir / "load_config.json"
        config_path.write_text(json.dumps(asdict(cfg)))
        workers = [subprocess.Popen([sys.executable, "-m", "benchmarks.loadtest.worker", str(config_path), str(port),
                                     str(out_dir / f"worker-{i}.json")]) for i in range(cfg.processes)]
        deadline = time.monotonic() + 60
        while len(runner.clients.ready) < cfg.processes:
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                runner.quit()
                raise RuntimeError("the locust worker processes did not connect")
            gevent.sleep(0.1)
    else:
        runner = env.create_local_runner()
    server_samples: list[dict[str, float]] = []
    helpers = [gevent.spawn(_scraper, cfg.base_url, server_samples)] if ours else []
    started = time.monotonic()
    if progress:
        helpers.append(gevent.spawn(_progress, env, cfg, started))
    if workers:
        # one clock for every worker's share of the schedule, and each worker's place in locust's user order
        runner.send_message("start_at", {"start": clock() + 1.0, "order": sorted(runner.clients)})
    runner.start_shape()
    gevent.sleep(0.5)
    while runner.state != STATE_STOPPED:
        gevent.sleep(0.2)
    runner.quit()
    gevent.killall(helpers)
    if progress:
        print(file=sys.stderr)
    records, samples = ctx.records, ctx.client_samples
    for i, worker in enumerate(workers):
        worker.wait(timeout=60)
        data = json.loads((out_dir / f"worker-{i}.json").read_text())
        records += data["records"]
        samples += data["client_samples"]
        (out_dir / f"worker-{i}.json").unlink()
    start = min([r["sent"] for r in records if r["sent"]] or [ctx.start or clock()])
    return RunData(records, samples, server_samples, start, time.monotonic() - started)
