"""The quality gate of --quantization (issue 23): perplexity and teacher-forced top-1 agreement with fp32.

    PYTHONPATH=. .venv/bin/python benchmarks/quality.py [--model PATH] [--modes none int8 fp16] [--requantize]

The text is benchmarks/data/python_license.txt (CPython 3.11's LICENSE.txt, fixed and committed; no test
reads it), fed as one prompt; every position's log-probability of the next token comes from the prompt
logprobs, fed in chunks of 16 tokens so that each position runs the decode-sized kernels (a whole-prompt prefill
would take the dequantized fp32 GEMM instead). `--requantize` also runs int8 on an fp32 copy of a GGUF checkpoint, so that the int8 mode quantizes
fp32 weights itself (per 32 columns) instead of keeping the GGUF's own blocks, which it holds exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer

from engine import LLM, SamplingParams
from engine.model.loader import iter_weights, load_config, resolve_model, tokenizer_path
from engine.model.quant import KERNEL_MAX_ROWS
from engine.model.quant_modes import CPU_MODES

TEXT = Path(__file__).with_name("data") / "python_license.txt"


def teacher_forced(model: str, mode: str, ids: list[int]) -> tuple[list[float], list[int]]:
    """(log-probability of each next token, the model's top-1 token) at every position of `ids`."""
    # chunks of KERNEL_MAX_ROWS tokens: every position goes through the decode-sized kernels that serving runs
    llm = LLM(model=model, progress=False, quantization=mode, max_model_len=len(ids) + 8, enable_prefix_caching=False,
              max_num_batched_tokens=KERNEL_MAX_ROWS)
    try:
        out = llm.generate(prompt_token_ids=[ids], sampling_params=SamplingParams(
            max_tokens=1, temperature=0.0, prompt_logprobs=1))[0]
    finally:
        llm.engine.shutdown()
    lps = [p for p in out.prompt_logprobs if p is not None]
    return [p.logprob for p in lps], [p.top[0][0] for p in lps]


def fp32_copy(gguf: Path, out: Path) -> Path:
    """The GGUF's weights dequantized to fp32 as an HF directory (config, safetensors, tokenizer files)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(load_config(gguf)))
    save_file({name: t.contiguous() for name, t in iter_weights(gguf, torch.float32)},
              out / "model.safetensors")
    for file in tokenizer_path(gguf).iterdir():
        shutil.copy2(file, out / file.name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--modes", nargs="+", default=list(CPU_MODES), choices=CPU_MODES)
    parser.add_argument("--requantize", action="store_true")
    args = parser.parse_args()
    path = resolve_model(args.model)
    runs = [(mode, str(path)) for mode in args.modes]
    tmp = tempfile.TemporaryDirectory()
    if args.requantize and path.suffix == ".gguf":
        runs.append(("int8 (from fp32)", str(fp32_copy(path, Path(tmp.name) / "fp32"))))
    tokens = AutoTokenizer.from_pretrained(tokenizer_path(path))(TEXT.read_text())["input_ids"]
    print(f"text: {TEXT.name}, {len(tokens)} tokens; model {path.name}")
    base_lps, base_top = teacher_forced(str(path), "none", tokens)
    print("| mode | perplexity | vs fp32 | top-1 agreement with fp32 |\n|---|---|---|---|")
    base_ppl = math.exp(-sum(base_lps) / len(base_lps))
    for label, model in runs:
        mode = label.split()[0]
        lps, top = (base_lps, base_top) if label == "none" else teacher_forced(model, mode, tokens)
        ppl = math.exp(-sum(lps) / len(lps))
        agree = sum(a == b for a, b in zip(top, base_top, strict=True)) / len(top)
        print(f"| {label} | {ppl:.3f} | {100 * (ppl / base_ppl - 1):+.2f}% | {100 * agree:.1f}% |", flush=True)
    tmp.cleanup()


if __name__ == "__main__":
    main()
