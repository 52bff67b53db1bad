"""`exaone-serve`: `serve` runs the OpenAI-compatible server, `generate` prints one completion; `bench`
load-tests a server (benchmarks/loadtest, which registers it as a plugin command: server/ never imports it).

Flags are named as vLLM names them where the idea is the same.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NoReturn

from engine.errors import ModelLoadError, TensorParallelError
from engine.model.quant_modes import QUANTIZATION_MODES
from engine.spec_decode.config import SpeculativeConfig
from server.limits import RequestLimits
from server.openai.schemas import DEFAULT_MAX_REQUEST_BODY_BYTES

logger = logging.getLogger("exaone-serve")

# Entry points of this group add subcommands: `name = "module:function"`, called with the subparsers.
COMMAND_PLUGINS = "exaone_serve.commands"

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DTYPES = ("auto", "float32", "float16", "bfloat16")
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one `error:` line and exit status 1, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"error: {message} (see `{self.prog} --help`)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _reserve_fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _byte_size(text: str) -> int:
    """Bytes as a number with an optional unit: 1073741824, 4GiB, 512M."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?)?b?\s*", text, re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a size such as 4GiB or 512MiB, got {text!r}")
    value = int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def _text_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {e.strerror}") from None


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"invalid JSON ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _speculative_config(text: str) -> SpeculativeConfig:
    try:
        config = SpeculativeConfig.parse(text)
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    assert config is not None
    return config


