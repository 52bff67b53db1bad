"""engine.model.gguf_loader: config from metadata, dequantized HF-named weights, Q/K un-permutation, tokenizer cache."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

from engine.errors import ModelLoadError
from engine.model.gguf_loader import gguf_config, gguf_tokenizer_dir, gguf_weights, unpermute_qk
from engine.model.loader import iter_weights, load_config, tokenizer_path, total_weight_count

Q = gguf.GGMLQuantizationType


def llamacpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (n_head already the kv count for k)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def llamacpp_llama3_rope_freqs(rope: dict[str, Any], head_dim: int) -> np.ndarray:
    """convert_hf_to_gguf.py's rope_freqs tensor for llama3 rope scaling (an independent oracle)."""
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * rope["rope_theta"] ** (i / head_dim)
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def _writer(path: Path, arch: str, config: dict[str, Any]) -> gguf.GGUFWriter:
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_key_length(config["head_dim"])
    writer.add_value_length(config["head_dim"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    return writer


def _finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def hf_dir_to_gguf(directory: Path, out: Path) -> dict[str, torch.Tensor]:
    """Convert a tiny HF checkpoint to an F32 GGUF the way llama.cpp does; returns the HF tensors."""
    config = load_config(directory)
    arch = {"llama": "llama", "exaone4": "exaone4"}[config["model_type"]]
    writer = _writer(out, arch, config)
    if config.get("sliding_window"):
        writer.add_sliding_window(config["sliding_window"])
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in config["layer_types"]])
    if config["rope_parameters"]["rope_type"] == "llama3":
        writer.add_tensor("rope_freqs.weight", llamacpp_llama3_rope_freqs(config["rope_parameters"], config["head_dim"]))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config["num_hidden_layers"])
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    for hf_name, tensor in tensors.items():
        array = tensor.numpy()
        if arch == "llama" and "q_proj" in hf_name:
            array = llamacpp_permute(array, config["num_attention_heads"])
        elif arch == "llama" and "k_proj" in hf_name:
            array = llamacpp_permute(array, config["num_key_value_heads"])
        writer.add_tensor(names.get_name(hf_name, try_suffixes=(".weight", ".bias")), np.ascontiguousarray(array))
    _finish(writer)
    return tensors


@pytest.mark.parametrize("kind", ["llama", "exaone_hybrid", "exaone_global"])
def test_converted_tiny_model_round_trips(tiny_models: dict[str, Path], tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.gguf"
    expected = hf_dir_to_gguf(tiny_models[kind], path)
    got = dict(iter_weights(path, torch.float32))
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    assert total_weight_count(path) == len(expected)

    want, config = load_config(tiny_models[kind]), load_config(path)
    for key in ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
                "vocab_size", "tie_word_embeddings", "bos_token_id", "eos_token_id"):
        assert config[key] == want[key], key
    assert config["rms_norm_eps"] == pytest.approx(want["rms_norm_eps"])
    assert config["rope_parameters"] == pytest.approx(want["rope_parameters"])
    if kind != "llama":
        assert config["layer_types"] == want["layer_types"]
        assert config["sliding_window"] == want["sliding_window"]


def test_default_gguf_matches_transformers(default_gguf: Path) -> None:
    # from_pretrained(gguf_file=...) insists on accelerate (not a dependency here); this is the
    # function it calls to dequantize, rename and un-permute the GGUF tensors.
    want = transformers.AutoConfig.from_pretrained(default_gguf.parent, gguf_file=default_gguf.name)
    with torch.device("meta"):
        skeleton = transformers.AutoModelForCausalLM.from_config(want)
    reference = load_gguf_checkpoint(str(default_gguf), return_tensors=True, model_to_load=skeleton)["tensors"]
    got = dict(gguf_weights(default_gguf, torch.float32))
    # SmolLM2 ties lm_head to the embedding; the GGUF has no output.weight.
    assert got.keys() == reference.keys() and "lm_head.weight" not in got
    for name, tensor in got.items():
        assert tensor.shape == reference[name].shape, name
        assert (tensor - reference[name]).abs().max().item() <= 1e-6, name

    config = gguf_config(default_gguf)
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"]
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "vocab_size", "eos_token_id"):
        assert config[key] == getattr(want, key), key
    assert config["rope_parameters"] == want.rope_parameters


