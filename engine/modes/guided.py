"""Grammar-constrained decoding with xgrammar: response_format JSON, forced and auto tool calls.

`GuidedDecoding` (one per model) validates a request's `response_format`, `tools` and `tool_choice`,
compiles the constraint (LRU-cached) and returns a per-sample LogitsProcessor factory. With reasoning
on, a processor stays inactive until the thinking span has closed (`</think>`), then constrains the
rest: the blank line EXAONE writes after the tag, then the answer. Put it before the thinking-budget
processor, whose forced tokens (`</think>\\n\\n`) the grammar accepts.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import jsonschema
import torch
import xgrammar
from xgrammar.structural_tag import (
    ConstStringFormat,
    Format,
    JSONSchemaFormat,
    OrFormat,
    SequenceFormat,
    StructuralTag,
    TagFormat,
    TagsWithSeparatorFormat,
    TriggeredTagsFormat,
)

from engine.core.sampling_params import LogitsProcessor
from engine.modes.chat_templates import THINK_END, THINK_START
from engine.modes.reasoning import END_SEQUENCE, ReasoningConfig, ThinkingTracker
from engine.modes.tool_calls import TOOL_CALL_END, TOOL_CALL_START
from engine.sample.incremental import IncrementalProcessor

logger = logging.getLogger(__name__)

# Unbounded whitespace between JSON tokens lets small models pad until max_tokens; two characters
# still allow `, ` and `": "` and a newline, and strings are not affected.
MAX_JSON_WHITESPACE = 2
CACHE_SIZE = 64
_CALL_HEAD = '<tool_call>{"name": %s, "arguments": '


def _check_schema(schema: Any, where: str) -> None:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise ValueError(f"{where} must be a JSON schema object, got {type(schema).__name__}")
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"{where} is not a valid JSON schema: {exc.message}") from exc


def _tool_schemas(tools: Any) -> dict[str, Any]:
    """Validate OpenAI function tools; return name -> parameters schema, in order."""
    if not isinstance(tools, list):
        raise ValueError("tools must be a list of function tools")
    schemas: dict[str, Any] = {}
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise ValueError(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"tools[{i}].function.name must be a non-empty string")
        if name in schemas:
            raise ValueError(f"tools[{i}].function.name {name!r} is given twice")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        _check_schema(params, f"tools[{i}].function.parameters")
        schemas[name] = params
    return schemas


def _json_format(schema: Any) -> JSONSchemaFormat:
    return JSONSchemaFormat(json_schema=schema, max_whitespace_cnt=MAX_JSON_WHITESPACE)


def _call_tag(name: str, schema: Any) -> TagFormat:
    return TagFormat(begin=_CALL_HEAD % json.dumps(name, ensure_ascii=False), content=_json_format(schema),
                     end="}" + TOOL_CALL_END)


def _response_schema(response_format: Any) -> Any | None:
    """The JSON schema a response_format asks for; None for plain text."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise ValueError("response_format.json_schema must be an object with 'name' and 'schema'")
        schema = spec.get("schema", True)
        _check_schema(schema, "response_format.json_schema.schema")
        return schema
    raise ValueError(f"response_format.type must be text, json_object or json_schema, got {kind!r}")


