#!/usr/bin/env bash
# Side by side on the embedded default's own GGUF: llama-server, then exaone-serve (its defaults), one
# at a time, each driven by benchmarks/serving.py (openai SDK, streaming, greedy, 64 output tokens).
#   LLAMA_SERVER=/path/to/llama-server benchmarks/vs_llama_server.sh [concurrency ...]   (default: 1 16 64)
# THREADS (default 2) sets llama-server's -t and exaone-serve's OMP_NUM_THREADS; PROMPTS_PER_STREAM
# (default 2) how many prompts each stream sends in turn (3 at one stream). EXAONE_VARIANTS runs
# exaone-serve once per ';'-separated list of extra flags (default: one run with its defaults), e.g.
#   EXAONE_VARIANTS="; --dtype bfloat16" (defaults, then bf16 weights).
# GGUF picks llama-server's model (default: the embedded default's Q4_1 file); SKIP_LLAMA=1 leaves it
# out. Build llama-server as README's "Performance on CPU" says (or any llama.cpp build with the server).
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_SERVER=${LLAMA_SERVER:?set LLAMA_SERVER to the llama-server binary}
CONCURRENCY=${*:-1 16 64}
GGUF=${GGUF:-$(find .venv -name "SmolLM2-135M-Instruct.Q4_1.gguf" | head -1)}
PORT=8081
THREADS=${THREADS:-2}
PROMPTS_PER_STREAM=${PROMPTS_PER_STREAM:-2}
EXAONE_VARIANTS=${EXAONE_VARIANTS:-}
SKIP_LLAMA=${SKIP_LLAMA:-}

wait_ready() {
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && return 0
    sleep 1
  done
  echo "server on $PORT did not become ready" >&2
  return 1
}

drive() {  # $1: label
  for c in $CONCURRENCY; do
    prompts=$((c == 1 ? 3 : c * PROMPTS_PER_STREAM))
    echo -n "$1 "
    .venv/bin/python benchmarks/serving.py --base-url "http://127.0.0.1:$PORT/v1" --concurrency "$c" \
      --num-prompts "$prompts" --output-tokens 64
  done
}

SERVER_PID=
trap '[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null' EXIT

run() {  # $1: label, then the server command
  local label=$1
  shift
  "$@" >/dev/null 2>&1 &
  SERVER_PID=$!
  wait_ready
  drive "$label"
  kill "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

[ -n "$SKIP_LLAMA" ] || run llama-server "$LLAMA_SERVER" -m "$GGUF" --host 127.0.0.1 --port $PORT -np 16 -c 32768 --jinja -t "$THREADS"
IFS=';' read -ra variants <<< "$EXAONE_VARIANTS"
[ ${#variants[@]} -gt 0 ] || variants=("")
for flags in "${variants[@]}"; do
  # shellcheck disable=SC2086  # the flags are meant to split into words
  run "exaone-serve${flags:+ [$flags ]}" env OMP_NUM_THREADS="$THREADS" .venv/bin/exaone-serve serve --host 127.0.0.1 \
    --port $PORT --log-level warning $flags
done
