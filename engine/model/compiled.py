"""The decoder layers as one torch.compile (inductor) graph, for the CPU path (`--compile`).

Inductor fuses each layer's norms, RoPE, SwiGLU and residual adds into C++ loops and runs the stack
without Python between ops. What it cannot trace stays outside the graph as opaque custom ops: the
oneDNN-packed matmuls (engine.parallel.layers.packed_linear) and attention, whose step metadata and
KV caches are Python objects that change every step. `exaone::paged_attention` finds them through this
decoder's id, set just before each forward. Greedy outputs equal the eager path's.
"""

from __future__ import annotations

import itertools
import weakref

import torch
from torch import nn

from engine.attention.backend import AttentionMetadata

_DECODERS: weakref.WeakValueDictionary[int, CompiledDecoder] = weakref.WeakValueDictionary()
_ids = itertools.count()


class CompiledDecoder:
    """A HybridTransformer's decoder layers under torch.compile with a dynamic token count."""

    def __init__(self, layers: nn.ModuleList) -> None:
        self.layers = layers
        self.id = next(_ids)
        _DECODERS[self.id] = self
        for layer in self.layers:
            layer.self_attn.compiled_id = self.id
        self.meta: AttentionMetadata | None = None
        self.kv_caches: list[torch.Tensor] = []
        # Every decoder compiles the same code (guarded on its own layers), each with up to ~4 variants (one
        # token, more, past each quantized layer's row limit): dynamo's default of 8 per code would send the
        # third engine in a process (tests, a draft model) back to eager, where attention has no metadata.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        self._run = torch.compile(self._layers, dynamic=True)

    def __call__(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata,
                 kv_caches: list[torch.Tensor]) -> torch.Tensor:
        """The layers on one step's hidden states; attention reads `meta` and `kv_caches` through the op."""
        self.meta, self.kv_caches = meta, kv_caches
        try:
            return self._run(h, *rope)
        finally:
            self.meta, self.kv_caches = None, []

    def _layers(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h, (cos, sin), None, None)
        return h

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> torch.Tensor:
        """Layer `layer_idx`'s attention over this step's metadata and cache (eager, outside the graph)."""
        attn = self.layers[layer_idx].self_attn
        return attn.attend(q, k, v, self.meta, self.kv_caches[layer_idx]).contiguous()


@torch.library.custom_op("exaone::paged_attention", mutates_args=())
def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decoder_id: int, layer_idx: int) -> torch.Tensor:
    """Attention of layer `layer_idx` of compiled decoder `decoder_id` (writes its K/V into the cache)."""
    return _DECODERS[decoder_id].attend(q, k, v, layer_idx)


@paged_attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decoder_id: int, layer_idx: int) -> torch.Tensor:
    return torch.empty_like(q, memory_format=torch.contiguous_format)
