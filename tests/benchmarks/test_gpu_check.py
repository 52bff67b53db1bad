"""benchmarks/gpu_check.py runs end to end on tiny shapes (interpreter) and imports nothing the GPU box lacks."""

import json
import subprocess
import sys
from pathlib import Path

from fixtures_cpu import avx2_only_env

ROOT = Path(__file__).resolve().parents[2]
# Installed here but not on the GPU machine, which has only torch, triton, transformers (with its own
# dependencies: tokenizers, huggingface_hub, tqdm), safetensors and numpy.
NOT_THERE = {"gguf", "xgrammar", "msgspec", "fastapi", "uvicorn", "openai", "sse_starlette", "prometheus_client",
             "jsonschema", "accelerate"}

RUN = """
import runpy, sys
sys.argv = ["gpu_check.py", "--dry-run", "--out", sys.argv[1]]
runpy.run path
print("IMPORTED", sorted({m.split(".")[0] for m in sys.modules}))
""".replace("runpy.run path", f"runpy.run_path({str(ROOT / 'benchmarks' / 'gpu_check.py')!r}, run_name='__main__')")


def test_dry_run_writes_every_section(tmp_path):
    """On an AVX2-only CPU too: the dry run checks GPU code and must not need the CPU's bf16."""
    env = {**avx2_only_env(), "TRITON_INTERPRET": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", RUN, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = set(eval(proc.stdout.rsplit("IMPORTED", 1)[1]))
    assert not imported & NOT_THERE, imported & NOT_THERE
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["a"] and all(row["ok"] for row in report["a"]), report["a"]
    assert {(r["layer"], r["batch"], r["context"]) for r in report["b"]} == {
        (kind, b, c) for kind in ("global", "local") for b in (1, 3) for c in (8, 40)}
    assert [r["tile_n"] for r in report["b2"]] == [16, 32, 64, 128] * 2
    assert {r["impl"] for r in report["b3"]} >= {"triton", "sdpa"}
    assert [(r["batch"], r["mode"]) for r in report["c"]] == [(1, "eager"), (2, "eager")]  # no graphs on CPU
    assert report["d"][0]["tokens"] == 40
    assert "### (d) 32B-shaped layer pair" in proc.stdout


def test_refuses_to_run_full_size_without_a_gpu():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--dry-run" in proc.stderr
