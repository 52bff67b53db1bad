"""The request mix: one builder per scenario, seeded so every target gets the same requests.

Extensions (what only some servers accept): `reasoning` (the per-request switch), `thinking_budget`
(`thinking_token_budget`), `ignore_eos` (fixed output lengths). A scenario that needs one the target
lacks is recorded as "not asked" there; one that merely benefits (ignore_eos) runs without it.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXTENSIONS = ("reasoning", "thinking_budget", "ignore_eos")
SCENARIOS = ("chat", "reasoning", "tools", "long", "json", "copy")
DEFAULT_MIX = {"chat": 4, "reasoning": 2, "tools": 2, "json": 1, "long": 1}
NEEDS = {"reasoning": ("reasoning", "thinking_budget")}

_DATA = json.loads((Path(__file__).parent / "prompts.json").read_text())
TOOLS: list[dict[str, Any]] = _DATA["tools"]
JSON_SCHEMA: dict[str, Any] = _DATA["json_schema"]
_SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@dataclass(frozen=True)
class ScenarioOptions:
    """Lengths and knobs every builder reads."""

    model: str
    prompt_words: int = 48
    output_tokens: int = 64
    long_prompt_words: int = 1200
    thinking_budget: int = 32
    temperature: float = 0.0


@dataclass
class Plan:
    """One request to send: the scenario, the body, and what is missing on the target (not asked)."""

    scenario: str
    body: dict[str, Any]
    not_asked: str | None = None


def parse_mix(text: str) -> dict[str, float]:
    """`chat=4,tools=2` -> weights; a single name means that scenario alone."""
    if text in SCENARIOS:
        return {text: 1.0}
    if text == "mixed":
        return dict(DEFAULT_MIX)
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}, mixed")
        mix[name] = float(weight or 1)
    return mix


def mix_sequence(mix: dict[str, float]) -> list[str]:
    """One cycle of smooth weighted round robin over the mix (weights to 0.1): conversation i gets entry
    i mod len, so even a short run holds every scenario in proportion, the same on every target."""
    weights = {name: max(1, round(w * 10)) for name, w in mix.items() if w > 0}
    divisor = math.gcd(*weights.values())
    weights = {name: w // divisor for name, w in weights.items()}
    current = dict.fromkeys(weights, 0)
    sequence = []
    for _ in range(sum(weights.values())):
        for name, w in weights.items():
            current[name] += w
        pick = max(current, key=lambda n: current[n])
        current[pick] -= sum(weights.values())
        sequence.append(pick)
    return sequence


def _filler(rng: random.Random, words: int) -> str:
    vocab = _DATA["words"]
    return " ".join(rng.choice(vocab) for _ in range(words))


def _user(rng: random.Random, words: int) -> str:
    question = rng.choice(_DATA["questions"])
    if words <= len(question.split()):
        return question
    return f"Context: {_filler(rng, words - len(question.split()))}.\n\n{question}"


def build(scenario: str, rng: random.Random, opts: ScenarioOptions, extensions: frozenset[str]) -> Plan:
    """The first request of a conversation in `scenario`, as the target can be asked it."""
    missing = [e for e in NEEDS.get(scenario, ()) if e not in extensions]
    body: dict[str, Any] = {"model": opts.model, "temperature": opts.temperature, "seed": rng.randrange(1 << 30),
                            "max_tokens": opts.output_tokens}
    fixed_length = "ignore_eos" in extensions
    if scenario == "chat":
        body["messages"] = [{"role": "user", "content": _user(rng, opts.prompt_words)}]
        if "reasoning" in extensions:
            body["reasoning"] = False
    elif scenario == "reasoning":
        body["messages"] = [{"role": "user", "content": _user(rng, opts.prompt_words)}]
        body.update(reasoning=True, thinking_token_budget=opts.thinking_budget,
                    max_tokens=opts.thinking_budget + opts.output_tokens)
    elif scenario == "long":
        body["messages"] = [{"role": "user", "content": _user(rng, opts.long_prompt_words)}]
    elif scenario == "tools":
        city = rng.choice(_DATA["cities"])
        body.update(messages=[{"role": "user", "content": f"What is the weather in {city} right now? Use the tools."}],
                    tools=TOOLS, tool_choice=rng.choice(["auto", "required"]), max_tokens=max(opts.output_tokens, 96))
        fixed_length = False  # the call's own grammar decides its length
    elif scenario == "json":
        body.update(messages=[{"role": "user", "content": f"Describe a person from {rng.choice(_DATA['cities'])} "
                                                          "as JSON."}],
                    response_format={"type": "json_schema",
                                     "json_schema": {"name": "person", "schema": JSON_SCHEMA, "strict": True}},
                    max_tokens=max(opts.output_tokens, 96))
        fixed_length = False
    elif scenario == "copy":  # answers that copy from the prompt (where prompt-lookup drafting accepts often)
        body["messages"] = [{"role": "user", "content": _copy_task(rng)}]
        if "reasoning" in extensions:
            body["reasoning"] = False
        fixed_length = False  # the copy's own length
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    if fixed_length:
        body["ignore_eos"] = True
    return Plan(scenario, body, ", ".join(missing) or None)


def _copy_task(rng: random.Random) -> str:
    """Repeat a JSON record with one field changed, or fix a bug in a short function: mostly copying."""
    if rng.random() < 0.5:
        record = {"id": rng.randrange(10_000), "name": rng.choice(_DATA["words"]).title(),
                  "city": rng.choice(_DATA["cities"]), "tags": rng.sample(_DATA["words"], 3),
                  "active": rng.random() < 0.5, "score": rng.randrange(100)}
        return (f"Repeat this JSON exactly, but set city to {rng.choice(_DATA['cities'])!r}. Output only the "
                f"JSON.\n{json.dumps(record, indent=2)}")
    name, a = rng.choice(_DATA["words"]), rng.choice(_DATA["words"])
    code = (f"def {name}_total(items):\n    total = 0\n    for item in items:\n        total = item.{a}\n"
            f"    return total\n\n\ndef {name}_mean(items):\n    return {name}_total(items) / len(items)\n")
    return f"Fix the bug in this code (the total must add every item's {a}). Output the whole corrected code.\n{code}"


def tool_turn(first: dict[str, Any], calls: list[Any]) -> dict[str, Any]:
    """The second turn of a tools conversation: the assistant's calls and a result for each."""
    assistant = {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{i}", "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for i, c in enumerate(calls)]}
    results = [{"role": "tool", "tool_call_id": f"call_{i}", "content": json.dumps({"result": "sunny, 21 C"})}
               for i in range(len(calls))]
    return {**first, "messages": [*first["messages"], assistant, *results], "tool_choice": "auto"}


def validate(scenario: str, content: str, calls: list[Any]) -> bool | None:
    """Tool calls: every call names an offered tool and its arguments validate; json: the content does."""
    if scenario == "tools" and calls:
        return all(_valid(c.arguments, _SCHEMAS.get(c.name)) for c in calls)
    if scenario == "tools":
        return None  # answered in text (tool_choice auto): nothing to validate
    if scenario == "json":
        return _valid(content, JSON_SCHEMA)
    return None


def _valid(text: str, schema: dict[str, Any] | None) -> bool:
    import jsonschema  # here: `exaone-serve serve` imports this module's names and should not pay for it

    if schema is None:
        return False
    try:
        jsonschema.validate(json.loads(text), schema)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True
