"""Tool calls in model output: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks, one per line.

The parser is streaming (text deltas in, content and OpenAI-shaped tool-call deltas out); the whole-text
parse is the same parser fed once, so streaming and non-streaming agree. With reasoning on, feed it only
the content part (after ReasoningParser).

Malformed blocks: a block whose `{"name": "...", "arguments": ` head never parses (and which is not JSON
with a name either) is left in the content verbatim, tags included, once its `</tool_call>` shows it; a
block the end of the output cut before its head was complete is dropped (a cut call never reaches the
content). A block whose head parsed has already been streamed as a call, so it stays one; its arguments
are the text the model wrote, which may be cut short only when max_tokens ended the output.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from engine.text.detokenizer import partial_tag_suffix

TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
# The head of a call in EXAONE's key order; arguments streamed incrementally must be a JSON object.
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*(?=\{)')
_ID_CHARS = string.ascii_letters + string.digits


def new_call_id() -> str:
    """An OpenAI-style tool call id: `call_` and 24 random characters."""
    return "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(24))


@dataclass
class ToolCall:
    """One parsed call; `arguments` is JSON text, as OpenAI returns it."""

    id: str
    name: str
    arguments: str = ""
    closed: bool = False  # its `</tool_call>` arrived (False only when the output was cut short)

    def to_openai(self) -> dict[str, Any]:
        """The `message.tool_calls[i]` object of a chat completion."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ToolCallDelta:
    """A streaming piece of a call: the first carries id and name, later ones argument fragments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def to_openai(self) -> dict[str, Any]:
        """The `delta.tool_calls[i]` object of a chat completion chunk."""
        out: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            out |= {"id": self.id, "type": "function"}
        name = {} if self.name is None else {"name": self.name}
        out["function"] = {**name, "arguments": self.arguments}
        return out


@dataclass
class _ArgsScanner:
    """Finds where a streamed JSON object ends, tracking depth and strings only."""

    depth: int = 0
    in_string: bool = False
    escape: bool = False
    done: bool = False

    def take(self, text: str) -> int:
        """How many leading characters of `text` belong to the arguments; sets `done` at their end."""
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif ch == "\\":
                    self.escape = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.done = True
                    return i + 1
            elif ch == "<":  # a tag outside any string: the arguments were cut short
                self.done = True
                return i
        return len(text)


@dataclass
class _Block:
    space: str  # the content whitespace before the block, restored if the block is not a call
    call: ToolCall | None = None
    index: int = -1
    scanner: _ArgsScanner = field(default_factory=_ArgsScanner)


def _whole_call(body: str) -> ToolCall | None:
    """A block in another shape (key order, string arguments) that is still a JSON call."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return ToolCall(new_call_id(), obj["name"], text, closed=True)


class ToolCallParser:
    """Streaming tool-call parser; `feed` deltas, then `finish`; `calls` holds every call found."""

    def __init__(self, start: str = TOOL_CALL_START, end: str = TOOL_CALL_END) -> None:
        self.calls: list[ToolCall] = []
        self._start, self._end = start, end
        self._text = ""  # text not yet processed
        self._space = ""  # trailing content whitespace, held back: it may only separate calls
        self._block: _Block | None = None

    def feed(self, delta: str) -> tuple[str, list[ToolCallDelta]]:
        """Take a content text delta; return (content delta, tool-call deltas)."""
        self._text += delta
        return self._run(final=False)

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """Flush at the end of the output."""
        return self._run(final=True)

    def _run(self, final: bool) -> tuple[str, list[ToolCallDelta]]:
        content: list[str] = []
        deltas: list[ToolCallDelta] = []
        while self._step(final, content, deltas):
            pass
        if final and self._space and not self.calls:
            content.append(self._space)
            self._space = ""
        return "".join(content), deltas

    def _content(self, text: str, out: list[str]) -> None:
        body = text.rstrip()
        if body:
            out.append(self._space + body)
            self._space = ""
        self._space += text[len(body):]

    def _step(self, final: bool, content: list[str], deltas: list[ToolCallDelta]) -> bool:
        """Process what can be processed now; True if the loop should run again."""
        if self._block is None:
            at = self._text.find(self._start)
            if at < 0:
                keep = 0 if final else partial_tag_suffix(self._text, self._start)
                self._content(self._text[:len(self._text) - keep], content)
                self._text = self._text[len(self._text) - keep:]
                return False
            self._content(self._text[:at], content)
            self._block = _Block(self._space)
            self._space = ""  # whitespace before a call only separates it
            self._text = self._text[at + len(self._start):]
            return True
        block = self._block
        if block.call is None:
            head = _HEAD.match(self._text)
            if head is None:
                return self._unheaded(final, content, deltas)
            block.call = ToolCall(new_call_id(), json.loads(head.group(1)))
            block.index = len(self.calls)
            self.calls.append(block.call)
            deltas.append(ToolCallDelta(block.index, block.call.id, block.call.name))
            self._text = self._text[head.end():]
        if not block.scanner.done:
            n = block.scanner.take(self._text)
            if n:
                block.call.arguments += self._text[:n]
                deltas.append(ToolCallDelta(block.index, arguments=self._text[:n]))
                self._text = self._text[n:]
            if not block.scanner.done and not final:
                return False
        end = self._text.find(self._end)
        if end < 0 and not final:
            return False
        block.call.closed = end >= 0
        self._text = self._text[end + len(self._end):] if end >= 0 else ""
        self._block = None
        return True

    def _unheaded(self, final: bool, content: list[str], deltas: list[ToolCallDelta]) -> bool:
        """A block whose head did not parse: wait for its end, then a call in another shape or content."""
        end = self._text.find(self._end)
        if end < 0:
            if final:  # cut by the end of the output: neither a call nor content
                self._text, self._block = "", None
            return False
        body = self._text[:end]
        self._text = self._text[end + len(self._end):]
        call = _whole_call(body)
        if call is None:
            self._space = self._block.space
            self._block = None
            self._content(self._start + body + self._end, content)
            return True
        self._block = None
        deltas.append(ToolCallDelta(len(self.calls), call.id, call.name, call.arguments))
        self.calls.append(call)
        return True


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """Non-streaming parse of a whole content text: (content without the calls, calls)."""
    parser = ToolCallParser()
    content, _ = parser.feed(text)
    rest, _ = parser.finish()
    return content + rest, parser.calls
