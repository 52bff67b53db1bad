"""Paged attention kernel (and split-K) against the torch backend on poisoned caches, under the interpreter."""

import pytest
import torch

from engine.attention.testing import make_case, run_reference, run_triton
from exaone_kernels.attention import paged_attention

# (contexts, new tokens per sequence): decodes first, then prefill chunks.
BATCHES = {
    "mixed": ([0, 37, 0, 21, 9], [1, 1, 19, 13, 6]),  # context 1, chunk crossing block boundaries
    "long": ([61, 3], [1, 22]),  # ring wrap-around for small windows
    "single": ([0], [1]),
}


def run_both(case, scale, segments=0, tile_n=16):
    return run_triton(case, scale, segments, tile_n), run_reference(case, scale)


def assert_close(out, expected):
    assert torch.isfinite(out).all()
    err = (out - expected).abs().max() / expected.abs().max().clamp(min=1e-6)
    assert err <= 1e-4, float(err)


# head_dim 128 on the mixed batch only, to keep the interpreter run short.
SHAPES = [(64, "mixed"), (64, "long"), (128, "mixed")]


@pytest.mark.parametrize(("head_dim", "batch"), SHAPES)
@pytest.mark.parametrize("group", [1, 4, 5])
@pytest.mark.parametrize("window", [None, 8, 100])
def test_matches_torch_backend(head_dim, batch, group, window):
    contexts, q_lens = BATCHES[batch]
    case = make_case(contexts, q_lens, 2 * group, 2, head_dim, window=window, seed=group)
    assert_close(*run_both(case, head_dim**-0.5))


@pytest.mark.parametrize("window", [None, 8])
@pytest.mark.parametrize("group", [1, 5])
def test_split_k_decode_matches(window, group):
    case = make_case([0, 70, 33, 5], [1, 1, 1, 1], 2 * group, 2, 64, window=window, seed=3)
    assert_close(*run_both(case, 0.125, segments=4))


def test_single_token_and_tile_wider_than_context():
    case = make_case(*BATCHES["single"], 4, 1, 64, window=4)
    assert_close(*run_both(case, 0.125, tile_n=64))


def test_empty_batch_returns_without_launching():
    q = torch.zeros(0, 4, 64)
    cache = torch.full((2, 2, 4, 1, 64), float("nan"))
    empty = torch.zeros(0, 1, dtype=torch.int64)
    out = paged_attention(q, cache, empty, torch.zeros(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), 1.0)
    assert out.shape == (0, 4, 64)


def test_window_skips_tiles_outside_it():
    """A poisoned key far outside the window is never read: not even 0 * NaN reaches the output."""
    case = make_case([200], [1], 4, 1, 64, window=8, block_size=4, max_chunk=256)
    out, expected = run_both(case, 0.125)
    assert_close(out, expected)
