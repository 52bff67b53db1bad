// The conversation as the page shows it: message bubbles, the streaming assistant message with its thinking
// block and tool-call cards. Model output only ever reaches the page as textContent, never as markup.

const CUTS = {budget: "thinking budget reached", answer_reserve: "room kept for the answer (max_tokens)",
  deadline: "thinking deadline passed"};

/** An element with a class and text. */
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function scrollDown() {
  const log = document.getElementById("log");
  log.scrollTop = log.scrollHeight;
}

/** A message of `role` appended to the log, under a heading screen readers announce. */
export function bubble(role, heading, text) {
  const article = el("article", `msg ${role}`);
  article.append(el("h2", "visually-hidden", heading), el("div", "text", text));
  document.getElementById("log").append(article);
  scrollDown();
  return article;
}

/** The assistant's message as it streams: a thinking block, the answer, tool-call cards, a meta line. */
export function assistantView(json) {
  const article = bubble("assistant", "Assistant", "");
  article.setAttribute("aria-busy", "true");
  const answer = article.querySelector(".text");
  if (json) answer.classList.add("json");
  const start = performance.now();
  let thinking = null;
  const calls = el("div", "tool-calls");
  article.append(calls);
  const view = {
    article, answer, calls,
    think(text) {
      if (!thinking) {
        thinking = el("details", "thinking");
        thinking.open = true;
        thinking.append(el("summary", "", "Thinking…"), el("div", "thinking-text"));
        article.insertBefore(thinking, answer);
        article.dataset.firstReasoningMs = (performance.now() - start).toFixed(0);
      }
      thinking.querySelector(".thinking-text").textContent = text;
      scrollDown();
    },
    answered() {
      if (article.dataset.firstAnswerMs) return;
      article.dataset.firstAnswerMs = (performance.now() - start).toFixed(0);
      if (thinking) {
        thinking.open = false; // the answer is what matters now; the thinking stays one click away
        thinking.querySelector("summary").textContent = `Thought for ${(article.dataset.firstAnswerMs / 1000).toFixed(1)} s`;
      }
    },
    done(outcome, cut, usage) {
      article.removeAttribute("aria-busy");
      if (thinking && cut) {
        const why = CUTS[cut] || cut;
        thinking.dataset.cut = cut;
        thinking.querySelector("summary").append(el("span", "cut", ` · cut: ${why}`));
        thinking.append(el("p", "cut-mark", `✂ cut here: ${why}`));
      }
      const parts = [outcome];
      if (usage) parts.push(`${usage.completion_tokens} tokens`);
      article.append(el("p", "meta", parts.join(" · ")));
      scrollDown();
    },
  };
  return view;
}

/** Add one streamed tool-call delta to the calls so far (OpenAI's delta shape: the first piece has the id). */
export function mergeCall(calls, delta) {
  const call = (calls[delta.index] ??= {id: "", type: "function", function: {name: "", arguments: ""}});
  if (delta.id) call.id = delta.id;
  if (delta.function?.name) call.function.name += delta.function.name;
  if (delta.function?.arguments) call.function.arguments += delta.function.arguments;
}

function pretty(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text; // still streaming, or not JSON
  }
}

/** One card per tool call: its name, id and arguments (indented once they parse). */
export function renderCalls(container, calls) {
  container.replaceChildren(...calls.map((call) => {
    const card = el("section", "tool-card");
    card.setAttribute("aria-label", `Tool call ${call.function.name}`);
    const title = el("h3", "", call.function.name || "…");
    title.append(" ", el("code", "", call.id));
    card.append(title, el("pre", "args", pretty(call.function.arguments)));
    return card;
  }));
}
