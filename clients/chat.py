"""`exaone-chat`: a terminal chat with an exaone-serve (or any OpenAI-compatible) server.

Streams answers, keeps the conversation, `/reset` starts over, `/exit` (or Ctrl-D) quits. Reasoning
(`reasoning_content`) is shown dimmed and tool calls are listed when the server sends them;
`--reasoning on|off` and `--budget N` switch EXAONE's thinking and cap it.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

from openai import APIError, OpenAI

DIM, RESET = "\033[2m", "\033[0m"


class ChatSession:
    """One conversation: the history, and a streaming call per user turn."""

    def __init__(self, client: OpenAI, model: str, system: str | None = None, temperature: float | None = None,
                 max_tokens: int | None = None, reasoning: bool | None = None, budget: int | None = None,
                 out: TextIO = sys.stdout) -> None:
        self.client = client
        self.model = model
        self.system = system
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.reasoning = reasoning  # None: the server's default
        self.budget = budget
        self.out = out
        self.dim = out.isatty()
        self.history: list[dict[str, Any]] = []
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.history = [{"role": "system", "content": self.system}] if self.system else []

    def send(self, text: str) -> str:
        """Stream the answer to `text` to `out`, add both turns to the history, return the answer."""
        self.history.append({"role": "user", "content": text})
        extra: dict[str, Any] = {}
        if self.temperature is not None:
            extra["temperature"] = self.temperature
        if self.max_tokens is not None:
            extra["max_completion_tokens"] = self.max_tokens
        # exaone-serve's (and vLLM's) fields beyond OpenAI's go in the body as they are
        body = {"reasoning": self.reasoning, "thinking_token_budget": self.budget}
        extra["extra_body"] = {k: v for k, v in body.items() if v is not None}
        stream = self.client.chat.completions.create(model=self.model, messages=self.history, stream=True, **extra)
        answer: list[str] = []
        tool_calls: dict[int, dict[str, str]] = {}
        thinking = False
        for chunk in stream:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            # reasoning_content is not in the SDK's types; the SDK keeps unknown fields as attributes
            reasoning = getattr(delta, "reasoning_content", None)
            if reasoning:
                thinking = True
                self._write(reasoning, dim=True)
            if delta.content:
                if thinking:  # the answer starts on its own line, below the dimmed thinking
                    self._write("\n")
                    thinking = False
                answer.append(delta.content)
                self._write(delta.content)
            for call in delta.tool_calls or []:
                entry = tool_calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] = call.id or entry["id"]
                if call.function is not None:
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
        for call in tool_calls.values():
            self._write(f"\n[tool call] {call['name']}({call['arguments']})", dim=True)
        self.out.write("\n")
        self.out.flush()
        reply = "".join(answer)
        message: dict[str, Any] = {"role": "assistant", "content": reply}
        if tool_calls:  # kept so the conversation stays valid if the user pastes results back
            message["tool_calls"] = [{"id": c["id"], "type": "function", "function": {
                "name": c["name"], "arguments": c["arguments"]}} for c in tool_calls.values()]
        self.history.append(message)
        return reply

    def _write(self, text: str, dim: bool = False) -> None:
        self.out.write(f"{DIM}{text}{RESET}" if dim and self.dim else text)
        self.out.flush()


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    parser = argparse.ArgumentParser(prog="exaone-chat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1"))
    parser.add_argument("--api-key", default=os.environ.get("EXAONE_API_KEY", "EMPTY"),
                        help="sent as `Authorization: Bearer` (default: $EXAONE_API_KEY)")
    parser.add_argument("--model", help="default: the first model the server lists")
    parser.add_argument("--system", help="a system prompt")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--reasoning", choices=("on", "off"), help="think before answering (default: the server's)")
    parser.add_argument("--budget", type=int, help="most thinking tokens per answer (with reasoning on)")
    args = parser.parse_args(argv)

    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    try:
        model = args.model or client.models.list().data[0].id
    except Exception as e:  # connection refused, 401, ...: one readable line
        sys.exit(f"error: cannot reach {args.base_url}: {e}")
    reasoning = None if args.reasoning is None else args.reasoning == "on"
    session = ChatSession(client, model, args.system, args.temperature, args.max_tokens, reasoning, args.budget)
    print(f"chatting with {model} at {args.base_url}; /reset starts over, /exit quits")
    while True:
        try:
            text = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            session.reset()
            print("(conversation reset)")
        elif text:
            try:
                session.send(text)
            except KeyboardInterrupt:
                session.history.pop()  # the interrupted question got no answer
                print("\n(interrupted)")
            except APIError as e:
                session.history.pop()
                print(f"\nerror: {e}")


if __name__ == "__main__":
    main()
