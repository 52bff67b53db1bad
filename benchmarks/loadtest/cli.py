"""`exaone-serve bench run|sweep|compare`: the flags and their checks.

    exaone-serve bench run --base-url http://127.0.0.1:8000 --scenario mixed --users 16 --duration 60s --out DIR
    exaone-serve bench sweep --base-url URL --scenario chat --slo ttft=500ms,tpot=100ms --out DIR
    exaone-serve bench compare --target ours=URL --target llamacpp=URL --users 8 --duration 30s --out DIR
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.loadtest.scenarios import EXTENSIONS, SCENARIOS


def _extensions(text: str) -> str:
    if text not in ("auto", "none") and any(e not in EXTENSIONS for e in text.split(",")):
        raise argparse.ArgumentTypeError(f"expected auto, none or a list of {', '.join(EXTENSIONS)}; got {text!r}")
    return text


def _target(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name or not url.startswith("http"):
        raise argparse.ArgumentTypeError(f"expected NAME=URL (e.g. ours=http://127.0.0.1:8000), got {text!r}")
    return name, url.rstrip("/").removesuffix("/v1")


def _mix(text: str) -> str:
    from benchmarks.loadtest.scenarios import parse_mix

    try:
        parse_mix(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _duration(text: str) -> float:
    from benchmarks.loadtest.stats import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_bench_parser(sub: Any) -> None:
    """Register `bench` with its run/sweep/compare subcommands under an argparse subparsers object."""
    bench = sub.add_parser("bench", help="load-test an OpenAI-compatible server (locust): run, sweep, compare",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = bench.add_subparsers(dest="bench_command", required=True, parser_class=type(bench))
    load = argparse.ArgumentParser(add_help=False)
    g = load.add_argument_group("requests")
    g.add_argument("--scenario", type=_mix, default="mixed",
                   help=f"{', '.join(SCENARIOS)}, mixed, or weights such as chat=4,tools=1 (default mixed)")
    g.add_argument("--model", help="the `model` to send (default: the first of the target's /v1/models)")
    g.add_argument("--prompt-words", type=int, default=48, help="words of a short prompt")
    g.add_argument("--long-prompt-words", type=int, default=1200, help="words of a `long` prompt")
    g.add_argument("--output-tokens", type=int, default=64, help="max_tokens (fixed with ignore_eos where served)")
    g.add_argument("--thinking-budget", type=int, default=32, help="thinking_token_budget of `reasoning`")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=0, help="seeds prompts, arrivals and sampling")
    g.add_argument("--logprobs", choices=("auto", "on", "off"), default="auto",
                   help="ask for logprobs to count the tokens of each chunk exactly (auto: on for exaone-serve; "
                        "llama-server rejects them with tools and computes top-20 alternatives); off: usage's "
                        "count spread over the chunks")
    g = load.add_argument_group("load")
    g.add_argument("--users", type=int, help="closed loop: concurrent users (default 8 unless --rate)")
    g.add_argument("--rate", type=float, help="open loop: requests per second")
    g.add_argument("--arrival", choices=("constant", "poisson", "gamma"), default="poisson")
    g.add_argument("--burstiness", type=float, default=1.0, help="gamma shape (<1 burstier)")
    g.add_argument("--duration", type=_duration, default=60.0, help="sending time: 60s, 2m")
    g.add_argument("--drain", type=_duration, default=60.0, help="wait this long for requests still running")
    g.add_argument("--max-in-flight", type=int, default=1024, help="open loop: most requests outstanding")
    g.add_argument("--processes", type=int, default=1, help="locust worker processes (for heavier loads)")
    g.add_argument("--max-lag", type=_duration, default=0.1, help="open loop: p99 lateness that makes a run invalid")
    g = load.add_argument_group("report")
    g.add_argument("--slo", help="goodput targets: ttft=500ms,ttfo=2s,tpot=100ms,itl=...,e2e=...")
    g.add_argument("--out", type=Path, help="output directory (default bench-results/<time>)")
    g.add_argument("--api-key", help="sent as Authorization: Bearer")
    g.add_argument("--timeout", type=_duration, default=600.0, help="per-request timeout")
    g.add_argument("--quiet", action="store_true", help="no live progress line")

    for name, text in (("run", "one load run against one server"),
                       ("sweep", "the highest rate whose goodput share stays >= a target, per scenario"),
                       ("compare", "the same seeded load against several servers, one after another")):
        p = modes.add_parser(name, parents=[load], help=text)
        if name == "compare":
            p.add_argument("--target", type=_target, action="append", required=True, metavar="NAME=URL",
                           help="a server to measure (repeat; the first is the baseline of the ratios)")
            p.add_argument("--target-extensions", action="append", default=[], metavar="NAME=LIST",
                           help="extensions of one target: none, or a list of " + ", ".join(EXTENSIONS))
            p.add_argument("--target-serve", action="append", default=[], metavar="NAME=COMMAND",
                           help="start this target with COMMAND just for its turn and stop it after "
                                "(one server at a time on the machine); COMMAND must listen at its URL")
        else:
            p.add_argument("--base-url", help="the server, e.g. http://127.0.0.1:8000")
            p.add_argument("--serve", action="store_true",
                           help="start `exaone-serve serve` on a free loopback port for the run, then stop it")
            p.add_argument("--serve-args", default="", help='flags for that server, e.g. "--max-num-seqs 16"')
            p.add_argument("--extensions", type=_extensions, default="auto",
                           help="auto (all when /metrics shows exaone-serve, else none), none, or a list")
        if name == "sweep":
            p.add_argument("--goodput-target", type=float, default=0.9, help="share of good requests to hold")
            p.add_argument("--start-rate", type=float, default=0.5)
            p.add_argument("--max-rate", type=float, default=64.0)
            p.add_argument("--bisections", type=int, default=3)
        p.set_defaults(func=bench_command, log_level="warning")


def bench_command(args: argparse.Namespace) -> None:
    """Dispatch to run, sweep or compare (locust is imported here: it patches the standard library)."""
    import gevent.monkey

    gevent.monkey.patch_all()
    from benchmarks.loadtest import driver

    if args.bench_command != "compare" and (args.base_url is None) == (not args.serve):
        raise ValueError("give --base-url URL or --serve (a server started for the run), one of them")
    if args.users is not None and args.rate is not None:
        raise ValueError("give --users (closed loop) or --rate (open loop), not both")
    if args.users is None and args.rate is None and args.bench_command != "sweep":
        args.users = 8
    args.out = args.out or Path("bench-results") / time.strftime("%Y%m%d-%H%M%S")
    args.command_line = " ".join(shlex.quote(a) for a in ["exaone-serve", *sys.argv[1:]])
    getattr(driver, args.bench_command)(args)
