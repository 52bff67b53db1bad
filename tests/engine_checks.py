"""What the engine tests share: greedy sampling params, output token lists, a check that no KV block is held."""

from engine import LLM, SamplingParams


def greedy(max_tokens: int, **kw) -> SamplingParams:
    """Greedy decoding of exactly max_tokens tokens (eos ignored)."""
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **kw)


def tokens_of(outputs) -> list[list[int]]:
    """The first sample's token ids of each RequestOutput."""
    return [o.outputs[0].token_ids for o in outputs]


def assert_no_blocks_held(llm: LLM) -> None:
    """Nothing queued or running, and every KV block free (or only cached)."""
    stats = llm.engine.stats()
    assert stats["running"] == stats["waiting"] == 0
    assert all(n == 0 for n in stats["kv_blocks_used"].values()), stats
    draft_kv = getattr(getattr(llm.engine.spec_decoder, "proposer", None), "kv", None)
    if draft_kv is not None:  # a draft model's own cache
        assert all(n == 0 for n in draft_kv.usage().values()), draft_kv.usage()