def build_parser() -> argparse.ArgumentParser:
    """The parser for both subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default=None,
                        help="hub id (LGAI-EXAONE/EXAONE-4.0-1.2B), model directory or .gguf file; "
                             "default: the embedded SmolLM2-135M-Instruct")
    common.add_argument("--device", default="auto", help="cpu, cuda, cuda:N; auto picks cuda when available")
    common.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: float32 on CPU, bfloat16 on GPU")
    common.add_argument("--max-model-len", type=_positive_int, help="context length (prompt + output)")
    common.add_argument("--max-num-seqs", type=_positive_int,
                        help="most sequences in one batch (default: 64 on CPU, 256 on CUDA)")
    common.add_argument("--max-num-batched-tokens", type=_positive_int,
                        help="token budget of one step (default: 512 on CPU, 8192 on CUDA)")
    common.add_argument("--block-size", type=_positive_int, help="tokens per KV-cache block")
    common.add_argument("--kv-cache-memory", type=_byte_size, help="KV-cache size in bytes (4GiB, 512MiB)")
    common.add_argument("--gpu-memory-utilization", type=_fraction,
                        help="share of GPU memory the engine may use when --kv-cache-memory is not set")
    common.add_argument("--tensor-parallel-size", "-tp", type=_positive_int,
                        help="split each layer over N ranks, one process per device (default 1)")
    common.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None,
                        help="reuse the KV cache of earlier prompts' shared prefixes (default: on)")
    common.add_argument("--scheduling-policy", choices=("fcfs", "priority", "mode-aware"),
                        help="mode-aware (default): `priority`, then requests without reasoning first and preempted "
                             "last; fcfs: arrival order; priority: the request's `priority` (lower first)")
    common.add_argument("--fast-lane-max-wait", dest="fast_lane_max_wait_s", type=_non_negative_float,
                        help="mode-aware: a reasoning request this many seconds old ranks with quick ones, so it "
                             "is never starved (default 60)")
    common.add_argument("--fast-lane-slots", type=_non_negative_int,
                        help="mode-aware: quick requests may run this many beyond --max-num-seqs instead of "
                             "preempting a reasoning one (default 2)")
    common.add_argument("--attention-backend", choices=("auto", "torch", "triton"),
                        help="auto (default): triton on CUDA, torch on CPU")
    common.add_argument("--enforce-eager", action="store_true", default=None,
                        help="no CUDA graphs for decode steps; CPU: no compiled decode attention")
    common.add_argument("--prepack-weights", action=argparse.BooleanOptionalAction, default=None,
                        help="CPU: pack linear weights for oneDNN once at start (default: on)")
    common.add_argument("--compile", action="store_true", default=None,
                        help="CPU: compile the decoder layers with torch.compile at start (slower start, faster steps)")
    common.add_argument("--speculative-config", type=_speculative_config,
                        help='vLLM\'s JSON: {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2, '
                             '"prompt_lookup_max": 4} or {"model": "<draft>", "num_speculative_tokens": 4}')
    common.add_argument("--quantization", choices=QUANTIZATION_MODES,
                        help="CPU linear weights: none (default, as loaded), int8 (GGUF Q8_0/Q4_x and AWQ/GPTQ "
                             "codes kept, 4-bit ones packed; others per 32 columns; decode takes integer dot "
                             "products with activations quantized per 32) or fp16; awq, gptq or fp8 (vLLM's names) check the "
                             "checkpoint's own quant_method and serve it as stored (README, Quantization)")
    common.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                        help="debug also shows tracebacks and ignored request fields")

    parser = _Parser(prog="exaone-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = sub.add_parser("serve", parents=[common], help="run the OpenAI-compatible HTTP server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", nargs="+", help="names clients use in `model` (default: --model)")
    serve.add_argument("--api-key", default=os.environ.get("EXAONE_API_KEY"),
                       help="require `Authorization: Bearer KEY` on /v1/* (default: $EXAONE_API_KEY)")
    serve.add_argument("--no-ui", dest="ui", action="store_false",
                       help="do not serve the browser playground at / (the API is the same either way)")
    serve.add_argument("--max-queued-requests", type=_positive_int,
                       help="bound of the waiting queue; past it requests get 503 with Retry-After")
    serve.add_argument("--default-chat-template-kwargs", type=_json_object, default={},
                       help='JSON object passed to the chat template, e.g. \'{"enable_thinking": false}\'')
    serve.add_argument("--max-thinking-tokens", type=_non_negative_int,
                       help="cap on every request's thinking tokens (its budget, or the budget when none is asked)")
    serve.add_argument("--reasoning-answer-reserve", type=_reserve_fraction,
                       help="share of max_tokens kept for the answer of a reasoning request, at least 16 tokens "
                            "(default 0.25; 0 turns it off; a request's reasoning_answer_reserve, in tokens, wins)")
    serve.add_argument("--thinking-deadline-ms", type=_non_negative_int,
                       help="end every reasoning request's thinking this long after it arrives "
                            "(a request's thinking_deadline_ms wins)")
    serve.add_argument("--max-request-body-bytes", type=_byte_size, default=DEFAULT_MAX_REQUEST_BODY_BYTES,
                       help="larger bodies get 413 (default 4MiB)")
    serve.add_argument("--shutdown-timeout", type=_non_negative_float, default=30.0,
                       help="seconds SIGTERM/SIGINT lets running requests finish before ending them "
                            "(default 30; 0 ends them at once); a second signal exits at once")
    serve.add_argument("--chat-template", type=_text_file,
                       help="file with a Jinja chat template used instead of the model's (requests never set one)")
    limits = RequestLimits()
    serve.add_argument("--max-n", type=_positive_int, default=limits.max_n, help="most choices (n) per request")
    serve.add_argument("--max-stop-sequences", type=_positive_int, default=limits.max_stop_sequences,
                       help="most stop strings per request (OpenAI: 4)")
    serve.add_argument("--max-prompts-per-request", type=_positive_int, default=limits.max_prompts,
                       help="most prompts in one completions request")
    serve.add_argument("--max-tools", type=_positive_int, default=limits.max_tools, help="most tools per request")
    serve.add_argument("--max-schema-bytes", type=_byte_size, default=limits.max_schema_bytes,
                       help="largest tools + response_format per request, as JSON (default 64KiB)")
    serve.add_argument("--preprocess-timeout", type=float, default=limits.preprocess_timeout,
                       help="seconds a request's template rendering, tokenisation or grammar compilation may take")
    serve.add_argument("--preprocess-workers", type=_positive_int, default=limits.preprocess_workers,
                       help="threads that render, tokenise and compile grammars off the event loop")
    serve.set_defaults(func=serve_command)

    gen = sub.add_parser("generate", parents=[common], help="print the completion of one prompt")
    gen.add_argument("prompt")
    gen.add_argument("--chat", action="store_true", help="send the prompt as a user message (chat template)")
    gen.add_argument("--max-tokens", type=_positive_int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (the default)")
    gen.add_argument("--seed", type=int)
    gen.set_defaults(func=generate_command)

    _add_plugin_commands(sub)
    return parser


def _add_plugin_commands(sub: Any) -> None:
    """Subcommands other packages register under COMMAND_PLUGINS (the load-test suite's `bench`)."""
    for plugin in entry_points(group=COMMAND_PLUGINS):
        try:
            add_parser = plugin.load()
        except ModuleNotFoundError as e:
            # An install without the plugin's package (the Docker image has no benchmarks/) lacks that command.
            if e.name != plugin.module.split(".")[0]:
                raise
            continue
        add_parser(sub)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available")
    return name


def _engine_args(args: argparse.Namespace) -> dict[str, Any]:
    names = ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "block_size", "kv_cache_memory",
             "gpu_memory_utilization", "tensor_parallel_size", "enable_prefix_caching", "scheduling_policy",
             "fast_lane_max_wait_s", "fast_lane_slots", "attention_backend", "enforce_eager", "prepack_weights", "compile",
             "speculative_config", "quantization")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def served_name(model: str | None) -> str:
    """The name clients use by default: a hub id as given, a local directory's or .gguf file's base name
    (without .gguf), or the embedded model's name."""
    if model is None:
        from engine.model.loader import default_model_path

        return default_model_path().name.split(".")[0]
    # A local path would show this machine's layout in /v1/models and in every response's `model`.
    path = Path(os.path.expanduser(model))
    if path.is_dir() or path.is_file():
        name = path.resolve().stem if path.suffix == ".gguf" else path.resolve().name
        return name or model  # "/" has no base name (and shows nothing of the machine)
    return model


