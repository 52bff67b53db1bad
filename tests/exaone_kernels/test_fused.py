"""Fused RMSNorm(+residual), QK-norm + RoPE and SwiGLU kernels against their torch twins (fp32)."""

import pytest
import torch

from exaone_kernels import fused, reference


def assert_close(out, expected):
    assert torch.isfinite(out).all()
    err = (out - expected).abs().max() / expected.abs().max()
    assert err <= 1e-4, float(err)


@pytest.mark.parametrize("rows", [0, 1, 7])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(rows, with_residual):
    g = torch.Generator().manual_seed(rows)
    x, residual = torch.randn(rows, 96, generator=g), torch.randn(rows, 96, generator=g)
    weight = torch.randn(96, generator=g)
    res = residual if with_residual else None
    out = fused.rms_norm(x, weight, 1e-5, res)
    expected = reference.rms_norm(x, weight, 1e-5, res)
    assert out.shape == expected.shape
    if rows:
        assert_close(out, expected)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize(("norm", "rope"), [(True, True), (True, False), (False, True)])
def test_qk_norm_rope(head_dim, norm, rope):
    g = torch.Generator().manual_seed(head_dim)
    tokens, heads, kv_heads = 5, 10, 2
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, generator=g)  # strided q/k views
    q = qkv[:, : heads * head_dim].view(tokens, heads, head_dim)
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    weights = (torch.randn(head_dim, generator=g), torch.randn(head_dim, generator=g)) if norm else (None, None)
    angles = torch.randn(tokens, 1, head_dim // 2, generator=g).repeat(1, 1, 2) * 10
    cos, sin = (angles.cos(), angles.sin()) if rope else (None, None)
    got = fused.qk_norm_rope(q, k, *weights, 1e-5, cos, sin)
    expected = reference.qk_norm_rope(q, k, *weights, 1e-5, cos, sin)
    for out, ref in zip(got, expected, strict=True):
        assert_close(out, ref)


@pytest.mark.parametrize("rows", [1, 6])
def test_silu_and_mul(rows):
    x = torch.randn(rows, 2 * 1500, generator=torch.Generator().manual_seed(1))  # two column tiles, ragged
    assert_close(fused.silu_and_mul(x), reference.silu_and_mul(x))
    assert fused.silu_and_mul(torch.zeros(0, 8)).shape == (0, 4)
