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

    def __init__(self, policy: str, max_num_seqs: int = 4, num_blocks: int = 256, block_size: int = 4,
                 fast_lane_slots: int = 2, window: int | None = None, caching: bool = False) -> None:
        cfg = EngineConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=64, block_size=block_size,
                           scheduling_policy=policy, fast_lane_max_tokens=32, fast_lane_slots=fast_lane_slots)
        pools = {"global": PoolSpec(1, None)} | ({"sliding": PoolSpec(3, window)} if window else {})
        kv = KVCacheManager(pools, dict.fromkeys(pools, num_blocks), block_size, 64, enable_caching=caching)
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
            self.scheduler.kv.cache_blocks(seq.block_tables, seq.token_ids, seq.block_hashes, seq.num_computed_tokens)
            if seq.num_computed_tokens == seq.num_tokens:
                seq.token_ids.append(7)
                if seq.num_output_tokens >= seq.params.max_tokens:
                    self.scheduler.finish(seq)
                    self.finished.append(seq.request_id)
        return [s.request_id for s in batch.seqs]

    def run(self) -> None:
        while self.scheduler.has_work():
            self.step()
        assert set(self.scheduler.kv.usage().values()) == {0}


def steps_until_scheduled(sim: Sim, name: str, limit: int = 200) -> int:
    for n in range(1, limit + 1):
        if name in sim.step():
            return n
    return limit + 1


@pytest.mark.parametrize("policy", ["fcfs", "mode-aware"])
def test_a_quick_request_joins_a_full_batch_of_reasoning_ones_without_a_preemption(policy):
    sim = Sim(policy, num_blocks=512)
    for i in range(4):
        sim.add(f"think{i}", max_tokens=300, reasoning=True)
    for _ in range(5):
        sim.step()
    sim.add("quick", max_tokens=8)
    waited = steps_until_scheduled(sim, "quick", limit=400)
    if policy == "mode-aware":
        assert waited == 1  # at the next step, in the fast lane's headroom, beside all four
        assert len(sim.step()) == 5 and sim.scheduler.num_fast_lane_running == 1
    else:
        assert waited > 250  # FCFS: until a reasoning request finishes
    assert sim.scheduler.num_preemptions == 0
    sim.run()
    assert sorted(sim.finished) == ["quick", "think0", "think1", "think2", "think3"]


def test_a_full_fast_lane_waits_for_a_slot_instead_of_preempting():
    sim = Sim("mode-aware", max_num_seqs=2, fast_lane_slots=1, num_blocks=512)
    for name in ["think0", "think1"]:
        sim.add(name, max_tokens=100, reasoning=True)
    sim.step()
    sim.add("quick0", max_tokens=6)
    sim.add("quick1", max_tokens=6)
    assert sorted(sim.step()) == ["quick0", "think0", "think1"]  # one slot of headroom
    waited = steps_until_scheduled(sim, "quick1")
    assert 5 <= waited <= 7  # when quick0 has its 6 tokens
    assert sim.scheduler.num_preemptions == 0
    sim.run()


def test_the_fast_lane_preempts_when_blocks_run_out_the_reasoning_one_with_least_work():
    # 14 blocks of 4 tokens; think_long holds 7, think_short 3 (their prompts), quick needs 5
    sim = Sim("mode-aware", max_num_seqs=2, num_blocks=14)
    long = sim.add("think_long", prompt_len=28, max_tokens=12, reasoning=True)
    short = sim.add("think_short", prompt_len=12, max_tokens=12, reasoning=True)
    sim.step()
    sim.step()  # one decode each: think_long 29 tokens (8 blocks), think_short 13 (4 blocks); 2 blocks free
    sim.add("quick", prompt_len=20, max_tokens=4)
    assert "quick" in sim.step()
    assert short.status is SequenceStatus.WAITING and long.status is SequenceStatus.RUNNING
    assert sim.scheduler.preemptions == {"memory": 0, "policy": 1}
    sim.run()


@pytest.mark.parametrize("policy", ["fcfs", "mode-aware"])
def test_a_running_sequence_short_of_blocks_preempts_the_one_with_least_work(policy):
    # think_long holds 9 blocks, think_short 4 (of 14): the first to cross a block boundary takes the last
    # free one, and the next needs a preemption; the victim is think_short, the older and already scheduled
    sim = Sim(policy, max_num_seqs=3, num_blocks=14)
    short = sim.add("think_short", prompt_len=15, max_tokens=12, reasoning=True)
    long = sim.add("think_long", prompt_len=35, max_tokens=12, reasoning=True)
    while not sim.scheduler.num_preemptions:
        sim.step()
    assert short.status is SequenceStatus.WAITING and long.status is SequenceStatus.RUNNING
    assert sim.scheduler.preemptions == {"memory": 1, "policy": 0}
    sim.run()


@pytest.mark.parametrize("window", [None, 8])
def test_a_preempted_sequence_comes_back_through_the_prefix_cache(window):
    # a hybrid cache (global + sliding pool) or a global one; the preempted sequence's full blocks stay
    # findable, so it recomputes less than a block, not its prompt and its output so far
    sim = Sim("mode-aware", max_num_seqs=2, num_blocks=40, window=window, caching=True)
    victim = sim.add("think", prompt_len=30, max_tokens=60, reasoning=True)
    sim.add("think_big", prompt_len=60, max_tokens=60, reasoning=True)
    for _ in range(10):
        sim.step()
    computed = victim.num_computed_tokens
    sim.scheduler.running.remove(victim)
    sim.scheduler._preempt(victim, "memory")  # as the step would when blocks run out
    assert "think" in sim.step()
    assert victim.num_computed_tokens >= computed - sim.scheduler.kv.block_size  # all but the partial block
    assert 0 < sim.scheduler.num_recomputed_tokens < sim.scheduler.kv.block_size
    sim.run()


def test_with_caching_off_a_preempted_sequence_recomputes_everything():
    sim = Sim("mode-aware", max_num_seqs=2, num_blocks=40, caching=False)
    victim = sim.add("think", prompt_len=30, max_tokens=60, reasoning=True)
    for _ in range(10):
        sim.step()
    computed = victim.num_computed_tokens
    sim.scheduler.running.remove(victim)
    sim.scheduler._preempt(victim, "memory")
    sim.step()
    assert sim.scheduler.num_recomputed_tokens == computed
    sim.run()


def test_a_lower_priority_value_still_preempts_for_a_slot_under_mode_aware():
    sim = Sim("mode-aware", max_num_seqs=1, fast_lane_slots=0)
    sim.add("think", max_tokens=50, reasoning=True)
    sim.step()
    sim.add("quick", max_tokens=4)  # same priority: waits (no headroom)
    sim.add("urgent", max_tokens=50, reasoning=True, priority=-1)  # better priority: takes the slot
    assert sim.step() == ["urgent"]
    assert sim.scheduler.preemptions == {"memory": 0, "policy": 1}
    sim.run()


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


def test_quick_requests_alone_keep_to_max_num_seqs():
    sim = Sim("mode-aware", max_num_seqs=2, fast_lane_slots=2)
    for i in range(4):
        sim.add(f"quick{i}", max_tokens=4)
    assert sim.step() == ["quick0", "quick1"]  # no request outside the fast lane to get past: no headroom
    sim.run()
