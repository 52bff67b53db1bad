"""locust users that send the scenarios and keep a RequestRecord of every request.

Closed loop: each user sends its next conversation as soon as the last one ends. Open loop: one dispatcher
per process sends its share of a seeded arrival schedule on time, whatever is still in flight; a request
that leaves late keeps its scheduled time, so the lateness shows as schedule lag.
Both report to locust (`events.request.fire`, e2e in ms) for the live view only.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import gevent
import psutil
import requests
from gevent.lock import Semaphore
from gevent.pool import Group
from locust import LoadTestShape, User, constant, task
from locust.exception import StopUser

from benchmarks.loadtest.arrivals import arrival_times
from benchmarks.loadtest.scenarios import ScenarioOptions, build, mix_sequence, tool_turn, validate
from benchmarks.loadtest.timeline import RequestRecord, StreamReader

# perf_counter is the precise clock; the offset puts it on the epoch so processes share one time axis
_EPOCH_OFFSET = time.time() - time.perf_counter()


def clock() -> float:
    """Seconds since the epoch, at perf_counter's resolution."""
    return time.perf_counter() + _EPOCH_OFFSET


@dataclass
class LoadConfig:
    """What one run sends, where, and how (JSON-serialisable for worker processes)."""

    base_url: str
    mix: dict[str, float]
    options: dict[str, Any]
    extensions: list[str]
    duration: float
    users: int | None = None  # closed loop
    rate: float | None = None  # open loop, requests/s
    arrival: str = "poisson"
    burstiness: float = 1.0
    drain: float = 60.0
    seed: int = 0
    api_key: str | None = None
    max_in_flight: int = 1024
    processes: int = 1
    logprobs: bool = True
    timeout: float = 600.0


