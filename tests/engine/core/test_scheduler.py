"""Scheduling policies on the real Scheduler and KV manager, with a simulated model (one token per decode)."""

from __future__ import annotations

import itertools

import pytest

from engine.config import EngineConfig
from engine.core.sampling_params import SamplingParams
from engine.core.scheduler import Scheduler
from engine.core.sequence import Sequence, SequenceStatus
from engine.kv.kv_cache import KVCacheManager, PoolSpec

_ids = itertools.count()


class Sim:
    """A scheduler over a global pool; step() 'computes' the batch and finishes sequences at max_tokens."""

    def __init__(self, policy: str, max_num_seqs: int = 4, num_blocks: int = 256, block_size: int = 4) -> None:
        cfg = EngineConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=64, block_size=block_size,
                           scheduling_policy=policy, fast_lane_max_tokens=32)
        kv = KVCacheManager({"global": PoolSpec(1, None)}, {"global": num_blocks}, block_size, 64)
        self.scheduler = Scheduler(cfg, kv)
        self.steps = 0
        self.finished: list[str] = []

    def add(self, name: str, prompt_len: int = 8, max_tokens: int = 16, **params) -> Sequence:
        seq = Sequence(next(_ids), name, 0, list(range(100, 100 + prompt_len)), prompt_len,
                       SamplingParams(max_tokens=max_tokens, **params), detokenizer=None)
        self.scheduler.add(seq)
        return seq

    def step(self) -> list[str]:
        """One step; returns the names in its batch."""
        batch = self.scheduler.schedule()
        self.steps += 1
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            seq.num_computed_tokens += n
            if seq.num_computed_tokens == seq.num_tokens:
                seq.token_ids.append(7)
                if seq.num_output_tokens >= seq.params.max_tokens:
                    self.scheduler.finish(seq)
                    self.finished.append(seq.request_id)
        return [s.request_id for s in batch.seqs]

    def run(self) -> None:
        while self.scheduler.has_work():
            self.step()
        assert self.scheduler.kv.usage() == {"global": 0}


def steps_until_scheduled(sim: Sim, name: str, limit: int = 200) -> int:
    for n in range(1, limit + 1):
        if name in sim.step():
            return n
    return limit + 1


@pytest.mark.parametrize("policy", ["fcfs", "mode-aware"])
def test_a_quick_request_gets_into_a_saturated_batch_of_reasoning_ones(policy):
    sim = Sim(policy, num_blocks=512)
    for i in range(4):
        sim.add(f"think{i}", max_tokens=300, reasoning=True)
    for _ in range(5):
        sim.step()
    sim.add("quick", max_tokens=8)
    waited = steps_until_scheduled(sim, "quick", limit=400)
    if policy == "mode-aware":
        assert waited == 1  # it preempts a reasoning request at the next step
        assert sim.scheduler.num_preemptions == 1
    else:
        assert waited > 250  # FCFS: until a reasoning request finishes
        assert sim.scheduler.num_preemptions == 0
    sim.run()
    assert sorted(sim.finished) == ["quick", "think0", "think1", "think2", "think3"]


def test_lower_priority_values_run_first_and_preempt_higher_ones():
    sim = Sim("priority", max_num_seqs=1)
    for name, priority in [("p2", 2), ("p0", 0), ("p1", 1)]:
        sim.add(name, priority=priority)
    sim.step()
    sim.add("urgent", priority=-1)  # arrives while p0 runs: it takes its slot at once
    assert sim.step() == ["urgent"]
    sim.run()
    assert sim.finished == ["urgent", "p0", "p1", "p2"]


@pytest.mark.parametrize(("policy", "think_old_priority", "victim"), [
    ("fcfs", 0, "quick"),  # the newest
    ("mode-aware", 0, "think_new"),  # the newest outside the fast lane
    ("priority", 1, "think_old"),  # the highest priority value
])
def test_preemption_order_follows_the_policy(policy, think_old_priority, victim):
    # 12 blocks of 4 tokens: three 8-token prompts fit, then their decodes run out of blocks.
    sim = Sim(policy, num_blocks=12)
    seqs = {name: sim.add(name, max_tokens=20, reasoning=name.startswith("think"), priority=priority)
            for name, priority in [("think_old", think_old_priority), ("think_new", 0), ("quick", 0)]}
    while not sim.scheduler.num_preemptions:
        sim.step()
    assert [n for n, s in seqs.items() if s.status is SequenceStatus.WAITING] == [victim]
    sim.run()


def test_fcfs_is_unchanged_arrival_order_and_newest_preempted():
    sim = Sim("fcfs", max_num_seqs=2)
    for name in ["a", "b", "c", "d"]:
        sim.add(name, max_tokens=4 if name == "a" else 8, priority=-ord(name), reasoning=name == "b")
    assert sim.step() == ["a", "b"]
    sim.run()
    assert sim.finished == ["a", "b", "c", "d"]


def test_a_stream_of_quick_requests_delays_a_reasoning_one_but_never_starves_it():
    sim = Sim("mode-aware", max_num_seqs=2)
    quick = itertools.count()

    def step_with_two_quick_waiting() -> list[str]:
        while sum(not s.params.reasoning for s in sim.scheduler.waiting) < 2:
            sim.add(f"quick{next(quick)}", max_tokens=4)
        return sim.step()

    step_with_two_quick_waiting()
    think = sim.add("think", max_tokens=8, reasoning=True)
    for _ in range(60):  # younger than --fast-lane-max-wait: every free slot goes to a quick request
        assert "think" not in step_with_two_quick_waiting()
    think.arrival_time -= sim.scheduler.cfg.fast_lane_max_wait_s  # now as old as the limit
    waited = next(n for n in range(1, 20) if "think" in step_with_two_quick_waiting())
    assert waited <= 5  # the next slot a quick request frees
    for _ in range(20):  # once aged, quick arrivals no longer preempt it
        step_with_two_quick_waiting()
    assert "think" in sim.finished and sim.scheduler.num_preemptions == 0