@pytest.mark.parametrize(("n_head", "rows"), [(4, 64), (2, 32), (9, 576)])
def test_qk_unpermute_inverts_llamacpp(n_head: int, rows: int) -> None:
    weights = np.random.default_rng(0).standard_normal((rows, 24)).astype(np.float32)
    permuted = llamacpp_permute(weights, n_head)
    assert not np.array_equal(permuted, weights)
    np.testing.assert_array_equal(unpermute_qk(permuted, n_head), weights)


def _single_tensor_gguf(path: Path, name: str, data: np.ndarray, qtype: Q, arch: str = "llama") -> None:
    config = {"num_hidden_layers": 1, "max_position_embeddings": 64, "hidden_size": 96, "intermediate_size": 96,
              "num_attention_heads": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "head_dim": 48,
              "rope_parameters": {"rope_theta": 1e4}, "vocab_size": 8, "bos_token_id": 0, "eos_token_id": 1}
    writer = _writer(path, arch, config)
    writer.add_tensor(name, data, raw_dtype=None if qtype == Q.F32 else qtype)
    _finish(writer)


# Largest dequantization error allowed, as a fraction of the tensor's largest magnitude:
# about one quantization step (half a step is the rounding bound).
@pytest.mark.parametrize(
    ("qtype", "tolerance"),
    [(Q.F32, 0.0), (Q.F16, 1e-3), (Q.BF16, 8e-3), (Q.Q8_0, 1 / 127), (Q.Q5_0, 1 / 16),
     (Q.Q5_1, 2 / 31), (Q.Q4_0, 1 / 8), (Q.Q4_1, 2 / 15)],
)
def test_quantized_round_trip(tmp_path: Path, qtype: Q, tolerance: float) -> None:
    original = np.random.default_rng(1).standard_normal((6, 96)).astype(np.float32)
    data = original if qtype == Q.F32 else gguf.quants.quantize(original, qtype)
    path = tmp_path / "q.gguf"
    _single_tensor_gguf(path, "blk.0.ffn_up.weight", data, qtype)
    ((name, tensor),) = list(gguf_weights(path, torch.float32))
    assert name == "model.layers.0.mlp.up_proj.weight" and tensor.shape == (6, 96)
    error = np.abs(tensor.numpy() - original).max()
    assert error <= tolerance * np.abs(original).max()


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K])
def test_k_quants_dequantize_to_hf_shape(tmp_path: Path, qtype: Q) -> None:
    # gguf-py cannot quantize K-quants; random blocks (bytes < 0x3c keep fp16 scales finite)
    # check that they load, in the row-major shape, with the library's values.
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.random.default_rng(2).integers(0, 0x3C, size=(3, 2 * type_size), dtype=np.uint8)
    path = tmp_path / "k.gguf"
    _single_tensor_gguf(path, "blk.0.ffn_down.weight", raw, qtype)
    ((_, tensor),) = list(gguf_weights(path, torch.float32))
    assert tensor.shape == (3, 2 * block)
    np.testing.assert_array_equal(tensor.numpy(), gguf.quants.dequantize(raw, qtype))


def test_other_arch_is_named_and_unknown_tensor_rejected(tmp_path: Path) -> None:
    path = tmp_path / "other.gguf"
    _single_tensor_gguf(path, "blk.0.attn_qkv.weight", np.zeros((4, 32), np.float32), Q.F32, arch="gpt2")
    config = gguf_config(path)
    assert config["architectures"] == ["gpt2"] and config["num_hidden_layers"] == 1
    with pytest.raises(ModelLoadError, match=r"blk\.0\.attn_qkv\.weight"):
        list(gguf_weights(path, torch.float32))


def test_corrupt_gguf_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + bytes(20))
    with pytest.raises(ModelLoadError, match=r"broken\.gguf"):
        load_config(path)


def test_tokenizer_is_converted_once_and_cached(
    default_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXAONE_SERVE_CACHE", str(tmp_path))
    first = tokenizer_path(default_gguf)
    assert first.parent == tmp_path / "tokenizers"
    tokenizer = transformers.AutoTokenizer.from_pretrained(first)
    assert tokenizer.is_fast and len(tokenizer) == 49152
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    template = gguf.GGUFReader(default_gguf).fields["tokenizer.chat_template"].contents()
    assert tokenizer.chat_template == template
    assert transformers.GenerationConfig.from_pretrained(first).eos_token_id == 2

    def no_second_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("tokenizer converted twice")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_second_conversion)
    assert gguf_tokenizer_dir(default_gguf) == first
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temp dirs left behind
