"""Iteration-level scheduler: running sequences first, then prefill chunks under a token budget.
A running sequence's drafted tokens (speculative decoding) ride with its decode while the budget and the
KV pools have room; they are dropped before any sequence is preempted for blocks.

Policies: `fcfs` admits in arrival order; `priority` (vLLM's) admits the lowest `priority` value first,
arrival breaking ties; `mode-aware` ranks by priority, then puts quick requests (no reasoning, a short
max_tokens) in a fast lane: admitted first and preempted last. A request outside the fast lane joins it
once it is `fast_lane_max_wait_s` old, so quick requests can delay a reasoning one but never starve it.

Preemption throws work away, so it is the last resort. The fast lane gets headroom instead: quick requests
may run beyond max_num_seqs, by one per running request outside the fast lane, up to `fast_lane_slots`. A waiting request preempts a running one only
when the KV pools cannot hold it (cause "policy", and only a running one of a worse class), or for a batch
slot when its `priority` value is lower; a running sequence that cannot grow preempts others (cause
"memory"). The victim is of the worst class, and in it the one with the fewest computed tokens. A preempted
sequence's full blocks stay in the prefix cache, so it usually comes back through a hit, not a recompute.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from engine.config import EngineConfig
from engine.core.sequence import Sequence, SequenceStatus
from engine.kv.kv_cache import KVCacheManager


@dataclass
class ScheduledBatch:
    """What one step computes: each sequence with its number of new tokens."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.seqs)