def serve_command(args: argparse.Namespace) -> None:
    """Start uvicorn at once (/health says 503) and load the model on a background thread.

    SIGTERM/SIGINT drain (server/shutdown.py), then the engine stops: exit 0 after SIGTERM, 130 after SIGINT.
    """
    import uvicorn

    from engine.config import EngineConfig
    from engine.core.async_engine import AsyncEngine
    from engine.core.llm_engine import LLMEngine
    from server.app import attach_engine, create_app
    from server.shutdown import DrainingServer

    device = _device(args.device)
    names = args.served_model_name or [served_name(args.model)]
    app = create_app(None, served_model_names=names, api_key=args.api_key,
                     max_request_body_bytes=args.max_request_body_bytes,
                     default_chat_template_kwargs=args.default_chat_template_kwargs,
                     max_thinking_tokens=args.max_thinking_tokens, thinking_deadline_ms=args.thinking_deadline_ms,
                     **({} if args.reasoning_answer_reserve is None
                        else {"reasoning_answer_reserve": args.reasoning_answer_reserve}),
                     limits=RequestLimits(
                         args.max_n, args.max_stop_sequences, args.max_prompts_per_request, args.max_tools,
                         args.max_schema_bytes, args.preprocess_timeout, args.preprocess_workers),
                     ui=args.ui)
    state = app.state.server
    server = DrainingServer(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level),
                            state, args.shutdown_timeout)
    failure: list[BaseException] = []

    def worker_failed(message: str) -> None:
        # A dead tensor-parallel worker ends the server with an error instead of a server that cannot step.
        failure.append(TensorParallelError(message))
        server.should_exit = True

    def load_and_run() -> None:
        # The thread that loads the model also runs its steps: torch work on one thread only.
        try:
            engine = LLMEngine(args.model, device, args.dtype, EngineConfig(**_engine_args(args)))
            if engine.executor is not None:
                engine.executor.on_failure = worker_failed
            if args.chat_template is not None:
                engine.tokenizer.hf.chat_template = args.chat_template
            async_engine = AsyncEngine(engine, args.max_queued_requests, start=False)
            attach_engine(app, async_engine)
            logger.info("model loaded; serving %s on http://%s:%d/v1%s", names[0], args.host, args.port,
                        f" (playground: http://{args.host}:{args.port}/)" if args.ui else "")
        except BaseException as e:  # the server must not keep answering 503 for a model that cannot load
            failure.append(e)
            server.should_exit = True
            return
        async_engine.run_loop()

    engine_thread = threading.Thread(target=load_and_run, name="exaone-engine", daemon=True)
    engine_thread.start()
    try:
        server.run()
    finally:
        if state.engine is not None:
            state.engine.shutdown()
            # drained, the loop is idle and returns at once; a forced exit does not wait for a long step
            engine_thread.join(timeout=0.5 if server.force_exit else 10)
            state.engine.engine.shutdown()  # tensor-parallel workers, if any
    if failure:
        raise failure[0]
    if server.engine_died:
        raise SystemExit(f"error: the engine stopped after an error: {state.engine.error}")
    if server.exit_signal == signal.SIGINT:
        raise KeyboardInterrupt  # main() exits 130, as a shell does after Ctrl-C


def generate_command(args: argparse.Namespace) -> None:
    """Load the model and print the completion of `args.prompt`."""
    from engine.core.sampling_params import SamplingParams
    from engine.llm import LLM

    llm = LLM(model=args.model, device=_device(args.device), dtype=args.dtype, **_engine_args(args))
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    if args.chat:
        outputs = llm.chat([{"role": "user", "content": args.prompt}], params)
    else:
        outputs = llm.generate(args.prompt, params)
    print(outputs[0].outputs[0].text)


def main(argv: list[str] | None = None) -> None:
    """Console entry point; errors print one `error:` line and exit 1 (tracebacks with --log-level debug)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (ModelLoadError, TensorParallelError, ValueError) as e:
        if args.log_level == "debug":
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
