"""The playground in headless Chromium on the embedded default model: a streamed answer, reasoning with a cut
thinking block, a tool call continued with a typed result, JSON-schema output, stop, the API-key flow."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import httpx2
import jsonschema
from fixtures_tools import PERSON
from harness import metric, wait_for
from playground_page import KEY, KEYED_MODEL, PHONE, finished, open_playground, send, settings, shot, stat

from engine.modes.reasoning import END_SEQUENCE

COUNT_TEXT_UPDATES = """() => {
  window.textUpdates = 0;
  new MutationObserver((records) => {
    window.textUpdates += records.filter((r) => r.target.closest?.(".assistant .text")).length;
  }).observe(document.getElementById("log"), {childList: true, subtree: true, characterData: true});
}"""


def chat_requests(page) -> list[dict]:
    """Bodies of the page's chat requests, in order (recorded from now on)."""
    bodies: list[dict] = []
    page.on("request", lambda r: r.url.endswith("/v1/chat/completions") and bodies.append(r.post_data_json))
    return bodies


def test_streamed_answer_appears_with_its_numbers(page, base_url):
    open_playground(page, base_url)
    page.evaluate(COUNT_TEXT_UPDATES)
    settings(page, temperature="0", max_tokens="24")
    question = "What is the capital of France?"
    reply = send(page, question)  # Enter sends
    assert finished(reply).startswith("finish_reason: ")
    assert reply.locator(".text").inner_text().strip()
    assert page.evaluate("window.textUpdates") >= 3  # token by token, not one body at the end
    prompt = httpx2.post(f"{base_url}/tokenize", json={"messages": [{"role": "user", "content": question}],
                                                       "reasoning": False}).json()["count"]
    assert stat(page, "prompt") == str(prompt)
    assert re.fullmatch(r"\d+ ms", stat(page, "TTFT")) and float(stat(page, "tok/s")) > 0
    assert stat(page, "reasoning") == "0"
    wait_for(lambda: stat(page, "running") == "0" and stat(page, "KV use").endswith("%"), timeout=10)
    shot(page, "1-streamed-answer")
    page.set_viewport_size(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    assert page.get_by_label("Message", exact=True).is_visible()
    shot(page, "1-streamed-answer-phone")


def test_copy_as_python_and_curl_send_the_request_the_page_would(page, base_url):
    open_playground(page, base_url)
    settings(page, temperature="0", max_tokens="8")
    page.get_by_label("Message", exact=True).fill("Say hi.")
    page.get_by_text("Code for this request").click()
    page.get_by_role("button", name="Copy as Python").click()
    code = page.get_by_label("Code", exact=True).input_value()
    env = {k: v for k, v in os.environ.items() if k != "EXAONE_API_KEY"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0 and run.stdout.strip(), run.stderr
    page.get_by_role("button", name="Copy as curl").click()
    curl = page.get_by_label("Code", exact=True).input_value()
    assert curl.startswith(f"curl -N {base_url}/v1/chat/completions") and "Authorization" not in curl
    body = json.loads(curl.split("-d '", 1)[1].rstrip("'"))
    assert body["messages"] == [{"role": "user", "content": "Say hi."}] and body["max_tokens"] == 8
    assert body["stream"] is True and body["temperature"] == 0
    shot(page, "2-copy-as-curl")


def test_reasoning_fills_the_thinking_block_then_the_answer_follows(page, base_url):
    open_playground(page, base_url)
    settings(page, temperature="0", max_tokens="40")
    page.get_by_label("Reasoning (think before answering)").check()
    page.get_by_label("Thinking budget (tokens)").fill("8")
    reply = send(page, "Why is the sky blue?", key=None)
    finished(reply)
    thinking = reply.locator("details.thinking")
    assert thinking.get_attribute("data-cut") == "budget"
    assert not thinking.evaluate("d => d.open")  # folded once the answer began
    thinking.locator("summary").focus()
    page.keyboard.press("Enter")  # the keyboard unfolds it
    assert thinking.locator(".thinking-text").inner_text().strip()
    assert "cut here: thinking budget reached" in thinking.locator(".cut-mark").inner_text()
    assert reply.locator(".text").inner_text().strip()
    first_reasoning = float(reply.get_attribute("data-first-reasoning-ms"))
    assert first_reasoning < float(reply.get_attribute("data-first-answer-ms"))
    forced = len(httpx2.post(f"{base_url}/tokenize", json={"prompt": END_SEQUENCE, "add_special_tokens": False})
                 .json()["tokens"])
    assert 0 < int(stat(page, "reasoning")) <= 8 + forced
    shot(page, "3-reasoning")


def test_tool_call_renders_as_a_card_and_a_typed_result_continues_the_turn(page, base_url):
    open_playground(page, base_url)
    bodies = chat_requests(page)
    settings(page, temperature="0", max_tokens="64")
    page.get_by_text("Tools", exact=True).click()
    page.get_by_label("Offer tools").check()
    page.get_by_label("tool_choice").select_option("function:get_weather")
    reply = send(page, "What's the weather like in Paris today?")
    assert finished(reply).startswith("finish_reason: tool_calls")
    card = reply.get_by_role("region", name="Tool call get_weather")
    call_id = card.locator("h3 code").inner_text()
    arguments = json.loads(card.locator("pre.args").inner_text())
    assert call_id.startswith("call_") and set(arguments) == {"city", "unit"}
    shot(page, "4-tool-call")
    result = '{"temperature": 21, "sky": "clear"}'
    page.get_by_label("Result of get_weather").fill(result)
    page.get_by_label("tool_choice").select_option("auto")
    page.get_by_role("button", name="Send results and continue").click()
    second = page.locator("article.assistant").nth(1)
    finished(second)
    assert second.locator(".text").inner_text().strip() or second.locator(".tool-card").count()
    sent = bodies[1]["messages"]
    assert sent[-2]["role"] == "assistant" and sent[-2]["tool_calls"][0]["id"] == call_id
    assert json.loads(sent[-2]["tool_calls"][0]["function"]["arguments"]) == arguments
    assert sent[-1] == {"role": "tool", "tool_call_id": call_id, "content": result}
    assert page.locator("article.tool").inner_text().endswith(result)
    shot(page, "4-tool-result-continued")


def test_json_schema_mode_answers_json_that_validates(page, base_url):
    open_playground(page, base_url)
    settings(page, temperature="0.8", max_tokens="64", seed="3")
    page.get_by_text("Structured output").click()
    page.get_by_label("Answer as JSON matching a schema").check()
    reply = send(page, "Describe a fictional programmer as JSON.")
    assert finished(reply).startswith("finish_reason: stop")
    jsonschema.validate(json.loads(reply.locator(".text").inner_text()), PERSON)
    shot(page, "5-json-schema")


def test_stop_aborts_the_stream_and_the_server_sees_it(page, base_url):
    long = 900  # far more than the test waits for
    open_playground(page, base_url)
    settings(page, temperature="0", max_tokens=str(long))
    page.get_by_text("System prompt and extra fields").click()
    page.get_by_label("Extra request fields (JSON object)").fill('{"ignore_eos": true}')
    aborted = metric(base_url, "exaone:request_success_total", finished_reason="abort")
    generated = metric(base_url, "exaone:generation_tokens_total")
    reply = send(page, "Tell me a very long story.")
    wait_for(lambda: reply.locator(".text").inner_text().strip(), timeout=60)
    assert metric(base_url, "exaone:num_requests_running") == 1
    wait_for(lambda: stat(page, "running") == "1", timeout=10)  # the strip reads /metrics too
    page.get_by_role("button", name="Stop").click()
    wait_for(lambda: metric(base_url, "exaone:num_requests_running") == 0, timeout=5)
    assert metric(base_url, "exaone:request_success_total", finished_reason="abort") == aborted + 1
    assert metric(base_url, "exaone:generation_tokens_total") - generated < long / 2
    assert finished(reply) == "stopped"
    assert page.get_by_role("button", name="Send", exact=True).is_enabled()
    wait_for(lambda: stat(page, "running") == "0", timeout=10)
    shot(page, "6-stopped")


def test_api_key_flow(page, console, keyed_url):
    console.allowed = "401"  # the browser logs each refused call
    statuses: list[tuple[str, int, bool]] = []
    page.on("response", lambda r: "/v1/" in r.url and statuses.append(
        (r.url.split("/v1/")[1], r.status, r.request.headers.get("authorization") == f"Bearer {KEY}")))
    open_playground(page, keyed_url, ready=False)  # the page itself needs no key
    key_box = page.get_by_label("API key")
    key_box.wait_for()
    assert "needs an API key" in page.locator("#key-note").inner_text()
    assert statuses == [("models", 401, False)]
    shot(page, "7-api-key-asked")
    key_box.fill("wrong")
    page.get_by_role("button", name="Use key").click()
    page.get_by_text("The server refused this key.").wait_for()
    key_box.fill(KEY)
    refused = len(statuses)
    page.get_by_role("button", name="Use key").click()
    page.locator("#model option").first.wait_for(state="attached")  # a locator: no eval under the page's CSP
    assert page.locator("#model").input_value() == KEYED_MODEL
    settings(page, temperature="0", max_tokens="8")
    finished(send(page, "Hi!"))
    assert [path for path, _, _ in statuses[refused:]] == ["models", "chat/completions"]
    assert all(status == 200 and keyed for _, status, keyed in statuses[refused:])  # every call sent the key
    assert page.evaluate("[Object.keys(localStorage).length, document.cookie]") == [0, ""]
    page.reload()  # the same tab keeps the key (sessionStorage) ...
    page.locator("#model option").first.wait_for(state="attached")  # a locator: no eval under the page's CSP
    other = page.context.new_page()  # ... another tab does not
    other.goto(f"{keyed_url}/")
    other.get_by_text("This server needs an API key.").wait_for()
    page.get_by_label("Message", exact=True).fill("Hi!")
    page.get_by_text("Code for this request").click()
    page.get_by_role("button", name="Copy as curl").click()
    curl = page.get_by_label("Code", exact=True).input_value()
    assert "$EXAONE_API_KEY" in curl and KEY not in curl
    shot(page, "7-api-key-used")
