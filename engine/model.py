"""HybridTransformer: one model definition for EXAONE 4.0 and the Llama family."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention import AttentionBackend, AttentionMetadata
from engine.config import LayerSpec, ModelConfig, rope_inv_freq
from engine.errors import ModelLoadError


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension in fp32, optionally fused with a residual add."""

    def __init__(self, dim: int, eps: float, backend: AttentionBackend) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps, self.backend = eps, backend

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """RMSNorm(x) * weight, plus residual when given."""
        return self.backend.rms_norm(x, self.weight, self.eps, residual)


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables indexed by absolute position (rotate-half convention)."""

    def __init__(self, cfg: ModelConfig, max_len: int) -> None:
        super().__init__()
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), rope_inv_freq(cfg))
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for each token, shaped to broadcast over heads: [num_tokens, 1, head_dim]."""
        return self.cos[positions][:, None].to(dtype), self.sin[positions][:, None].to(dtype)


class Attention(nn.Module):
    """GQA self-attention with optional per-head QK-norm and optional RoPE."""

    def __init__(self, cfg: ModelConfig, spec: LayerSpec, layer_idx: int, backend: AttentionBackend) -> None:
        super().__init__()
        self.spec, self.layer_idx, self.backend = spec, layer_idx, backend
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_size, self.kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=False)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=False)
        if spec.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, backend)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, backend)
        self.eps = cfg.rms_norm_eps
        self.scale = cfg.head_dim**-0.5

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata,
                kv_cache: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.spec.qk_norm or self.spec.use_rope:
            q_w, k_w = (self.q_norm.weight, self.k_norm.weight) if self.spec.qk_norm else (None, None)
            cos, sin = rope if self.spec.use_rope else (None, None)
            q, k = self.backend.qk_norm_rope(q, k, q_w, k_w, self.eps, cos, sin)
        layout = meta.layouts[self.spec.kv_kind]
        out = self.backend.forward(q, k, v, kv_cache, layout, self.spec.sliding_window, meta, self.scale)
        return self.o_proj(out.reshape(-1, self.q_size))


class MLP(nn.Module):
    """SwiGLU feed-forward with gate and up projections fused into one matmul."""

    def __init__(self, cfg: ModelConfig, backend: AttentionBackend) -> None:
        super().__init__()
        self.backend = backend
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.backend.silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    """Attention + MLP with norms before each block (Llama) or after each block (EXAONE 4.0)."""

    def __init__(self, cfg: ModelConfig, spec: LayerSpec, layer_idx: int, backend: AttentionBackend) -> None:
        super().__init__()
        self.post_norm = spec.post_norm
        self.self_attn = Attention(cfg, spec, layer_idx, backend)
        self.mlp = MLP(cfg, backend)
        if spec.post_norm:
            self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, backend)
            self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, backend)
        else:
            self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, backend)
            self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, backend)

    def forward(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata,
                kv_cache: torch.Tensor) -> torch.Tensor:
        if self.post_norm:  # the residual add is fused into the norm
            h = self.post_attention_layernorm(self.self_attn(h, rope, meta, kv_cache), h)
            return self.post_feedforward_layernorm(self.mlp(h), h)
        h = h + self.self_attn(self.input_layernorm(h), rope, meta, kv_cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class DecoderStack(nn.Module):
    """Embeddings, layers and final norm; named `model` so HF weight names map one to one."""

    def __init__(self, cfg: ModelConfig, backend: AttentionBackend) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, spec, i, backend) for i, spec in enumerate(cfg.layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, backend)


class HybridTransformer(nn.Module):
    """Decoder-only LM over a flat token batch; each layer's attention kind comes from its LayerSpec."""

    # fused parameter -> the HF tensors stacked into it, in row order
    FUSED: ClassVar[dict[str, tuple[str, ...]]] = {
        "qkv_proj": ("q_proj", "k_proj", "v_proj"),
        "gate_up_proj": ("gate_proj", "up_proj"),
    }

    def __init__(self, cfg: ModelConfig, backend: AttentionBackend, max_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = DecoderStack(cfg, backend)
        self.rope = RotaryEmbedding(cfg, max_len)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, meta: AttentionMetadata,
                kv_caches: list[torch.Tensor]) -> torch.Tensor:
        """Hidden states after the final norm for every token of the flat batch."""
        h = self.model.embed_tokens(input_ids)
        rope = self.rope(meta.positions, h.dtype)  # once per step, shared by every RoPE layer
        for layer, kv_cache in zip(self.model.layers, kv_caches, strict=True):
            h = layer(h, rope, meta, kv_cache)
        return self.model.norm(h)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits in fp32 for the given hidden states."""
        weight = self.model.embed_tokens.weight if self.cfg.tie_word_embeddings else self.lm_head.weight
        return F.linear(hidden, weight).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors in, fusing q/k/v and gate/up; any missing or misshapen tensor is an error."""
        params = dict(self.named_parameters())
        expected = self._expected_shapes()
        seen: set[str] = set()
        for name, tensor in weights:
            if name not in expected:
                continue  # e.g. rotary inv_freq buffers, or lm_head.weight of a tied model
            target, offset, shape = expected[name]
            if tuple(tensor.shape) != shape:
                raise ModelLoadError(
                    f"tensor {name} has shape {tuple(tensor.shape)}, expected {shape} from config.json"
                )
            with torch.no_grad():
                params[target][offset : offset + shape[0]].copy_(tensor)
            seen.add(name)
        missing = sorted(set(expected) - seen)
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise ModelLoadError(f"checkpoint is missing weights: {', '.join(missing[:3])}{more}")

    def _expected_shapes(self) -> dict[str, tuple[str, int, tuple[int, ...]]]:
        """HF tensor name -> (our parameter, first row inside it, expected shape)."""
        cfg = self.cfg
        rows = {"q_proj": cfg.num_heads * cfg.head_dim, "k_proj": cfg.num_kv_heads * cfg.head_dim,
                "v_proj": cfg.num_kv_heads * cfg.head_dim, "gate_proj": cfg.intermediate_size,
                "up_proj": cfg.intermediate_size}
        expected: dict[str, tuple[str, int, tuple[int, ...]]] = {}
        for pname, p in self.named_parameters():
            module, leaf = pname.rsplit(".", 1)
            parent, _, last = module.rpartition(".")
            if last not in self.FUSED:
                expected[pname] = (pname, 0, tuple(p.shape))
                continue
            offset = 0
            for hf in self.FUSED[last]:
                expected[f"{parent}.{hf}.{leaf}"] = (pname, offset, (rows[hf], p.shape[1]))
                offset += rows[hf]
        return expected
