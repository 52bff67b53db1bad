"""Layer specs from config.json: which layers slide, which use RoPE, norm placement."""

import threading

import pytest
import torch
import transformers
from harness import wait_for

from engine.config import EngineConfig, ModelConfig, resolve_device, rope_inv_freq
from engine.core.async_engine import AsyncEngine
from engine.core.llm_engine import LLMEngine
from engine.errors import ModelLoadError

EXAONE_32B = {
    "architectures": ["Exaone4ForCausalLM"], "hidden_size": 5120, "intermediate_size": 27392,
    "num_hidden_layers": 64, "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128,
    "vocab_size": 102400, "max_position_embeddings": 131072, "rope_theta": 1000000,
    "rope_scaling": {"factor": 16.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "sliding_window": 4096, "sliding_window_pattern": "LLLG",
}


def kinds(cfg: ModelConfig) -> str:
    return "".join("L" if s.sliding_window else "G" for s in cfg.layers)


def test_32b_shape_from_layer_types_or_pattern_string():
    layer_types = (["sliding_attention"] * 3 + ["full_attention"]) * 16
    with_types = ModelConfig.from_hf({**EXAONE_32B, "layer_types": layer_types})
    from_pattern = ModelConfig.from_hf(EXAONE_32B)
    assert kinds(with_types) == kinds(from_pattern) == "LLLG" * 16
    for spec in with_types.layers:
        assert spec.use_rope == (spec.sliding_window == 4096)  # global NoPE
        assert spec.post_norm and spec.qk_norm
    assert with_types.rope_scaling["rope_type"] == "llama3" and with_types.rope_theta == 1e6


def test_null_window_means_every_layer_global_with_rope():
    cfg = ModelConfig.from_hf({**EXAONE_32B, "sliding_window": None, "num_hidden_layers": 30})
    assert kinds(cfg) == "G" * 30 and all(s.use_rope for s in cfg.layers)


def test_absent_keys_follow_transformers_defaults():
    hf = {k: v for k, v in EXAONE_32B.items() if k not in ("sliding_window", "sliding_window_pattern")}
    ref = transformers.Exaone4Config(**{**hf, "num_hidden_layers": 8})
    ours = ModelConfig.from_hf({**hf, "num_hidden_layers": 8})
    assert kinds(ours) == "".join("L" if t == "sliding_attention" else "G" for t in ref.layer_types)
    assert {s.sliding_window for s in ours.layers} == {ref.sliding_window, None}
    # transformers keeps RoPE off the global layers whenever a window is configured
    all_full = ModelConfig.from_hf({**hf, "layer_types": ["full_attention"] * 64})
    assert not any(s.use_rope for s in all_full.layers)


def test_llama_is_pre_norm_rope_everywhere():
    cfg = ModelConfig.from_hf({"architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536,
                               "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                               "vocab_size": 49152, "rope_theta": 100000, "sliding_window": 4096})
    assert all(s.use_rope and not s.post_norm and not s.qk_norm and s.sliding_window is None for s in cfg.layers)
    assert cfg.head_dim == 64


def test_llama3_inv_freq_equals_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    # transformers 5 cannot expand a string pattern itself, so give it the layer types
    ref_cfg = transformers.Exaone4Config(**{**EXAONE_32B, "num_hidden_layers": 4,
                                            "layer_types": ["sliding_attention"] * 3 + ["full_attention"]})
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](ref_cfg, "cpu")
    assert torch.allclose(rope_inv_freq(ModelConfig.from_hf(EXAONE_32B)), ref, rtol=1e-6, atol=0)


def test_unsupported_rope_type_is_named():
    with pytest.raises(ModelLoadError, match="yarn"):
        ModelConfig.from_hf({**EXAONE_32B, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})


def test_cuda_devices_become_current_on_the_thread_that_runs_them(monkeypatch, tiny_models):
    """Triton launches on the current device: `cuda:1` must make device 1 current where the model loads and on
    the engine's step thread, or its kernels would run on device 0 with pointers into device 1."""
    calls: list[tuple[str, torch.device]] = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append((threading.current_thread().name, d)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and calls[-1][1] == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 3)  # the index made explicit
    calls.clear()
    assert resolve_device("cpu") == torch.device("cpu") and not calls
    llm = LLMEngine(str(tiny_models["llama"]), "cpu", None, EngineConfig(), progress=False)
    llm.device = torch.device("cuda", 1)  # what a cuda:1 engine holds; the loop below only idles
    engine = AsyncEngine(llm)
    try:
        wait_for(lambda: calls, timeout=30)
    finally:
        engine.shutdown()
    assert calls == [("exaone-engine", torch.device("cuda", 1))]


def test_batch_limits_default_per_device_type():
    """CPU-tuned limits (64 sequences, 512-token steps) on the CPU; vLLM's order of magnitude on CUDA; what a
    user sets stays."""
    cpu, cuda, mine = EngineConfig(), EngineConfig(), EngineConfig(max_num_seqs=8)
    cpu.fill_device_defaults(torch.device("cpu"))
    cuda.fill_device_defaults(torch.device("cuda", 0))
    mine.fill_device_defaults(torch.device("cuda", 0))
    assert (cpu.max_num_seqs, cpu.max_num_batched_tokens) == (64, 512)
    assert (cuda.max_num_seqs, cuda.max_num_batched_tokens) == (256, 8192)
    assert (mine.max_num_seqs, mine.max_num_batched_tokens) == (8, 8192)
