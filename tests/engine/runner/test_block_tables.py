"""Persistent block tables: a step's inputs equal what rebuilding every table from the KV manager's lists gave,
over random steps that grow, trim (rejected drafts), free, preempt, fork and hit the prefix cache."""

import random

import pytest
import torch

from engine import LLM, SamplingParams
from engine.core.scheduler import ScheduledBatch
from engine.core.sequence import Sequence
from engine.kv.kv_cache import BlockTable, KVCacheManager, PoolSpec
from engine.runner.block_tables import BlockTableMirror

BLOCK, CHUNK = 4, 12


def padded_lists(tables: list[BlockTable], num_pad: int) -> torch.Tensor:
    """The step's tables as prepare built them before: every list padded with -1 to the widest."""
    lists = [bt.table for bt in tables] + [[-1]] * num_pad
    width = max(len(t) for t in lists)
    return torch.tensor([t + [-1] * (width - len(t)) for t in lists], dtype=torch.int64)


def expected_slots(tables: list[BlockTable], starts: list[int], q_lens: list[int], num_pad: int,
                   ring: int | None) -> list[int]:
    """Each new token's cache slot, token by token from the lists (-BLOCK + 0 for a padding row's token)."""
    slots = []
    for bt, start, n in zip(tables, starts, q_lens, strict=True):
        for pos in range(start, start + n):
            entry = pos // BLOCK if ring is None else (pos // BLOCK) % ring
            slots.append(bt.table[entry] * BLOCK + pos % BLOCK)
    return slots + [-BLOCK] * num_pad


class Driver:
    """Random steps over real sequences, the engine's KV manager and its runner's prepare."""

    def __init__(self, llm: LLM, seed: int) -> None:
        self.kv, self.runner = llm.engine.kv, llm.engine.runner
        self.rng = random.Random(seed)
        self.live: list[Sequence] = []
        self.ids = 0
        self.prefixes = [[self.rng.randrange(1, 200) for _ in range(24)] for _ in range(3)]  # shared: cache hits
        self.ops = {"steps": 0, "preempted": 0, "forked": 0, "trimmed": 0, "hits": 0, "wrapped": 0, "padded": 0}

    def new_seq(self, tokens: list[int]) -> Sequence:
        self.ids += 1
        return Sequence(self.ids, f"r{self.ids}", 0, tokens, len(tokens), SamplingParams(), None)  # type: ignore[arg-type]

    def admit(self, seq: Sequence) -> None:
        seq.num_computed_tokens = self.kv.match_prefix(seq.block_tables, seq.token_ids, seq.block_hashes)
        self.ops["hits"] += seq.num_computed_tokens > 0
        self.live.append(seq)

    def preempt(self, seq: Sequence) -> None:
        self.kv.free(seq.block_tables)
        seq.num_computed_tokens = 0
        self.live.remove(seq)
        self.ops["preempted"] += 1

    def churn(self) -> None:
        """Arrivals, finishes, preemptions (re-admitted at once, through the prefix cache) and forks."""
        rng = self.rng
        if len(self.live) < 7 and rng.random() < 0.5:
            tokens = rng.choice(self.prefixes)[: rng.randrange(0, 25)] + [rng.randrange(1, 200)
                                                                            for _ in range(rng.randrange(1, 30))]
            self.admit(self.new_seq(tokens))
        for seq in [s for s in self.live if s.num_tokens > 90 or rng.random() < 0.02]:  # finished
            self.kv.free(seq.block_tables)
            self.live.remove(seq)
        if self.live and rng.random() < 0.1:
            seq = rng.choice(self.live)
            self.preempt(seq)
            self.admit(seq)
        done = [s for s in self.live if s.num_computed_tokens == s.num_tokens - 1 and s.num_computed_tokens]
        if done and len(self.live) < 8 and rng.random() < 0.2:
            parent = rng.choice(done)
            if self.kv.can_fork(parent.block_tables, parent.num_computed_tokens):
                child = self.new_seq(list(parent.token_ids))
                child.num_computed_tokens = parent.num_computed_tokens
                child.block_tables, copies = self.kv.fork(parent.block_tables, parent.num_computed_tokens)
                self.runner.copy_blocks(copies)
                self.live.append(child)
                self.ops["forked"] += 1

    def schedule(self) -> ScheduledBatch:
        """A random subset of the live sequences, decodes (some with drafts) first, each with its blocks."""
        batch = ScheduledBatch()
        chosen = self.rng.sample(self.live, self.rng.randrange(0, len(self.live) + 1))
        chosen.sort(key=lambda s: s.num_tokens - s.num_computed_tokens > 1)
        for seq in chosen:
            if seq not in self.live:  # preempted to make room for one before it
                continue
            seq.spec_token_ids = []
            num_new = min(seq.num_tokens - seq.num_computed_tokens, CHUNK)
            if num_new == 1 and self.rng.random() < 0.4:
                seq.spec_token_ids = [self.rng.randrange(1, 200) for _ in range(self.rng.randrange(1, 4))]
                num_new += len(seq.spec_token_ids)
            while not self.kv.allocate(seq.block_tables, seq.num_computed_tokens, num_new):
                victims = [s for s in self.live if s is not seq and all(s is not b for b in batch.seqs)]
                self.preempt(victims[-1] if victims else seq)
                if not victims:
                    break
            else:
                batch.seqs.append(seq)
                batch.num_new_tokens.append(num_new)
        return batch

    def advance(self, batch: ScheduledBatch) -> None:
        """What the engine does after sampling: accept some drafts, give back the rest's blocks, cache blocks."""
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            if seq.spec_token_ids:
                accepted = self.rng.randrange(0, len(seq.spec_token_ids) + 1)
                seq.token_ids += seq.spec_token_ids[:accepted]
                seq.num_computed_tokens += 1 + accepted
                if accepted < len(seq.spec_token_ids):
                    self.kv.trim(seq.block_tables, seq.num_computed_tokens)
                    self.ops["trimmed"] += 1
                seq.spec_token_ids = []
            else:
                seq.num_computed_tokens += n
            if seq.num_computed_tokens == seq.num_tokens:
                seq.token_ids.append(self.rng.randrange(1, 200))
            self.kv.cache_blocks(seq.block_tables, seq.token_ids, seq.block_hashes, seq.num_computed_tokens)

    def step(self) -> None:
        """One step: the runner's inputs against the lists, token by token."""
        self.churn()
        batch = self.schedule()
        if not batch.seqs:
            return
        decode_only = all(n == 1 for n in batch.num_new_tokens)
        num_pad = self.rng.randrange(0, 3) if decode_only else 0
        inputs = self.runner.prepare(batch, padded_seqs=len(batch) + num_pad)
        starts = [s.num_computed_tokens for s in batch.seqs]
        for kind in self.kv.specs:
            tables = [s.block_tables[kind] for s in batch.seqs]
            assert torch.equal(inputs.block_tables[kind], padded_lists(tables, num_pad)), kind
            ring = self.kv.ring_blocks.get(kind)
            want = expected_slots(tables, starts, batch.num_new_tokens, num_pad, ring)
            assert inputs.slot_mapping[kind].tolist() == want, kind
            self.ops["wrapped"] += ring is not None and any(
                s.num_computed_tokens + n > ring * BLOCK for s, n in zip(batch.seqs, batch.num_new_tokens, strict=True))
        self.ops["steps"] += 1
        self.ops["padded"] += num_pad > 0
        self.advance(batch)