def _tool_choice(tool_choice: Any, schemas: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """('none' | 'auto' | 'required' | 'named', the tools the grammar offers) for a request's tool_choice."""
    if tool_choice in (None, "none", "auto", "required"):
        mode = tool_choice or ("auto" if schemas else "none")
        if mode != "none" and not schemas:
            raise ValueError(f"tool_choice {mode!r} needs tools")
        return mode, schemas or {}
    name = (tool_choice.get("function") or {}).get("name") if isinstance(tool_choice, dict) else None
    if not isinstance(name, str) or tool_choice.get("type", "function") != "function":
        raise ValueError("tool_choice must be none, auto, required or {'type': 'function', 'function': {'name': ...}}")
    if not schemas:
        raise ValueError("tool_choice names a function but no tools were given")
    if name not in schemas:
        raise ValueError(f"tool_choice names {name!r}, which is not in tools ({', '.join(schemas)})")
    return "named", {name: schemas[name]}


class GuidedDecoding:
    """Per-model grammar compiler with an LRU cache of compiled constraints."""

    def __init__(self, config: ReasoningConfig, cache_size: int = CACHE_SIZE) -> None:
        self.config = config
        self._compiler = xgrammar.GrammarCompiler(config.tokenizer_info, cache_enabled=False)
        self._cache: OrderedDict[str, xgrammar.CompiledGrammar] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def processor_factory(self, *, response_format: Any = None, tools: Any = None, tool_choice: Any = None,
                          parallel_tool_calls: bool = True,
                          reasoning: bool = False) -> Callable[[], LogitsProcessor] | None:
        """Validate and compile a request's constraint; None when nothing is constrained.

        tool_choice required: only `<tool_call>` lines (one if not parallel_tool_calls), then EOS; named:
        exactly one call of that function, then EOS;
        auto: free text in which every opened `<tool_call>` is completed by the grammar; response_format:
        a JSON value of the schema (auto with tools: that, or tool calls). Raises ValueError naming the field.
        """
        schemas = _tool_schemas(tools) if tools else None  # an empty list offers nothing, like none
        mode, offered = _tool_choice(tool_choice, schemas)
        response = _response_schema(response_format)
        tags = [_call_tag(name, schema) for name, schema in offered.items()]
        one = not parallel_tool_calls or mode == "named"  # a named choice is one call of that function
        body: Format
        if mode in ("required", "named"):
            body = TagsWithSeparatorFormat(tags=tags, separator="\n", at_least_one=True, stop_after_first=one)
        elif mode == "auto" and response is not None:
            calls = TagsWithSeparatorFormat(tags=tags, separator="\n", at_least_one=True, stop_after_first=one)
            body = OrFormat(elements=[_json_format(response), calls])
        elif mode == "auto":
            body = TriggeredTagsFormat(triggers=[TOOL_CALL_START], tags=tags, stop_after_first=one,
                                       excludes=[THINK_START, THINK_END])
        elif response is not None:
            body = _json_format(response)
        else:
            return None
        if reasoning:  # the matcher starts right after `</think>`: the rest of the end sequence comes first
            rest = END_SEQUENCE[len(THINK_END):]
            body = SequenceFormat(elements=[ConstStringFormat(value=rest), body])
        compiled = self._compile(StructuralTag(format=body), offered, response)
        return lambda: GuidedProcessor(compiled, self.config, wait_for_think_end=reasoning)

    def _compile(self, tag: StructuralTag, offered: dict[str, Any], response: Any) -> xgrammar.CompiledGrammar:
        key = tag.model_dump_json()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            compiled = self._compiler.compile_structural_tag(tag)
        except Exception as exc:  # xgrammar raises several types; find the schema it could not use
            raise ValueError(self._blame(offered, response, exc)) from exc
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return compiled

    @staticmethod
    def _blame(offered: dict[str, Any], response: Any, exc: Exception) -> str:
        named = [(f"tools function {name!r} parameters", s) for name, s in offered.items()]
        for where, schema in [*named, ("response_format.json_schema.schema", response)]:
            try:
                if schema is not None:
                    xgrammar.Grammar.from_json_schema(json.dumps(schema))
            except Exception as inner:
                return f"{where}: unsupported JSON schema: {inner}"
        return f"tools/response_format: cannot build a grammar: {exc}"


class GuidedProcessor(IncrementalProcessor):
    """Masks one sample's logits to its grammar; the matcher accepts each new output token."""

    def __init__(self, compiled: xgrammar.CompiledGrammar, config: ReasoningConfig, wait_for_think_end: bool) -> None:
        self._compiled = compiled
        self._config = config
        self._wait = wait_for_think_end
        self._vocab_size = config.tokenizer_info.vocab_size
        self._bitmask = xgrammar.allocate_token_bitmask(1, self._vocab_size)
        # an index tensor, moved to the logits' device once, so a step does not build one from a list
        self._eos = torch.tensor(sorted(config.eos_token_ids))
        super().__init__()

    def _reset(self) -> None:
        self._tracker = ThinkingTracker(self._config) if self._wait else None
        self._matcher = None if self._wait else xgrammar.GrammarMatcher(self._compiled)
        self._steps = 0  # tokens the matcher accepted: what a step back rolls it back by
        self._broken = False

    def _snapshot(self) -> tuple[ThinkingTracker | None, int, bool]:
        # before the matcher exists only the tracker moves; after, the matcher rolls back by steps
        tracker = copy.copy(self._tracker) if self._matcher is None else None
        return tracker, self._steps, self._broken

    def _restore(self, state: tuple[ThinkingTracker | None, int, bool]) -> None:
        tracker, steps, self._broken = state
        if tracker is not None:
            self._tracker, self._matcher = tracker, None
        elif self._matcher is not None and self._steps > steps:
            self._matcher.rollback(self._steps - steps)
        self._steps = steps

    def _advance(self, token: int) -> None:
        if self._broken:
            return
        if self._matcher is None:
            assert self._tracker is not None
            self._tracker.feed(token)
            if not self._tracker.in_thinking:
                self._matcher = xgrammar.GrammarMatcher(self._compiled)
                # the token that closed `</think>` may carry the start of what follows
                self._broken = bool(self._tracker.after) and not self._matcher.accept_string(self._tracker.after)
        elif self._matcher.is_terminated():
            return  # EOS was accepted; with ignore_eos the output goes on, and only EOS stays allowed
        elif self._matcher.accept_token(token):
            self._steps += 1
        else:
            self._broken = True
        if self._broken:
            logger.warning("guided decoding: output left the grammar at token %d; constraint dropped", token)

    def mask(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        """Leave only the tokens the grammar accepts next (only EOS once it has terminated)."""
        if self._matcher is None or self._broken:
            return logits
        if self._matcher.is_terminated():
            self._eos = self._eos.to(logits.device)
            allowed = logits[self._eos]
            logits.fill_(float("-inf"))
            logits[self._eos] = allowed
            return logits
        self._matcher.fill_next_token_bitmask(self._bitmask)
        # The matcher fills a CPU mask; on GPU it is copied to the row (xgrammar then applies it there).
        mask = self._bitmask[0].to(logits.device, non_blocking=True)
        xgrammar.apply_token_bitmask_inplace(logits, mask, vocab_size=min(logits.shape[-1], self._vocab_size))
        return logits
