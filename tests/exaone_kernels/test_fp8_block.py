"""The block-scaled FP8 weight-only GEMM against its torch twin, in Triton's interpreter."""

import pytest
import torch

from exaone_kernels.fp8_block import fp8_block_matmul, fp8_block_reference


@pytest.mark.parametrize(("m", "n", "k", "block"), [(1, 64, 64, (32, 32)), (5, 100, 96, (32, 64)),
                                                    (18, 40, 72, (16, 32))])
def test_kernel_matches_its_twin(m: int, n: int, k: int, block: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(m + n)
    w = (torch.randn(n, k, generator=g) * 30).to(torch.float8_e4m3fn)
    scales = torch.rand(-(-n // block[0]), -(-k // block[1]), generator=g) * 1e-3 + 1e-4
    x = torch.randn(m, k, generator=g)
    expected = fp8_block_reference(x, w, scales, block)
    # the twin is the matmul it claims: each element of W scaled by its own block's scale
    dense = torch.stack([torch.stack([w[i, j].float() * scales[i // block[0], j // block[1]] for j in range(k)])
                         for i in range(n)])
    torch.testing.assert_close(expected, x @ dense.T, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fp8_block_matmul(x, w, scales, block), expected, rtol=1e-5, atol=1e-6)


def test_blocks_it_cannot_tile_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        fp8_block_matmul(torch.randn(2, 48), torch.zeros(16, 48).to(torch.float8_e4m3fn), torch.ones(1, 3), (16, 16))
