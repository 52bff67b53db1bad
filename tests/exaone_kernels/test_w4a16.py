"""The W4A16 GEMM (AWQ/GPTQ weights on CUDA) against its torch twin, in Triton's interpreter."""

import pytest
import torch

from exaone_kernels.w4a16 import pack_w4, unpack_w4, w4a16_matmul, w4a16_reference


def _weights(n: int, k: int, group: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), generator=g)
    scales = torch.rand(k // group, n, generator=g) * 0.02 + 0.001
    zeros = torch.randint(0, 16, (k // group, n), generator=g).float()
    return codes, scales, -zeros * scales


def test_packing_round_trips() -> None:
    codes = torch.randint(0, 16, (24, 64), generator=torch.Generator().manual_seed(0))
    packed = pack_w4(codes)
    assert packed.dtype == torch.int32 and packed.shape == (8, 24)
    assert torch.equal(unpack_w4(packed), codes.T.to(torch.int32))
    with pytest.raises(ValueError, match=r"0\.\.15"):
        pack_w4(codes - 8)


@pytest.mark.parametrize(("m", "n", "k", "group"), [(1, 64, 64, 32), (5, 72, 128, 64), (17, 40, 96, 32),
                                                    (3, 16, 128, 128)])
def test_kernel_matches_its_twin(m: int, n: int, k: int, group: int) -> None:
    codes, scales, offsets = _weights(n, k, group, seed=m + n)
    qweight = pack_w4(codes)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(k))
    got = w4a16_matmul(x, qweight, scales, offsets)
    expected = w4a16_reference(x, qweight, scales, offsets)
    dense = (codes.float() * scales.T.repeat_interleave(group, 1) + offsets.T.repeat_interleave(group, 1))
    torch.testing.assert_close(expected, x @ dense.T, rtol=1e-5, atol=1e-5)  # the twin is the matmul it claims
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_shapes_it_cannot_tile_are_refused() -> None:
    codes, scales, offsets = _weights(16, 48, 16, seed=1)
    with pytest.raises(ValueError, match="multiple of 32"):
        w4a16_matmul(torch.randn(2, 48), pack_w4(codes), scales, offsets)
    assert w4a16_matmul(torch.zeros(0, 64), pack_w4(_weights(16, 64, 32, 2)[0]), *_weights(16, 64, 32, 2)[1:]).shape \
        == (0, 16)