@pytest.fixture(scope="module")
def llm(tiny_models):
    """The hybrid tiny model (window 8: a ring of 6 blocks) with pools small enough to preempt (18 ring blocks, one
    ring per max_num_seqs), and fewer mirror rows than live sequences."""
    return LLM(model=str(tiny_models["exaone_hybrid"]), progress=False, block_size=BLOCK,
               max_num_batched_tokens=CHUNK, max_num_seqs=3, enforce_eager=True, kv_cache_memory=160 << 10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_step_inputs_equal_tables_rebuilt_from_lists(llm, seed):
    driver = Driver(llm, seed)
    for _ in range(300):
        driver.step()
    for seq in list(driver.live):
        driver.preempt(seq)
    assert llm.engine.kv.usage() == dict.fromkeys(llm.engine.kv.specs, 0)
    # The random walk went through every case it is meant to check.
    assert all(count >= 3 for count in driver.ops.values()), driver.ops
    assert all(len(m.array) > 4 for m in llm.engine.runner.block_tables.values())  # rows were evicted, then grown


def test_a_row_is_reused_only_after_its_table_is_written_in_full():
    """A mirror of two rows read by three tables in turn: evicted rows come back in full, a step wider than the
    mirror grows it, and a trimmed global table reads -1 past its end."""
    kv = KVCacheManager({"global": PoolSpec(1, None)}, {"global": 64}, BLOCK, CHUNK)
    mirror = BlockTableMirror(num_rows=2, width=2)
    tables = [{} for _ in range(3)]
    for i, t in enumerate(tables):
        assert kv.allocate(t, 0, 4 * (i + 1))
    every = [t["global"] for t in tables]
    for order in ([0, 1], [2], [0, 1, 2], [1]):
        got = mirror.gather([every[i] for i in order])
        assert torch.equal(got, padded_lists([every[i] for i in order], 0))
    assert kv.allocate(tables[1], 8, 9)
    kv.trim(tables[1], 9)
    assert torch.equal(mirror.gather(every, num_pad=1), padded_lists(every, 1))
    assert mirror.gather(every[1:2]).tolist() == [every[1].table]
