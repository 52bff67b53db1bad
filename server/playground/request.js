// What the playground sends and reads, without the page: request bodies, SSE events, /metrics, code snippets.

export const EXAMPLE_TOOLS = {
  weather: [
    {type: "function", function: {name: "get_weather", description: "Current weather in a city", parameters: {
      type: "object", properties: {city: {type: "string"}, unit: {type: "string", enum: ["celsius", "fahrenheit"]}},
      required: ["city", "unit"], additionalProperties: false}}},
    {type: "function", function: {name: "get_time", description: "Current time in a timezone", parameters: {
      type: "object", properties: {timezone: {type: "string", enum: ["UTC", "KST", "CET"]}},
      required: ["timezone"], additionalProperties: false}}},
  ],
  calculator: [
    {type: "function", function: {name: "calculate", description: "Evaluate an arithmetic expression", parameters: {
      type: "object", properties: {expression: {type: "string"}}, required: ["expression"],
      additionalProperties: false}}},
  ],
};

export const EXAMPLE_SCHEMA = {
  type: "object", properties: {name: {type: "string", maxLength: 24}, age: {type: "integer", minimum: 0, maximum: 130},
    languages: {type: "array", items: {enum: ["python", "rust", "go"]}, maxItems: 3}},
  required: ["name", "age", "languages"], additionalProperties: false,
};

// Fields the openai SDK's chat.completions.create takes by name; the rest go in extra_body.
const SDK_FIELDS = new Set(["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
  "seed", "stop", "n", "tools", "tool_choice", "parallel_tool_calls", "response_format", "reasoning_effort",
  "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "logit_bias", "user", "stream",
  "stream_options"]);

/** A request body from the settings (already parsed values) and the conversation. */
export function chatBody(s, messages) {
  const body = {model: s.model || undefined, messages, stream: true, stream_options: {include_usage: true}};
  body.reasoning = s.reasoning;
  if (s.effort) body.reasoning_effort = s.effort;
  if (s.reasoning && s.budget !== null) body.thinking_token_budget = s.budget;
  for (const [key, value] of [["temperature", s.temperature], ["top_p", s.topP], ["max_tokens", s.maxTokens],
    ["seed", s.seed]]) {
    if (value !== null) body[key] = value;
  }
  if (s.tools) {
    body.tools = s.tools;
    const named = s.toolChoice.startsWith("function:");
    body.tool_choice = named ? {type: "function", function: {name: s.toolChoice.slice(9)}} : s.toolChoice;
  }
  if (s.schema) body.response_format = {type: "json_schema", json_schema: {name: "answer", schema: s.schema, strict: true}};
  return {...JSON.parse(JSON.stringify(body)), ...s.extra};
}

/** Yield each JSON event of an OpenAI server-sent event stream until `[DONE]`. */
export async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true}).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

/** running, waiting and the fullest KV pool's use (0..1) from Prometheus text. */
export function serverLoad(text) {
  const load = {running: null, waiting: null, kv: null};
  for (const line of text.split("\n")) {
    const m = /^exaone:(num_requests_running|num_requests_waiting|kv_cache_usage_perc)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!m) continue;
    const value = Number(m[3]);
    if (m[1] === "num_requests_running") load.running = value;
    else if (m[1] === "num_requests_waiting") load.waiting = value;
    else load.kv = Math.max(load.kv ?? 0, value);
  }
  return load;
}

function shellQuote(text) {
  return "'" + text.replace(/'/g, "'\\''") + "'";
}

/** The request as a curl command; the key comes from $EXAONE_API_KEY, never from the page. */
export function curlCommand(origin, body, needsKey) {
  const lines = [`curl -N ${origin}/v1/chat/completions`, "-H 'Content-Type: application/json'"];
  if (needsKey) lines.push('-H "Authorization: Bearer $EXAONE_API_KEY"');
  lines.push(`-d ${shellQuote(JSON.stringify(body, null, 2))}`);
  return lines.join(" \\\n  ");
}

/** A JSON value written as a Python literal. */
export function pyLiteral(value, indent = "") {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number" || typeof value === "string") return JSON.stringify(value);
  const inner = indent + "    ";
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return "[\n" + value.map((v) => inner + pyLiteral(v, inner) + ",\n").join("") + indent + "]";
  }
  const keys = Object.keys(value);
  if (!keys.length) return "{}";
  return "{\n" + keys.map((k) => `${inner}${JSON.stringify(k)}: ${pyLiteral(value[k], inner)},\n`).join("") + indent + "}";
}

/** The request on the official openai SDK, streaming what it receives to stdout. */
export function pythonCode(origin, body) {
  const named = Object.entries(body).filter(([k]) => SDK_FIELDS.has(k));
  const extra = Object.fromEntries(Object.entries(body).filter(([k]) => !SDK_FIELDS.has(k)));
  const args = named.map(([k, v]) => `    ${k}=${pyLiteral(v, "    ")},`);
  if (Object.keys(extra).length) args.push(`    extra_body=${pyLiteral(extra, "    ")},`);
  return [
    "import os", "", "from openai import OpenAI", "",
    `client = OpenAI(base_url=${JSON.stringify(origin + "/v1")}, api_key=os.environ.get("EXAONE_API_KEY", "EMPTY"))`,
    "stream = client.chat.completions.create(", ...args, ")",
    "for chunk in stream:",
    "    for choice in chunk.choices:",
    "        delta = choice.delta",
    '        print(getattr(delta, "reasoning_content", None) or delta.content or "", end="", flush=True)',
    "        for call in delta.tool_calls or []:",
    '            print(call.function.name or "", call.function.arguments or "", end="", flush=True)',
    "print()", "",
  ].join("\n");
}
