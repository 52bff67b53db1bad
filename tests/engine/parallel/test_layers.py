"""Each tensor-parallel layer on 2 gloo ranks against its unsharded twin (fp32)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from ranks import run_on_two_ranks

from engine.parallel.layers import (
    ColumnParallelLinear,
    ParallelLMHead,
    RowParallelLinear,
    VocabParallelEmbedding,
)

HIDDEN = 32


def _gather(x: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=-1)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def layer_errors(rank: int) -> dict[str, float]:
    """Max abs difference to the unsharded computation, per layer; every rank builds the same full weights."""
    torch.manual_seed(0)
    x = torch.randn(5, HIDDEN)
    errors = {}

    gate, up = torch.randn(24, HIDDEN), torch.randn(24, HIDDEN)
    fused = ColumnParallelLinear(HIDDEN, [24, 24])
    fused.load_shard(gate, 0)
    fused.load_shard(up, 1)
    assert fused.weight.shape == (24, HIDDEN)  # half of each part
    local_gate, local_up = fused(x).chunk(2, dim=-1)
    errors["column_fused"] = max(_err(_gather(local_gate), x @ gate.T), _err(_gather(local_up), x @ up.T))

    # q split over the 2 ranks; a single KV head (8 rows) replicated on both, as with 1 KV head and TP 2
    q, k, v = torch.randn(16, HIDDEN), torch.randn(8, HIDDEN), torch.randn(8, HIDDEN)
    qkv = ColumnParallelLinear(HIDDEN, [16, 8, 8], [2, 1, 1])
    for part, w in enumerate((q, k, v)):
        qkv.load_shard(w, part)
    local_q, local_k, local_v = qkv(x).split([8, 8, 8], dim=-1)
    errors["column_replicated_kv"] = max(_err(_gather(local_q), x @ q.T), _err(local_k, x @ k.T),
                                         _err(local_v, x @ v.T))

    w = torch.randn(12, HIDDEN)
    row = RowParallelLinear(HIDDEN, 12)
    row.load_shard(w)
    half = HIDDEN // 2
    errors["row"] = _err(row(x[:, rank * half : (rank + 1) * half]), x @ w.T)

    table = torch.randn(10, HIDDEN)
    embed = VocabParallelEmbedding(10, HIDDEN)
    embed.load_shard(table)
    ids = torch.tensor([0, 9, 4, 5, 3, 7, 4])  # rows of both shards, and a repeat
    errors["vocab_embedding"] = _err(embed(ids), F.embedding(ids, table))

    head = ParallelLMHead(10, HIDDEN)
    head.load_shard(table)
    logits = head(x)
    if rank == 0:
        errors["lm_head"] = _err(logits, x @ table.T)
        assert logits.dtype == torch.float32
    else:
        assert logits is None  # logits are gathered on rank 0 only
    for name, error in errors.items():
        assert error < 1e-5, (rank, name, error)
    return errors


@pytest.fixture(scope="module")
def errors() -> dict[str, float]:
    return run_on_two_ranks(layer_errors)


@pytest.mark.parametrize("layer", ["column_fused", "column_replicated_kv", "row", "vocab_embedding", "lm_head"])
def test_sharded_layer_matches_unsharded_twin(errors, layer):
    assert errors[layer] < 1e-5


def test_prepacked_layers_match_plain_matmuls():
    """oneDNN-packed weights (the CPU default) give F.linear's results; only a tied embedding keeps its plain copy."""
    from torch import nn

    from engine.parallel.layers import prepack_linears

    torch.manual_seed(0)
    model = nn.ModuleDict({"qkv": ColumnParallelLinear(HIDDEN, [16, 8, 8]), "o": RowParallelLinear(16, HIDDEN),
                           "embed": VocabParallelEmbedding(10, HIDDEN), "head": ParallelLMHead(10, HIDDEN)})
    weights = {name: torch.randn(m.weight.shape) for name, m in model.items()}
    for name, m in model.items():
        m.weight.data.copy_(weights[name])
    x, ids = torch.randn(7, HIDDEN), torch.tensor([0, 9, 4])
    prepack_linears(model, tied_lm_head=True)
    assert model["qkv"].weight.numel() == 0 and model["head"].weight.numel() == 0  # freed: only packed now
    torch.testing.assert_close(model["qkv"](x), x @ weights["qkv"].T)
    torch.testing.assert_close(model["o"](x[:, :16]), x[:, :16] @ weights["o"].T)
    torch.testing.assert_close(model["head"](x), x @ weights["head"].T)
    torch.testing.assert_close(model["embed"].logits(x), x @ weights["embed"].T)  # tied: packed for logits
    torch.testing.assert_close(model["embed"](ids), F.embedding(ids, weights["embed"]))  # and still looked up

    untied = VocabParallelEmbedding(10, HIDDEN)
    prepack_linears(untied, tied_lm_head=False)
    assert untied.packed is None  # only looked up: nothing to pack


def test_weight_bytes_count_packed_weights_and_a_tied_embedding_twice():
    from torch import nn

    from engine.parallel.layers import prepack_linears
    from engine.parallel.worker import weight_bytes

    model = nn.ModuleDict({"qkv": ColumnParallelLinear(HIDDEN, [16, 8, 8]), "o": RowParallelLinear(16, HIDDEN),
                           "embed": VocabParallelEmbedding(10, HIDDEN), "head": ParallelLMHead(10, HIDDEN)})
    plain, packed = weight_bytes(model)
    assert plain == (32 + 16 + 10 + 10) * HIDDEN * 4 and packed == 0
    prepack_linears(model, tied_lm_head=True)
    # every weight is packed; the tied embedding also keeps its plain copy for the lookup
    assert weight_bytes(model) == (plain + 10 * HIDDEN * 4, plain)


def test_start_up_log_counts_the_packed_weights(tiny_models, caplog):
    import logging
    import re

    from safetensors.torch import load_file

    from engine import LLM

    caplog.set_level(logging.INFO, logger="engine.parallel.worker")
    LLM(model=str(tiny_models["llama"]), progress=False, enforce_eager=True, kv_cache_memory=1 << 20)
    line = next(r.getMessage() for r in caplog.records if "weights" in r.getMessage())
    logged = float(re.search(r"weights ([\d.]+) MiB", line).group(1))
    checkpoint = sum(t.numel() * 4 for f in tiny_models["llama"].glob("*.safetensors") for t in load_file(f).values())
    # untied: the embedding is only looked up (kept plain), the LM head and every layer's linears are packed
    assert "packed for oneDNN" in line and logged == round(checkpoint / 2**20, 1), line
