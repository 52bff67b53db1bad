"""Chat templates: EXAONE 4.0's format, what a model's own template supports, and the generic fallbacks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

THINK_START = "<think>"
THINK_END = "</think>"

# EXAONE 4.0's chat format (issue 5): `[|role|]\n...[|endofturn|]\n` turns; the generation prompt opens a
# thinking span (`<think>\n`) when enable_thinking, else an empty one; past assistant turns keep only an
# empty think block; tools in the system turn, calls as `<tool_call>` lines, results as `<tool_result>`.
EXAONE4_TEMPLATE = r"""
{%- macro text(content) -%}
    {%- if content is none -%}
    {%- elif content is string -%}{{ content }}
    {%- else -%}{%- for part in content if part.type == 'text' -%}{{ part.text }}{%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(system='') -%}
{%- if messages and messages[0].role == 'system' -%}
    {%- set ns.system = text(messages[0].content) -%}
    {%- set messages = messages[1:] -%}
{%- endif -%}
{%- if ns.system or tools -%}
    {{- '[|system|]\n' + ns.system -}}
    {%- if tools -%}
        {%- if ns.system -%}{{- '\n\n' -}}{%- endif -%}
        {{- '# Available Tools\nYou can use none, one, or multiple of the following tools by calling them as '
            'functions to help with the user\'s query.\nHere are the tools available to you in JSON format '
            'within <tool> and </tool> tags:\n' -}}
        {%- for tool in tools -%}{{- '<tool>' + tool | tojson + '</tool>\n' -}}{%- endfor -%}
        {{- '\nFor each function call you want to make, return a JSON object with function name and '
            'arguments within <tool_call> and </tool_call> tags, like:\n'
            '<tool_call>{"name": function_name, "arguments": {argument_name: argument_value}}</tool_call>\n'
            'Make several calls one per line.' -}}
    {%- endif -%}
    {{- '[|endofturn|]\n' -}}
{%- endif -%}
{%- for message in messages -%}
    {%- if message.role == 'assistant' -%}
        {{- '[|assistant|]\n<think>\n\n</think>\n\n' + text(message.content) -}}
        {%- for call in message.tool_calls or [] -%}
            {%- set fn = call.function if call.function is defined else call -%}
            {%- if not loop.first or text(message.content) -%}{{- '\n' -}}{%- endif -%}
            {{- '<tool_call>{"name": ' + fn.name | tojson + ', "arguments": ' -}}
            {{- fn.arguments if fn.arguments is string else fn.arguments | tojson -}}
            {{- '}</tool_call>' -}}
        {%- endfor -%}
        {{- '[|endofturn|]\n' -}}
    {%- elif message.role == 'tool' -%}
        {%- if loop.first or loop.previtem.role != 'tool' -%}{{- '[|tool|]\n' -}}{%- else -%}{{- '\n' -}}{%- endif -%}
        {{- '<tool_result>{"result": ' + text(message.content) | tojson + '}</tool_result>' -}}
        {%- if loop.last or loop.nextitem.role != 'tool' -%}{{- '[|endofturn|]\n' -}}{%- endif -%}
    {%- else -%}
        {{- '[|' + message.role + '|]\n' + text(message.content) + '[|endofturn|]\n' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '[|assistant|]\n' -}}
    {%- if enable_thinking is defined and enable_thinking -%}{{- '<think>\n' -}}
    {%- else -%}{{- '<think>\n\n</think>\n\n' -}}{%- endif -%}
{%- endif -%}
""".strip()

GENERIC_TOOLS_SYSTEM_PROMPT = (
    "You can call the following tools. Each tool's JSON schema is given within <tool> and </tool> tags:\n"
    "{tools}\n"
    "To call a tool, answer with one line per call, each a JSON object within <tool_call> and </tool_call> "
    'tags, like:\n<tool_call>{{"name": "tool_name", "arguments": {{"argument_name": "value"}}}}</tool_call>'
)

_PROBE_TOOL = {"type": "function", "function": {
    "name": "exaone_serve_probe_tool", "description": "probe", "parameters": {"type": "object", "properties": {}}}}
_PROBE_MESSAGES = [{"role": "user", "content": "exaone-serve probe"}]


def render_tools_system_prompt(tools: list[dict[str, Any]]) -> str:
    """The generic tools instructions for models whose chat template ignores `tools`."""
    listing = "\n".join(f"<tool>{json.dumps(tool, ensure_ascii=False)}</tool>" for tool in tools)
    return GENERIC_TOOLS_SYSTEM_PROMPT.format(tools=listing)


@dataclass(frozen=True)
class TemplateTraits:
    """What a tokenizer's own chat template does with `enable_thinking` and `tools`."""

    thinking_aware: bool
    tools_aware: bool


def _try_render(hf_tokenizer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> str | None:
    try:
        return hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    except Exception:  # a template that cannot render the probe supports neither feature
        return None


def template_traits(hf_tokenizer: Any) -> TemplateTraits:
    """Probe the template: thinking-aware if enable_thinking changes the prompt, tools-aware if tools show up."""
    on = _try_render(hf_tokenizer, _PROBE_MESSAGES, enable_thinking=True)
    off = _try_render(hf_tokenizer, _PROBE_MESSAGES, enable_thinking=False)
    with_tools = _try_render(hf_tokenizer, _PROBE_MESSAGES, tools=[_PROBE_TOOL])
    return TemplateTraits(
        thinking_aware=on is not None and off is not None and on != off,
        tools_aware=with_tools is not None and _PROBE_TOOL["function"]["name"] in with_tools,
    )


def _tool_call_line(call: dict[str, Any]) -> str:
    fn = call.get("function", call)
    args = fn.get("arguments", {})
    args_json = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return f'<tool_call>{{"name": {json.dumps(fn["name"], ensure_ascii=False)}, "arguments": {args_json}}}</tool_call>'


def to_generic_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Rewrite a conversation for a template without tool support: tools prompt in the system turn,
    assistant tool_calls as `<tool_call>` lines, tool results as user turns with `<tool_result>`."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role, content = message.get("role"), message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            lines = [content] if content else []
            out.append({"role": "assistant", "content": "\n".join(
                lines + [_tool_call_line(c) for c in message["tool_calls"]])})
        elif role == "tool":
            result = json.dumps({"result": content}, ensure_ascii=False)
            out.append({"role": "user", "content": f"<tool_result>{result}</tool_result>"})
        else:
            out.append({**message, "content": content})
    if tools:
        prompt = render_tools_system_prompt(tools)
        if out and out[0].get("role") == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def render_chat_prompt(hf_tokenizer: Any, messages: list[dict[str, Any]], *, enable_thinking: bool,
                       tools: list[dict[str, Any]] | None = None, template_kwargs: dict[str, Any] | None = None,
                       traits: TemplateTraits | None = None, add_generation_prompt: bool = True) -> str:
    """Render the prompt text (with the generation prompt unless told otherwise), using the template's own
    reasoning/tools support where it has it and the generic fallbacks (`<think>\\n` suffix, tools system
    prompt) where not."""
    traits = traits or template_traits(hf_tokenizer)
    kwargs = {**(template_kwargs or {}), "enable_thinking": enable_thinking}
    if tools and traits.tools_aware:
        kwargs["tools"] = tools
    elif tools or any(m.get("role") == "tool" or m.get("tool_calls") for m in messages):
        messages = to_generic_messages(messages, tools)
    prompt = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                              **kwargs)
    if add_generation_prompt and enable_thinking and not traits.thinking_aware:
        prompt += THINK_START + "\n"
    return prompt
