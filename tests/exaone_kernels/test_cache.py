"""Cache-write kernel against its twin: paged and ring slots, strided K/V rows, padding slots skipped."""

import torch

from exaone_kernels import reference
from exaone_kernels.cache import write_kv_cache


def test_write_matches_twin_and_skips_padding():
    g = torch.Generator().manual_seed(0)
    num_blocks, block_size, kv_heads, dim = 6, 4, 5, 64
    qkv = torch.randn(9, 3 * kv_heads * dim, generator=g)  # K/V as strided views of a fused projection
    k = qkv[:, kv_heads * dim : 2 * kv_heads * dim].view(9, kv_heads, dim)
    v = qkv[:, 2 * kv_heads * dim :].view(9, kv_heads, dim)
    slots = torch.tensor([3, 4, 5, 6, -1, 22, 23, 0, -1])  # chunk crossing a block boundary, two pads
    cache = torch.full((2, num_blocks, block_size, kv_heads, dim), float("nan"))
    expected = cache.clone()
    reference.write_kv_cache(k, v, expected, slots)
    write_kv_cache(k, v, cache, slots)
    assert torch.equal(cache.isnan(), expected.isnan())
    assert torch.equal(torch.nan_to_num(cache), torch.nan_to_num(expected))
    assert int((~expected.isnan()).sum()) == 2 * 7 * kv_heads * dim


def test_empty_write_is_a_no_op():
    cache = torch.zeros(2, 1, 4, 1, 64)
    write_kv_cache(torch.zeros(0, 1, 64), torch.zeros(0, 1, 64), cache, torch.zeros(0, dtype=torch.int64))
    assert not cache.any()