@dataclass
class LoadContext:
    """Per-process state: the records, client CPU samples and the clock of this process's run."""

    cfg: LoadConfig
    start: float = 0.0
    # this process's place among the workers in the order locust hands them users (by client id)
    worker_rank: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    client_samples: list[list[float]] = field(default_factory=list)
    environment: Any = None
    _sampling: bool = False

    def __post_init__(self) -> None:
        self.sequence = mix_sequence(self.cfg.mix)

    def begin(self) -> None:
        """Start the clock once, when the first user of this process starts; worker processes wait for the
        start time the master sends them, so that all shares of a schedule run on one clock."""
        if self.cfg.processes > 1:
            while not self.start:
                gevent.sleep(0.01)
            gevent.sleep(max(0.0, self.start - clock()))
        elif not self.start:
            self.start = clock()
        if not self._sampling:
            self._sampling = True
            gevent.spawn(self._sample_client)

    def _sample_client(self) -> None:
        # CPU of this process (locust's own monitor reports every 5 s) and event-loop lag: a greedy client
        # sends late and reads late, and that would pass for server latency.
        process = psutil.Process()
        process.cpu_percent()
        while True:
            before = time.perf_counter()
            gevent.sleep(1.0)
            lag = time.perf_counter() - before - 1.0
            self.client_samples.append([clock(), process.cpu_percent() / 100.0, lag])

    @property
    def end(self) -> float:
        return self.start + self.cfg.duration

    def converse(self, session: requests.Session, conversation: int, position: int, scheduled: float | None,
                 gate: Semaphore | None = None) -> bool:
        """Send a conversation (its seed: `conversation`; its scenario: entry `position` of the mix): a request,
        and for a tools call a second turn with the result. False when the target cannot be asked it."""
        rng = random.Random(f"{self.cfg.seed}-{conversation}")
        scenario = self.sequence[position % len(self.sequence)]
        plan = build(scenario, rng, ScenarioOptions(**self.cfg.options), frozenset(self.cfg.extensions))
        if plan.not_asked:
            self._keep(RequestRecord(conversation, plan.scenario, status="not_asked", scheduled=scheduled,
                                     not_asked=plan.not_asked))
            return False
        with gate or contextlib.nullcontext():
            record = self.send(session, plan.body, RequestRecord(conversation, plan.scenario, scheduled=scheduled))
        if plan.scenario == "tools" and record.status == "ok" and record.tool_calls:
            self.send(session, tool_turn(plan.body, record.tool_calls), RequestRecord(conversation, plan.scenario, turn=2))
        return True

    def send(self, session: requests.Session, body: dict[str, Any], record: RequestRecord) -> RequestRecord:
        """Stream one chat completion into `record`; every outcome is kept, a killed one as cancelled."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        if self.cfg.logprobs:
            body["logprobs"] = True
        headers = {"Content-Type": "application/json"}
        if self.cfg.api_key:
            headers["Authorization"] = f"Bearer {self.cfg.api_key}"
        reader = StreamReader(record)
        record.sent = clock()
        try:
            with session.post(f"{self.cfg.base_url}/v1/chat/completions", data=json.dumps(body), headers=headers,
                              stream=True, timeout=self.cfg.timeout) as response:
                if response.status_code != 200:
                    record.status, record.error = "error", f"HTTP {response.status_code}: {response.text[:300]}"
                else:
                    for data in response.iter_content(chunk_size=None):
                        reader.feed(data, clock())
                    reader.finish(clock())
                    if record.error or not reader.done:
                        record.status = "error"
                        record.error = record.error or "the stream ended without [DONE]"
                    record.valid = validate(record.scenario, record.content, record.tool_calls)
        except gevent.GreenletExit:
            record.status = "cancelled"
            raise
        except Exception as e:  # a failed request is a result, not a crash of the load generator
            record.status, record.error = "error", f"{type(e).__name__}: {e}"
        finally:
            self._keep(record)
        return record

    def _keep(self, record: RequestRecord) -> None:
        data = record.to_json()
        self.records.append(data)
        if self.environment is not None and record.status != "not_asked":
            e2e = data["metrics"].get("e2e") if data["metrics"] else None
            self.environment.events.request.fire(
                request_type="SSE", name=record.scenario, response_time=(e2e or 0.0) * 1000,
                response_length=data["metrics"].get("output_tokens", 0) if data["metrics"] else 0,
                exception=RuntimeError(record.error or record.status) if record.status != "ok" else None,
                context={})


def user_classes(ctx: LoadContext) -> list[type[User]]:
    """The locust user class for the run's loop kind, bound to this process's context."""
    cfg = ctx.cfg
    numbers = itertools.count()

    class ClosedLoopUser(User):
        """A user that sends its next conversation when the last one ends, until the run's end."""

        wait_time = constant(0)
        host = cfg.base_url

        def on_start(self) -> None:
            ctx.begin()
            self.session = requests.Session()
            self.user_id = ctx.worker_rank + cfg.processes * next(numbers)
            self.count = itertools.count()

        @task
        def converse(self) -> None:
            # Conversation k of user u: number k * users + u, scenario k + u of the mix, so every user goes
            # round the whole mix; one the target cannot be asked is recorded and skipped.
            for _ in ctx.sequence:
                if clock() >= ctx.end:
                    break
                k = next(self.count)
                if ctx.converse(self.session, k * cfg.users + self.user_id, k + self.user_id, None):
                    return
            raise StopUser()  # the run is over, or nothing in the mix can be asked of this target

    class OpenLoopUser(User):
        """One per process: sends every `processes`-th arrival of the seeded schedule at its time."""

        wait_time = constant(0)
        host = cfg.base_url

        @task
        def dispatch(self) -> None:
            ctx.begin()
            gate = Semaphore(cfg.max_in_flight)
            group = Group()
            sessions: list[requests.Session] = []
            times = arrival_times(cfg.rate, cfg.duration, cfg.arrival, cfg.burstiness, cfg.seed)
            for i, t in enumerate(times):
                if i % cfg.processes != ctx.worker_rank:
                    continue
                gevent.sleep(max(0.0, ctx.start + t - clock()))
                session = sessions.pop() if sessions else requests.Session()
                g = group.spawn(ctx.converse, session, i, i, ctx.start + t, gate)
                g.link(lambda _, s=session: sessions.append(s))
            group.join(timeout=max(0.0, ctx.end + cfg.drain - clock()))
            group.kill()
            raise StopUser()

    return [OpenLoopUser] if cfg.rate else [ClosedLoopUser]


class RunShape(LoadTestShape):
    """All users at once for `duration`, then wait (at most `drain` s) for the last ones to finish."""

    def __init__(self, users: int, duration: float, drain: float) -> None:
        super().__init__()
        self.users, self.duration, self.drain = users, duration, drain

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        if elapsed < self.duration or (elapsed < self.duration + self.drain + 1 and self.get_current_user_count()):
            return self.users, max(self.users, 100)
        return None
