"""The CPU feature checks: both answers of each, forced, with the model still matching its reference."""

import logging
import os
import subprocess
import sys

import pytest
import torch
from fixtures_cpu import AVX2_ONLY, avx2_only_env, force_cpu
from reference import hf_greedy, random_prompts

from engine import LLM, SamplingParams
from engine import cpu_features as cpu
from engine.cpu_features import CpuFeatures, linear_path

NATIVE_BF16 = CpuFeatures(isa="AVX512", onednn=True, onednn_bf16=True, avx512_bf16=True, amx=True, vnni=True)
NO_ONEDNN = CpuFeatures(isa="AVX2", onednn=False, onednn_bf16=False, avx512_bf16=False, amx=False, vnni=False)


def test_each_path_follows_its_check(monkeypatch):
    force_cpu(monkeypatch, NATIVE_BF16)
    assert linear_path(torch.float32)[0] and linear_path(torch.bfloat16)[0]
    assert cpu.cpu_features().native_bf16
    assert not linear_path(torch.float16)[0] and not linear_path(torch.float32, want_prepack=False)[0]
    force_cpu(monkeypatch, AVX2_ONLY)
    assert linear_path(torch.float32)[0]
    assert not linear_path(torch.bfloat16)[0] and "AVX-512" in linear_path(torch.bfloat16)[1]
    assert not cpu.cpu_features().native_bf16
    force_cpu(monkeypatch, NO_ONEDNN)
    assert not linear_path(torch.float32)[0] and "oneDNN" in linear_path(torch.float32)[1]


def test_this_process_sees_its_caps():
    """The real check, in a child capped at AVX2: what oneDNN and ATen refuse there, the check refuses."""
    code = "from engine.cpu_features import cpu_features; f = cpu_features(); print(f.isa, f.onednn_bf16, f.amx)"
    out = subprocess.run([sys.executable, "-c", code], env=avx2_only_env(), capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    assert out == ["AVX2", "False", "False"]


def test_start_up_line_names_the_paths(tiny_models, monkeypatch, caplog):
    force_cpu(monkeypatch, AVX2_ONLY)
    with caplog.at_level(logging.INFO, logger="engine.cpu_features"):
        LLM(model=str(tiny_models["llama"]), dtype="bfloat16", progress=False, enforce_eager=True)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "engine.cpu_features"]
    assert line.startswith("CPU AVX2;") and "bfloat16 plain F.linear" in line and "float32 oneDNN-packed" in line
    assert "serving bfloat16" in line and "slower in batches" in line


@pytest.mark.parametrize("features", [AVX2_ONLY, NO_ONEDNN], ids=["avx2-only", "no-onednn"])
def test_fp32_fallbacks_match_transformers(tiny_models, monkeypatch, features):
    force_cpu(monkeypatch, features)
    model_dir = tiny_models["exaone_hybrid"]
    llm = LLM(model=str(model_dir), progress=False)
    assert (llm.engine.model.model.layers[0].mlp.down_proj.packed is not None) == features.onednn
    prompts = random_prompts(llm.engine.model_config.vocab_size, [20, 33])
    outputs = llm.generate(prompt_token_ids=prompts, sampling_params=SamplingParams(
        max_tokens=24, temperature=0.0, ignore_eos=True))
    for out, (ref_tokens, _) in zip(outputs, hf_greedy(model_dir, prompts, 24), strict=True):
        assert out.outputs[0].token_ids == ref_tokens


def test_bf16_generate_answers_on_an_avx2_only_cpu(tiny_models):
    """The command that crashed at load on AVX2 (oneDNN's bf16 reorder), in a process that is AVX2-only."""
    proc = subprocess.run(
        [str(os.path.join(os.path.dirname(sys.executable), "exaone-serve")), "generate", "--model",
         str(tiny_models["exaone_hybrid"]), "--dtype", "bfloat16", "--max-tokens", "8", "--log-level", "info",
         "hello world"],
        env=avx2_only_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip()
    assert "CPU AVX2" in proc.stderr and "bfloat16 plain F.linear" in proc.stderr
