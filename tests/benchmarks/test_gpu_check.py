"""benchmarks/gpu_check.py runs end to end on tiny shapes (interpreter), imports nothing the GPU box lacks, and
fails (exit 1) when a correctness row does."""

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
sys.argv = ["gpu_check.py", "--dry-run", "--out", *sys.argv[1:]]
runpy.run path
print("IMPORTED", sorted({m.split(".")[0] for m in sys.modules}))
""".replace("runpy.run path", f"runpy.run_path({str(ROOT / 'benchmarks' / 'gpu_check.py')!r}, run_name='__main__')")


def dry_run(out: Path, *args: str) -> subprocess.CompletedProcess:
    """On an AVX2-only CPU too: the dry run checks GPU code and must not need the CPU's bf16."""
    env = {**avx2_only_env(), "TRITON_INTERPRET": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", RUN, str(out), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_dry_run_writes_every_section(tmp_path):
    proc = dry_run(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = set(eval(proc.stdout.rsplit("IMPORTED", 1)[1]))
    assert not imported & NOT_THERE, imported & NOT_THERE
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["failed"] == []
    for key in ("a", "a2", "a3"):
        assert report[key] and all(row["ok"] and row["rel_err"] < 1e-2 for row in report[key]), report[key]
    assert [(r["batch"], r["ring_laps"] > 1) for r in report["a2"]] == [(1, True), (2, True)]  # the ring wrapped
    assert {(r["layer"], r["step"], r["split_k"]) for r in report["a3"]} == {
        (layer, step, split) for layer in ("global", "ring") for step in ("2 decodes", "decode + chunk")
        for split in (True, False)}
    assert {(r["layer"], r["batch"], r["context"]) for r in report["b"]} == {
        (kind, b, c) for kind in ("global", "local") for b in (1, 3) for c in (8, 40)}
    assert [r["tile_n"] for r in report["b2"]] == [16, 32, 64, 128] * 2
    assert {r["impl"] for r in report["b3"]} >= {"triton", "sdpa"}
    assert [(r["batch"], r["mode"]) for r in report["c"]] == [(1, "eager"), (2, "eager")]  # no graphs on CPU
    assert report["d"][0]["tokens"] == 40
    assert "### (d) 32B-shaped layer pair" in proc.stdout
    assert "paste into benchmarks/RESULTS.md" in proc.stdout and "every correctness row passed" in proc.stdout


def test_a_perturbed_side_fails_every_correctness_row_and_the_run(tmp_path):
    """--perturb adds noise to the side under test (the Triton output, the graph replay): each correctness row
    must catch it, and the script exits 1."""
    proc = dry_run(tmp_path, "--sections", "a", "--perturb", "0.1")
    assert proc.returncode == 1, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = [row for key in ("a", "a2", "a3") for row in report[key]]
    assert len(rows) == len(report["failed"]) == 11 + 2 + 8  # (a): 7 kernels, 2 W4A16 rows, 2 FP8 rows
    assert not any(row["ok"] for row in rows)
    assert "21 correctness rows FAILED" in proc.stdout


def test_refuses_to_run_full_size_without_a_gpu():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--dry-run" in proc.stderr
