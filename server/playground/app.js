// The playground page: a conversation streamed from /v1/chat/completions, with the request's modes as controls.
import {assistantView, bubble, el, mergeCall, renderCalls} from "./messages.js";
import {EXAMPLE_SCHEMA, EXAMPLE_TOOLS, chatBody, curlCommand, pythonCode, serverLoad, sseEvents} from "./request.js";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "exaone-serve.api-key"; // sessionStorage: gone when the tab closes
const state = {messages: [], controller: null, apiKey: sessionStorage.getItem(KEY_STORAGE) || ""};

class SettingsError extends Error {}

// ---- server: key, models, load -----------------------------------------------------------------

function api(path, init = {}) {
  const headers = {"Content-Type": "application/json"};
  if (state.apiKey) headers.Authorization = `Bearer ${state.apiKey}`;
  return fetch(path, {...init, headers}).then((response) => {
    if (response.status === 401) askForKey(state.apiKey ? "The server refused this key." : "This server needs an API key.");
    return response;
  });
}

async function errorText(response) {
  try {
    return (await response.json()).error.message;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

function askForKey(reason) {
  const form = $("key-form");
  $("key-note").textContent = `${reason} The page keeps it in this tab only (sessionStorage) and sends it with every API call.`;
  if (form.hidden) {
    form.hidden = false;
    $("api-key").focus();
  }
}

async function loadModels() {
  let response;
  try {
    response = await api("/v1/models");
  } catch {
    $("server-status").textContent = "Cannot reach the server; retrying…";
    setTimeout(loadModels, 3000);
    return;
  }
  if (response.status === 503) {
    $("server-status").textContent = "The model is loading…";
    setTimeout(loadModels, 2000);
    return;
  }
  if (!response.ok) {
    $("server-status").textContent = response.status === 401 ? "API key needed" : await errorText(response);
    return;
  }
  const models = (await response.json()).data;
  $("model").replaceChildren(...models.map((m) => el("option", "", m.id)));
  $("server-status").textContent = models.length ? `Ready · context ${models[0].max_model_len} tokens` : "No model";
}

async function refreshLoad() {
  try {
    const response = await fetch("/metrics");
    if (!response.ok) return;
    const load = serverLoad(await response.text());
    $("stat-running").textContent = load.running ?? "–";
    $("stat-waiting").textContent = load.waiting ?? "–";
    $("stat-kv").textContent = load.kv === null ? "–" : `${(100 * load.kv).toFixed(1)}%`;
  } catch {
    // the server is away; the next poll tries again
  }
}

async function pollLoad() {
  if (!document.hidden) await refreshLoad();
  setTimeout(pollLoad, state.controller ? 500 : 1500);
}

// ---- settings --------------------------------------------------------------------------------------

function numberField(id) {
  const text = $(id).value.trim();
  return text === "" ? null : Number(text);
}

function jsonField(id, errorId, panel, check) {
  const field = $(id);
  field.removeAttribute("aria-invalid");
  $(errorId).textContent = "";
  try {
    const value = JSON.parse(field.value);
    check(value);
    return value;
  } catch (e) {
    field.setAttribute("aria-invalid", "true");
    $(errorId).textContent = `Not sent: ${e.message}`;
    $(panel).open = true;
    field.focus();
    throw new SettingsError(e.message);
  }
}

function settings() {
  const tools = $("tools-on").checked ? jsonField("tools", "tools-error", "tools-panel", (v) => {
    if (!Array.isArray(v)) throw new Error("tools must be a JSON array of {type, function} objects");
  }) : null;
  const schema = $("json-on").checked ? jsonField("json-schema", "json-error", "json-panel", (v) => {
    if (typeof v !== "object" || v === null) throw new Error("the schema must be a JSON object");
  }) : null;
  const extra = $("extra").value.trim() ? jsonField("extra", "extra-error", "more-panel", (v) => {
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("extra fields must be a JSON object");
  }) : {};
  return {model: $("model").value, reasoning: $("reasoning").checked, budget: numberField("budget"),
    effort: $("effort").value, temperature: numberField("temperature"), topP: numberField("top-p"),
    maxTokens: numberField("max-tokens"), seed: numberField("seed"), tools, toolChoice: $("tool-choice").value,
    schema, extra};
}

function conversation(pending) {
  const system = $("system").value.trim();
  const messages = system ? [{role: "system", content: system}, ...state.messages] : [...state.messages];
  return pending ? [...messages, {role: "user", content: pending}] : messages;
}

function toolChoices() {
  let names = [];
  try {
    names = JSON.parse($("tools").value).map((t) => t.function.name).filter(Boolean);
  } catch {
    return; // the error shows when the request is built
  }
  const select = $("tool-choice");
  const chosen = select.value;
  const options = ["auto", "none", "required"].map((v) => el("option", "", v));
  for (const name of names) {
    const option = el("option", "", `${name} (forced)`);
    option.value = `function:${name}`;
    options.push(option);
  }
  select.replaceChildren(...options);
  select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "auto";
}

// ---- a turn ---------------------------------------------------------------------------------------

/** After a turn that ended in tool calls: a result box per call, and a button that sends them and continues. */
function offerResults(view, calls) {
  const boxes = calls.map((call, i) => {
    const card = view.calls.children[i];
    const id = `result-${call.id}`;
    const label = el("label", "", `Result of ${call.function.name}`);
    label.htmlFor = id;
    const box = el("textarea", "tool-result");
    box.id = id;
    box.rows = 2;
    card.append(label, box);
    return box;
  });
  const button = el("button", "continue", "Send results and continue");
  button.type = "button";
  button.addEventListener("click", () => {
    let s;
    try {
      s = settings();
    } catch (e) {
      if (e instanceof SettingsError) return;
      throw e;
    }
    button.disabled = true;
    calls.forEach((call, i) => {
      boxes[i].readOnly = true;
      state.messages.push({role: "tool", tool_call_id: call.id, content: boxes[i].value});
      bubble("tool", `Result of ${call.function.name}`, boxes[i].value);
    });
    run(s, null);
  });
  view.calls.append(button);
  boxes[0].focus();
}

function showStats(t0, first, end, usage) {
  $("stat-ttft").textContent = first === null ? "–" : `${Math.round(first - t0)} ms`;
  const n = usage?.completion_tokens ?? 0;
  $("stat-tps").textContent = first !== null && n > 1 && end > first ? ((n - 1) / ((end - first) / 1000)).toFixed(1) : "–";
  $("stat-prompt").textContent = usage?.prompt_tokens ?? "–";
  $("stat-cached").textContent = usage?.prompt_tokens_details?.cached_tokens ?? "–";
  $("stat-reasoning").textContent = usage?.completion_tokens_details?.reasoning_tokens ?? "–";
}

function busy(on) {
  $("send").disabled = on;
  $("stop").disabled = !on;
  $("log").setAttribute("aria-busy", String(on));
}

/** Stream one assistant turn for the conversation (plus `userText`, kept only if the request got through). */
async function run(s, userText) {
  const messages = conversation(userText);
  const body = chatBody(s, messages);
  const sent = userText === null ? null : bubble("user", "You", userText);
  const view = assistantView(Boolean(s.schema));
  const reply = {reasoning: "", content: "", calls: []};
  const t0 = performance.now();
  let first = null, usage = null, finish = null, cut = null, failure = null;
  state.controller = new AbortController();
  busy(true);
  try {
    const response = await api("/v1/chat/completions", {method: "POST", body: JSON.stringify(body),
      signal: state.controller.signal});
    if (!response.ok) throw new Error(await errorText(response));
    for await (const chunk of sseEvents(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const d = choice.delta || {};
        if (d.reasoning_content || d.content || d.tool_calls) first ??= performance.now();
        if (d.reasoning_content) view.think((reply.reasoning += d.reasoning_content));
        if (d.content) {
          view.answered();
          view.answer.textContent = reply.content += d.content;
        }
        if (d.tool_calls) {
          view.answered();
          for (const delta of d.tool_calls) mergeCall(reply.calls, delta);
          renderCalls(view.calls, reply.calls);
        }
        cut = d.reasoning_cut || cut;
        finish = choice.finish_reason || finish;
      }
    }
  } catch (e) {
    failure = e.name === "AbortError" ? "stopped" : e.message;
  } finally {
    state.controller = null;
    busy(false);
    refreshLoad();
  }
  showStats(t0, first, performance.now(), usage);
  const got = reply.reasoning || reply.content || reply.calls.length;
  if (failure && !got && failure !== "stopped") {
    // nothing came back: the message goes back into the box, as if never sent
    view.article.remove();
    sent?.remove();
    if (userText !== null) $("message").value = userText;
    $("composer-error").textContent = failure;
    return;
  }
  if (userText !== null) state.messages.push({role: "user", content: userText});
  const message = {role: "assistant", content: reply.content || (reply.calls.length ? null : "")};
  if (reply.calls.length) message.tool_calls = reply.calls;
  state.messages.push(message);
  view.done(failure === "stopped" ? "stopped" : failure ? `error: ${failure}` : `finish_reason: ${finish}`, cut, usage);
  if (!failure && finish === "tool_calls" && reply.calls.length) offerResults(view, reply.calls);
}

// ---- wiring ----------------------------------------------------------------------------------------

function copy(kind) {
  let s;
  try {
    s = settings();
  } catch (e) {
    if (e instanceof SettingsError) return;
    throw e;
  }
  const body = chatBody(s, conversation($("message").value.trim() || null));
  const needsKey = !$("key-form").hidden;
  const code = kind === "curl" ? curlCommand(location.origin, body, needsKey) : pythonCode(location.origin, body);
  $("code").value = code;
  $("code").dataset.kind = kind;
  const done = (text) => { $("copy-status").textContent = text; };
  (navigator.clipboard ? navigator.clipboard.writeText(code) : Promise.reject(new Error("no clipboard")))
    .then(() => done(`Copied as ${kind}; the key is read from $EXAONE_API_KEY.`),
      () => done("Select the text below and copy it."));
}

function wire() {
  $("tools").value = JSON.stringify(EXAMPLE_TOOLS.weather, null, 2);
  $("json-schema").value = JSON.stringify(EXAMPLE_SCHEMA, null, 2);
  toolChoices();
  $("tool-example").addEventListener("change", (e) => {
    $("tools").value = JSON.stringify(EXAMPLE_TOOLS[e.target.value], null, 2);
    toolChoices();
  });
  $("tools").addEventListener("input", toolChoices);
  $("effort").addEventListener("change", (e) => {
    if (e.target.value) $("reasoning").checked = e.target.value !== "none";
  });
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("message").value.trim();
    if (!text || state.controller) return;
    let s;
    try {
      s = settings();
    } catch (err) {
      if (err instanceof SettingsError) return;
      throw err;
    }
    $("message").value = "";
    $("composer-error").textContent = "";
    run(s, text);
  });
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.controller) state.controller.abort();
  });
  $("stop").addEventListener("click", () => state.controller?.abort());
  $("new-chat").addEventListener("click", () => {
    state.controller?.abort();
    state.messages = [];
    $("log").replaceChildren();
    $("message").focus();
  });
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.apiKey = $("api-key").value.trim();
    sessionStorage.setItem(KEY_STORAGE, state.apiKey);
    $("key-note").textContent = "Using this key in this tab only.";
    loadModels();
  });
  $("copy-curl").addEventListener("click", () => copy("curl"));
  $("copy-python").addEventListener("click", () => copy("python"));
  // on a phone the settings start folded, so the conversation comes first
  if (matchMedia("(max-width: 720px)").matches) {
    for (const panel of document.querySelectorAll(".settings details")) panel.open = false;
  }
}

wire();
if (state.apiKey) {
  $("api-key").value = state.apiKey;
  askForKey("Using the key saved in this tab.");
}
loadModels();
pollLoad();