class Scheduler:
    """Chooses each step's batch and owns the waiting and running queues."""

    def __init__(self, cfg: EngineConfig, kv: KVCacheManager) -> None:
        self.cfg = cfg
        self.kv = kv
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = {"memory": 0, "policy": 0}  # by cause (module docstring)
        self.num_recomputed_tokens = 0  # tokens preempted sequences had computed and the prefix cache lost
        self.prefix_cache_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_cache_hits = 0  # of which the cache supplied
        self.ranked = cfg.scheduling_policy != "fcfs"
        self.max_running = cfg.max_running_seqs

    @property
    def num_preemptions(self) -> int:
        """Preemptions so far, all causes."""
        return sum(self.preemptions.values())

    @property
    def num_fast_lane_running(self) -> int:
        """Running sequences beyond max_num_seqs: the fast lane's headroom in use."""
        return max(0, len(self.running) - self.cfg.max_num_seqs)

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence (FCFS)."""
        self.waiting.append(seq)

    def has_work(self) -> bool:
        """True while any sequence waits or runs."""
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        """Pick this step's sequences and chunk sizes, allocating (or preempting for) their blocks."""
        batch = ScheduledBatch()
        if self.ranked:
            self._make_room()
            self.running.sort(key=self.rank)  # the most important get their blocks first
        budget = self._schedule_running(batch, self.cfg.max_num_batched_tokens)
        self._schedule_waiting(batch, budget)
        return batch

    def _schedule_running(self, batch: ScheduledBatch, budget: int) -> int:
        """Add each running sequence's next chunk (decode and drafts, or prefill) to the batch while the budget
        lasts, preempting for blocks where they run out; returns the budget left."""
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_new = min(seq.num_tokens + len(seq.spec_token_ids) - seq.num_computed_tokens, budget)
            del seq.spec_token_ids[max(0, num_new - (seq.num_tokens - seq.num_computed_tokens)):]  # past the budget
            while not self.kv.allocate(seq.block_tables, seq.num_computed_tokens, num_new):
                if seq.spec_token_ids:  # drafts give way before anyone is preempted
                    num_new -= len(seq.spec_token_ids)
                    seq.spec_token_ids = []
                    continue
                victim = self._victim(self.running)
                if self.running.index(victim) < i:  # already in this step's batch: it leaves it
                    j = batch.seqs.index(victim)
                    budget += batch.num_new_tokens.pop(j)
                    del batch.seqs[j]
                    i -= 1
                self.running.remove(victim)
                self._preempt(victim, "memory")
                if victim is seq:
                    break
            else:
                batch.seqs.append(seq)
                batch.num_new_tokens.append(num_new)
                budget -= num_new
                i += 1
        return budget

    def _schedule_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        """Admit waiting sequences (after their cached prefix) while slots, budget and blocks allow."""
        while budget > 0 and (seq := self._next_waiting()) is not None:
            hit = self._match_prefix(seq)
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if not self.kv.allocate(seq.block_tables, seq.num_computed_tokens, num_new):
                self.kv.free(seq.block_tables)  # a waiting sequence holds no blocks, cached hits included
                seq.num_computed_tokens = 0
                break
            self.waiting.remove(seq)
            if hit is not None:
                self.prefix_cache_queries += seq.num_tokens
                self.prefix_cache_hits += hit
                if seq.num_cached_tokens is None:
                    seq.num_cached_tokens = hit
            if seq.num_computed_before_preemption:
                self.num_recomputed_tokens += max(0, seq.num_computed_before_preemption - seq.num_computed_tokens)
                seq.num_computed_before_preemption = 0
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = time.monotonic()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(num_new)
            budget -= num_new

    def rank(self, seq: Sequence) -> tuple:
        """Lower runs first and is preempted last: (class, arrival); the class is what a policy orders by."""
        return (*self._class(seq), seq.arrival_time, seq.seq_id)

    def _class(self, seq: Sequence) -> tuple[int, ...]:
        params = seq.params
        if self.cfg.scheduling_policy == "priority":
            return (params.priority,)
        slow = params.reasoning or (params.max_tokens or 0) > self.cfg.fast_lane_max_tokens
        aged = time.monotonic() - seq.arrival_time >= self.cfg.fast_lane_max_wait_s
        return (params.priority, int(slow and not aged))

    def _is_quick(self, seq: Sequence) -> bool:
        """May use the fast lane's headroom: mode-aware, no reasoning, max_tokens within the fast lane's."""
        params = seq.params
        return (self.cfg.scheduling_policy == "mode-aware" and not params.reasoning
                and (params.max_tokens or 0) <= self.cfg.fast_lane_max_tokens)

    def _slot_limit(self, quick: bool) -> int:
        """Batch size up to which a (quick) sequence may be admitted: quick ones may exceed max_num_seqs by one
        per running request outside the fast lane, up to fast_lane_slots (so headroom only ever serves to get
        past such requests, and a batch of quick ones alone keeps to max_num_seqs)."""
        if not quick:
            return self.cfg.max_num_seqs
        slow = sum(1 for seq in self.running if not self._is_quick(seq))
        return self.cfg.max_num_seqs + min(self.max_running - self.cfg.max_num_seqs, slow)

    def _has_slot(self, seq: Sequence) -> bool:
        """A batch slot is free for seq."""
        return len(self.running) < self._slot_limit(self._is_quick(seq))

    def _next_waiting(self) -> Sequence | None:
        """The waiting sequence to admit next among those a batch slot is free for, if any."""
        if len(self.running) < self.cfg.max_num_seqs:
            candidates = self.waiting
        elif len(self.running) < self._slot_limit(quick=True):
            candidates = [seq for seq in self.waiting if self._is_quick(seq)]
        else:
            return None
        if not candidates:
            return None
        return min(candidates, key=self.rank) if self.ranked else candidates[0]

    def _victim(self, candidates: list[Sequence]) -> Sequence:
        """Who gives way: the worst class (ranked policies), then the fewest computed tokens, then the newest."""
        return max(candidates, key=lambda s: (*(self._class(s) if self.ranked else ()), -s.num_computed_tokens,
                                              s.arrival_time, s.seq_id))

    def _make_room(self) -> None:
        """Preempt running sequences of a worse class than the best waiting one while the KV pools cannot hold
        its first chunk, or while no slot is free for it and its priority value is lower than theirs."""
        if not self.waiting:
            return
        best = min(self.waiting, key=self.rank)
        need = self.kv.blocks_to_allocate({}, 0, min(best.num_tokens, self.cfg.max_num_batched_tokens))
        while self.running:
            fits = all(n <= self.kv.pools[kind].num_free for kind, n in need.items())
            if fits and self._has_slot(best):
                return
            victim = self._victim(self.running)
            if self._class(victim) <= self._class(best):
                return
            if fits and victim.params.priority <= best.params.priority:
                return  # the fast lane waits for a slot; it does not throw away a running request's work
            self.running.remove(victim)
            self._preempt(victim, "policy")

    def _match_prefix(self, seq: Sequence) -> int | None:
        """Start a fresh (or preempted) sequence after its longest cached prefix; None when it may not use one.

        A request for prompt logprobs computes every position it reports, so it skips the cache.
        """
        if seq.block_tables or not self.kv.enable_caching or seq.params.prompt_logprobs is not None:
            return None
        seq.num_computed_tokens = self.kv.match_prefix(seq.block_tables, seq.token_ids, seq.block_hashes)
        return seq.num_computed_tokens

    def _preempt(self, seq: Sequence, cause: str) -> None:
        """Free a sequence's blocks (its full ones stay findable) and requeue it at the front."""
        seq.num_computed_before_preemption = max(seq.num_computed_tokens, seq.num_computed_before_preemption)
        self.kv.free(seq.block_tables)
        seq.num_computed_tokens = 0
        seq.spec_token_ids = []
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.preemptions[cause] += 1

    def finish(self, seq: Sequence) -> None:
        """Release a finished or aborted sequence wherever it is."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.kv.free(seq.block_tables)
        seq.spec_token_ids = []
        seq.status = SequenceStatus.FINISHED
