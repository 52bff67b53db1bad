"""Iteration-level scheduler: running sequences first, then prefill chunks under a token budget.
A running sequence's drafted tokens (speculative decoding) ride with its decode while the budget and the
KV pools have room; they are dropped before any sequence is preempted for blocks.

Policies: `fcfs` admits in arrival order and preempts the newest; `priority` (vLLM's) admits the lowest
`priority` value first and preempts the highest, arrival breaking ties; `mode-aware` ranks by priority,
then puts requests that do not reason (and have a short max_tokens) in a fast lane: admitted first, and
preempted last. Under both, a waiting request of a better class preempts a running one of a worse class.
A request outside the fast lane joins it once it is `fast_lane_max_wait_s` old, so a steady stream of
quick requests can delay a reasoning one but never starve it.
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
        self.num_preemptions = 0
        self.prefix_cache_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_cache_hits = 0  # of which the cache supplied
        self.ranked = cfg.scheduling_policy != "fcfs"

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence (FCFS)."""
        self.waiting.append(seq)

    def has_work(self) -> bool:
        """True while any sequence waits or runs."""
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        """Pick this step's sequences and chunk sizes, allocating (or preempting for) their blocks."""
        budget = self.cfg.max_num_batched_tokens
        batch = ScheduledBatch()
        if self.ranked:
            self._make_room()
            self.running.sort(key=self.rank)  # the most important get their blocks first
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
                # fcfs: the newest gives way; ranked: the least important (the last, as running is sorted)
                victim = self.running.pop()
                self._preempt(victim)
                if victim is seq:
                    break
            else:
                batch.seqs.append(seq)
                batch.num_new_tokens.append(num_new)
                budget -= num_new
                i += 1
                continue
            break
        while self.waiting and budget > 0 and len(self.running) < self.cfg.max_num_seqs:
            seq = min(self.waiting, key=self.rank) if self.ranked else self.waiting[0]
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
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = time.monotonic()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(num_new)
            budget -= num_new
        return batch

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

    def _make_room(self) -> None:
        """Preempt running sequences of a worse class than the best waiting one until it could start."""
        if not self.waiting:
            return
        best = min(self.waiting, key=self.rank)
        need = self.kv.blocks_to_allocate({}, 0, min(best.num_tokens, self.cfg.max_num_batched_tokens))
        while self.running:
            fits = all(n <= self.kv.pools[kind].num_free for kind, n in need.items())
            if fits and len(self.running) < self.cfg.max_num_seqs:
                return
            victim = max(self.running, key=self.rank)
            if self._class(victim) <= self._class(best):
                return
            self.running.remove(victim)
            self._preempt(victim)

    def _match_prefix(self, seq: Sequence) -> int | None:
        """Start a fresh (or preempted) sequence after its longest cached prefix; None when it may not use one.

        A request for prompt logprobs computes every position it reports, so it skips the cache.
        """
        if seq.block_tables or not self.kv.enable_caching or seq.params.prompt_logprobs is not None:
            return None
        seq.num_computed_tokens = self.kv.match_prefix(seq.block_tables, seq.token_ids, seq.block_hashes)
        return seq.num_computed_tokens

    def _preempt(self, seq: Sequence) -> None:
        """Free a sequence's blocks and requeue it at the front; it is recomputed later."""
        self.kv.free(seq.block_tables)
        seq.num_computed_tokens = 0
        seq.spec_token_ids = []
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """Release a finished or aborted sequence wherever it is."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.kv.free(seq.block_tables)
        seq.spec_token_ids = []
        seq.status = SequenceStatus.FINISHED
