"""Bad checkpoints fail with one readable line naming the problem."""

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from engine import LLM
from engine.errors import ModelLoadError


@pytest.fixture
def model_copy(tiny_models, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(tiny_models["exaone_global"], target)
    return target


def load_error(model_dir) -> str:
    with pytest.raises(ModelLoadError) as info:
        LLM(model=str(model_dir), progress=False)
    message = str(info.value)
    assert "\n" not in message
    return message


def rewrite_weights(model_dir, change) -> None:
    file = model_dir / "model.safetensors"
    tensors = load_file(file)
    change(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_unknown_architecture_is_named_with_the_supported_list(model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    config["architectures"] = ["MambaForCausalLM"]
    (model_copy / "config.json").write_text(json.dumps(config))
    message = load_error(model_copy)
    assert "MambaForCausalLM" in message
    assert "Exaone4ForCausalLM" in message and "LlamaForCausalLM" in message


def test_missing_weights_are_named(model_copy):
    rewrite_weights(model_copy, lambda t: t.pop("model.layers.1.mlp.down_proj.weight"))
    assert "model.layers.1.mlp.down_proj.weight" in load_error(model_copy)


def test_wrong_shape_names_the_tensor_and_both_shapes(model_copy):
    def shrink(tensors):
        tensors["model.layers.0.self_attn.k_proj.weight"] = tensors["model.layers.0.self_attn.k_proj.weight"][:16]

    rewrite_weights(model_copy, shrink)
    message = load_error(model_copy)
    assert "model.layers.0.self_attn.k_proj.weight" in message
    assert "(16, 64)" in message and "(32, 64)" in message


def test_truncated_safetensors_names_the_file(model_copy):
    file = model_copy / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    message = load_error(model_copy)
    assert "model.safetensors" in message and "truncated" in message
