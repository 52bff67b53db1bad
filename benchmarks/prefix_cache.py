"""Time to first token per turn of a multi-turn chat and of a tool loop, prefix caching on vs off, in one run.

    .venv/bin/python benchmarks/prefix_cache.py                  # chat and tool loop, 8 turns each
    .venv/bin/python benchmarks/prefix_cache.py --scenario chat --turns 4

Both engines (caching on and off) load the same model in this process; each turn runs on one, then the
other, so load on a shared machine hits both alike. TTFT is from `add_request` to the step that returns
the first token, on the engine without HTTP. The conversation is the same for both: the answers fed back
are the caching-off engine's (greedy, so both engines' answers agree anyway).
"""

from __future__ import annotations

import argparse
import json
import time

from engine import LLM, SamplingParams
from engine.modes.chat_templates import render_chat_prompt

# ~1,000 tokens of system prompt: a shop's policies, written out so the text is not one repeated line.
_POLICY = [
    "Orders placed before noon ship the same day; later orders ship the next business day.",
    "Returns are accepted within 30 days when the item is unused and in its original packaging.",
    "Power tools carry a two-year warranty; hand tools carry a lifetime warranty against defects.",
    "Customers may pick up orders at any of our twelve stores; bring the order number and an ID.",
    "We price-match local competitors on identical items that are in stock on the same day.",
    "Gift cards never expire and can be used online or in store, but cannot be exchanged for cash.",
    "Bulk orders of more than fifty units get a quote from the trade desk within one business day.",
    "Hazardous materials such as solvents and batteries ship by ground only, never by air.",
]
SYSTEM = "You are the support assistant of Northwind Hardware. Answer briefly and politely.\n" + "\n".join(
    f"Policy {i + 1}.{j + 1}: {line}" for i in range(6) for j, line in enumerate(_POLICY))
QUESTIONS = ["Can I return a drill I opened?", "When will an order placed at 3 pm ship?",
             "Do you ship paint thinner by air?", "How long is the warranty on a hammer?",
             "Can I pay with a gift card online?", "Do you match a competitor's price?",
             "I need 200 boxes of screws; what do I do?", "Can my friend pick up my order?"]
TOOLS = [{"type": "function", "function": {
    "name": name, "description": desc,
    "parameters": {"type": "object", "properties": {arg: {"type": "string", "description": f"the {arg}"}},
                   "required": [arg]}}}
    for name, desc, arg in [("get_order", "Look up an order by its number.", "order_id"),
                            ("check_stock", "Stock of an item in a store.", "sku"),
                            ("find_store", "Nearest stores to a postcode.", "postcode"),
                            ("price_quote", "Trade price for a bulk order.", "sku"),
                            ("track_parcel", "Where a parcel is now.", "tracking_id"),
                            ("open_ticket", "Open a support ticket.", "summary")]]


def tool_result(turn: int) -> str:
    """A tool's JSON answer (~150 tokens)."""
    rows = [{"sku": f"NW-{turn}{i:03d}", "store": f"Store {i}", "in_stock": (turn + i) % 3, "aisle": i + 4}
            for i in range(6)]
    return json.dumps({"status": "ok", "turn": turn, "items": rows})


def first_token_time(llm: LLM, request_id: str, prompt: list[int], params: SamplingParams) -> tuple[float, object]:
    """(seconds to the first token, the finished output) of one request alone in the engine."""
    engine = llm.engine
    start = time.perf_counter()
    engine.add_request(request_id, prompt, params)
    ttft, text, final = None, "", None
    while engine.has_unfinished():
        for out in engine.step():
            if ttft is None and out.outputs[0].token_ids:
                ttft = time.perf_counter() - start
            text += out.outputs[0].text
            final = out
    final.outputs[0].text = text
    return ttft, final


def run(scenario: str, llms: dict[bool, LLM], turns: int, max_tokens: int) -> None:
    messages: list[dict] = [{"role": "system", "content": SYSTEM}]
    tools = TOOLS if scenario == "tools" else None
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    tokenizer = llms[False].tokenizer
    print(f"\n{scenario}: turn | prompt tokens | cached tokens | TTFT on (ms) | TTFT off (ms) | speed-up")
    for turn in range(turns):
        if scenario == "tools" and turn > 0:
            # The model asked for a tool (scripted, so both engines see the same loop); its result follows.
            messages.append({"role": "assistant", "content": "", "tool_calls": [{
                "type": "function", "function": {"name": TOOLS[turn % len(TOOLS)]["function"]["name"],
                                                 "arguments": {"sku": f"NW-{turn}"}}}]})
            messages.append({"role": "tool", "content": tool_result(turn)})
        else:
            messages.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]})
        # rendered as the server renders it (the template's own tools support, or the generic fallback)
        prompt = tokenizer.encode(render_chat_prompt(tokenizer.hf, messages, enable_thinking=False, tools=tools),
                                  add_special_tokens=False)
        ttft_on, out_on = first_token_time(llms[True], f"{scenario}-on-{turn}", prompt, params)
        ttft_off, out_off = first_token_time(llms[False], f"{scenario}-off-{turn}", prompt, params)
        print(f"{scenario}: {turn + 1} | {len(prompt)} | {out_on.num_cached_tokens} | {ttft_on * 1e3:.0f} | "
              f"{ttft_off * 1e3:.0f} | {ttft_off / ttft_on:.1f}x", flush=True)
        if scenario == "chat":
            messages.append({"role": "assistant", "content": out_off.outputs[0].text})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--scenario", choices=["chat", "tools", "both"], default="both")
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32, help="answer length per turn")
    parser.add_argument("--kv-cache-memory", type=int, default=256 << 20, help="bytes per engine (two are loaded)")
    args = parser.parse_args()
    llms = {on: LLM(model=args.model, progress=False, enable_prefix_caching=on, kv_cache_memory=args.kv_cache_memory)
            for on in (True, False)}
    for llm in llms.values():  # warm-up: first-call allocations and kernels
        llm.generate("Hello", SamplingParams(max_tokens=2))
        llm.reset_prefix_cache()
    print(f"system prompt: {len(llms[False].tokenizer.encode(SYSTEM))} tokens")
    for scenario in (["chat", "tools"] if args.scenario == "both" else [args.scenario]):
        run(scenario, llms, args.turns, args.max_tokens)


if __name__ == "__main__":
    main()
