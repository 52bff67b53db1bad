"""HybridTransformer: one model definition for EXAONE 4.0 and the Llama family."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from engine.attention.backend import AttentionBackend, AttentionMetadata
from engine.config import LayerSpec, ModelConfig, rope_inv_freq
from engine.errors import ModelLoadError
from engine.model.compiled import CompiledDecoder, paged_attention
from engine.model.quant import finish_quant_methods, install_quant_methods, served_mode
from engine.parallel.layers import (
    ColumnParallelLinear,
    ParallelLMHead,
    RowParallelLinear,
    ShardedLayer,
    VocabParallelEmbedding,
)
from engine.parallel.sizes import kv_heads_per_rank
from engine.parallel.state import tp_size


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
    """GQA self-attention with optional per-head QK-norm and optional RoPE; this rank's heads only."""

    compiled_id: int | None = None  # the CompiledDecoder running this layer, if any

    def __init__(self, cfg: ModelConfig, spec: LayerSpec, layer_idx: int, backend: AttentionBackend) -> None:
        super().__init__()
        self.spec, self.layer_idx, self.backend = spec, layer_idx, backend
        tp, hd = tp_size(), cfg.head_dim
        self.num_heads, self.head_dim = cfg.num_heads // tp, hd
        self.num_kv_heads = kv_heads_per_rank(cfg.num_kv_heads, tp)
        self.q_size, self.kv_size = self.num_heads * hd, self.num_kv_heads * hd
        full_q, full_kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
        kv_shards = min(tp, cfg.num_kv_heads)  # fewer KV heads than ranks: each is replicated
        self.qkv_proj = ColumnParallelLinear(cfg.hidden_size, [full_q, full_kv, full_kv], [tp, kv_shards, kv_shards])
        self.o_proj = RowParallelLinear(full_q, cfg.hidden_size)
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
        if self.compiled_id is not None and torch.compiler.is_compiling():
            out = paged_attention(q.contiguous(), k.contiguous(), v.contiguous(), self.compiled_id, self.layer_idx)
        else:
            out = self.attend(q, k, v, meta, kv_cache)
        return self.o_proj(out.reshape(-1, self.q_size))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata,
               kv_cache: torch.Tensor) -> torch.Tensor:
        """Write this step's K/V into the cache and attend over it: [num_tokens, num_heads, head_dim]."""
        layout = meta.layouts[self.spec.kv_kind]
        return self.backend.forward(q, k, v, kv_cache, layout, self.spec.sliding_window, meta, self.scale)


class MLP(nn.Module):
    """SwiGLU feed-forward with gate and up projections fused into one matmul."""

    def __init__(self, cfg: ModelConfig, backend: AttentionBackend) -> None:
        super().__init__()
        self.backend = backend
        self.gate_up_proj = ColumnParallelLinear(cfg.hidden_size, [cfg.intermediate_size] * 2)
        self.down_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size)

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
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
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
        self.compiled: CompiledDecoder | None = None  # set by compile_layers()
        self.model = DecoderStack(cfg, backend)
        self.rope = RotaryEmbedding(cfg, max_len)
        if not cfg.tie_word_embeddings:
            self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size)

    @classmethod
    def from_checkpoint(cls, path: Path, cfg: ModelConfig, backend: AttentionBackend, dtype: torch.dtype,
                        device: torch.device, max_len: int, progress: bool = False,
                        quantization: str = "none") -> HybridTransformer:
        """Build the model on `device` and load its weights (this rank's slices in a tensor-parallel group);
        with `quantization` (engine.model.quant) the linears keep 8- or 16-bit weights; on CUDA a quantized
        checkpoint's linears stay as stored (engine.model.quant_cuda)."""
        from engine.model.loader import (  # here, so the model imports without gguf (GPU check image)
            checkpoint_quantization,
            iter_weights,
        )

        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with device:
                model = cls(cfg, backend, max_len)
        finally:
            torch.set_default_dtype(default_dtype)
        quantization = served_mode(quantization, checkpoint_quantization(path), device)
        if quantization != "none" and device.type != "cpu":
            raise ValueError(f"--quantization {quantization} is for the CPU path")
        keep_quantized, on_cuda = quantization == "int8", False
        if device.type == "cuda" and checkpoint_quantization(path) is not None:
            from engine.model.quant_cuda import (
                install_cuda_quant_methods,  # here: it imports triton, which only the GPU path installs
            )

            install_cuda_quant_methods(model)
            keep_quantized = on_cuda = True
        else:
            install_quant_methods(model, quantization, dtype, cfg.tie_word_embeddings)
        model.load_weights(iter_weights(path, dtype, progress=progress, keep_quantized=keep_quantized,
                                        dense_act_order=on_cuda))
        finish_quant_methods(model)
        return model.eval()

    def forward(self, input_ids: torch.Tensor, meta: AttentionMetadata,
                kv_caches: list[torch.Tensor]) -> torch.Tensor:
        """Hidden states after the final norm for every token of the flat batch."""
        h = self.model.embed_tokens(input_ids)
        rope = self.rope(meta.positions, h.dtype)  # once per step, shared by every RoPE layer
        if self.compiled is not None:
            return self.model.norm(self.compiled(h, rope, meta, kv_caches))
        for layer, kv_cache in zip(self.model.layers, kv_caches, strict=True):
            h = layer(h, rope, meta, kv_cache)
        return self.model.norm(h)

    def compile_layers(self) -> None:
        """Run the decoder layers as one torch.compile graph from the next forward on (engine.model.compiled)."""
        self.compiled = CompiledDecoder(self.model.layers)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Vocabulary logits in fp32 for the given hidden states (on rank 0; None on other ranks)."""
        head = self.model.embed_tokens if self.cfg.tie_word_embeddings else self.lm_head
        return head.logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors in (this rank's slice of sharded ones, q/k/v and gate/up fused);
        any missing or misshapen tensor is an error."""
        loaders = self._weight_loaders()
        seen: set[str] = set()
        for name, tensor in weights:
            if name not in loaders:
                continue  # e.g. rotary inv_freq buffers, or lm_head.weight of a tied model
            shape, load = loaders[name]
            if tuple(tensor.shape) != shape:
                raise ModelLoadError(
                    f"tensor {name} has shape {tuple(tensor.shape)}, expected {shape} from config.json"
                )
            with torch.no_grad():
                load(tensor)
            seen.add(name)
        missing = sorted(set(loaders) - seen)
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise ModelLoadError(f"checkpoint is missing weights: {', '.join(missing[:3])}{more}")

    def _weight_loaders(self) -> dict[str, tuple[tuple[int, ...], Callable[[torch.Tensor], None]]]:
        """HF tensor name -> (its full checkpoint shape, a function copying this rank's part of it in)."""
        loaders: dict[str, tuple[tuple[int, ...], Callable[[torch.Tensor], None]]] = {}
        sharded: set[str] = set()
        for mname, module in self.named_modules():
            if not isinstance(module, ShardedLayer):
                continue
            parent, _, last = mname.rpartition(".")
            hf_names = [f"{parent}.{hf}.weight" for hf in self.FUSED[last]] if last in self.FUSED else [f"{mname}.weight"]
            for part, name in enumerate(hf_names):
                loaders[name] = (module.full_shapes[part], partial(module.load_shard, part=part))
            sharded.add(f"{mname}.weight")
        for pname, p in self.named_parameters():
            if pname not in sharded:
                loaders[pname] = (tuple(p.shape), p.copy_)
        return loaders
