// The chat playground: OpenAI chat completions, streamed (fetch + ReadableStream, server-sent events).
// No build step, no dependencies. The API key lives in sessionStorage (this tab only) and goes nowhere but
// the Authorization header of requests to the base URL the user entered; it is never put in a URL.
// Replies are rendered with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = { baseUrl: "playground.baseUrl", model: "playground.model", maxTokens: "playground.maxTokens" };
const KEY_STORE = "playground.apiKey"; // sessionStorage: gone when the tab closes

const state = { messages: [], busy: false, controller: null };

// --------------------------------------------------------------------------------------- settings

function settings() {
  const raw = $("base-url").value.trim().replace(/\/+$/, "");
  let url;
  try {
    url = new URL(raw);
  } catch {
    throw new UsageError(`Base URL ${JSON.stringify(raw)} is not a URL: enter the endpoint's OpenAI base URL, e.g. https://…/v1`);
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    throw new UsageError(`Base URL must start with https:// (or http:// for a local endpoint), not ${url.protocol}`);
  }
  if (url.username || url.password) {
    throw new UsageError("Base URL must not hold credentials (user:password@): put the key in the API key field");
  }
  if (url.search || url.hash) {
    throw new UsageError("Base URL must not have a query or fragment (the key never goes in a URL): remove the ?… or #…");
  }
  const maxTokens = Number($("max-tokens").value);
  if (!Number.isInteger(maxTokens) || maxTokens < 1) {
    throw new UsageError(`max_tokens ${JSON.stringify($("max-tokens").value)} must be a whole number >= 1`);
  }
  return { baseUrl: raw, apiKey: $("api-key").value.trim(), model: $("model").value.trim(), maxTokens };
}

class UsageError extends Error {}

function remember() {
  localStorage.setItem(STORE.baseUrl, $("base-url").value.trim());
  localStorage.setItem(STORE.model, $("model").value.trim());
  localStorage.setItem(STORE.maxTokens, $("max-tokens").value);
  sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
}

function headers(apiKey, json) {
  const h = {};
  if (apiKey) h.Authorization = `Bearer ${apiKey}`;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

// A deployment may serve config.json beside the page (same origin): the endpoint's URL, and on the local
// demo also its key. Its values win over what was stored, as they describe the endpoint now.
async function loadConfig() {
  let config = {};
  try {
    const reply = await fetch("config.json", { cache: "no-store", credentials: "same-origin" });
    if (reply.ok) config = await reply.json();
  } catch {
    config = {}; // no config: the user enters everything
  }
  // A relative base URL ("/v1", from a front that serves the page beside the API) is this origin's.
  if (typeof config.baseUrl === "string" && config.baseUrl.startsWith("/")) {
    config.baseUrl = new URL(config.baseUrl, location.href).href;
  }
  const pick = (name, stored) => (typeof config[name] === "string" && config[name]) || stored || "";
  $("base-url").value = pick("baseUrl", localStorage.getItem(STORE.baseUrl));
  $("api-key").value = pick("apiKey", sessionStorage.getItem(KEY_STORE));
  $("model").value = pick("model", localStorage.getItem(STORE.model));
  const maxTokens = Number.isInteger(config.maxTokens) ? String(config.maxTokens) : localStorage.getItem(STORE.maxTokens);
  if (maxTokens) $("max-tokens").value = maxTokens;
  remember();
}

// ----------------------------------------------------------------------------------------- errors

function showError(title, body) {
  $("error-status").textContent = title;
  $("error-body").textContent = body;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error-status").textContent = "";
  $("error-body").textContent = "";
}

// The endpoint's own words: status line and body, the JSON pretty-printed, nothing dropped.
async function httpError(reply, what) {
  const text = await reply.text().catch((err) => `(the body could not be read: ${err})`);
  let body = text;
  try {
    body = JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    body = text || "(empty body)";
  }
  return { title: `${what}: HTTP ${reply.status} ${reply.statusText}`.trim(), body };
}

function networkError(url, err, what) {
  // Browsers hide why a request failed (refused connection, CORS refusal, mixed content): say all three.
  return {
    title: `${what}: no reply from ${url}`,
    body: `${err}\nThe endpoint is down or unreachable, refused this page's origin (CORS), or is http:// while this page is https://.`,
  };
}

// ----------------------------------------------------------------------------------------- models

async function loadModels() {
  let s;
  try {
    s = settings();
  } catch (err) {
    $("models-status").textContent = err.message;
    return;
  }
  remember();
  const url = `${s.baseUrl}/models`;
  $("models-status").textContent = "loading models…";
  let reply;
  try {
    reply = await fetch(url, { headers: headers(s.apiKey, false), credentials: "omit", referrerPolicy: "no-referrer" });
  } catch (err) {
    const e = networkError(url, err, "GET /models");
    $("models-status").textContent = e.title;
    showError(e.title, e.body);
    return;
  }
  if (!reply.ok) {
    const e = await httpError(reply, "GET /models");
    $("models-status").textContent = e.title;
    showError(e.title, e.body);
    return;
  }
  const listing = await reply.json().catch(() => ({}));
  const ids = Array.isArray(listing.data) ? listing.data.map((m) => m && m.id).filter((id) => typeof id === "string") : [];
  const list = $("models");
  list.replaceChildren(...ids.map((id) => Object.assign(document.createElement("option"), { value: id })));
  if (ids.length && !ids.includes($("model").value.trim())) $("model").value = ids[0];
  $("models-status").textContent = ids.length ? `${ids.length} model(s): ${ids.join(", ")}` : "the endpoint listed no models";
  remember();
}

// ------------------------------------------------------------------------------------------- chat

function addTurn(role, text) {
  const item = document.createElement("li");
  item.className = `turn ${role}`;
  const label = Object.assign(document.createElement("div"), { className: "role", textContent: role });
  const content = Object.assign(document.createElement("div"), { className: "content", textContent: text });
  const stats = Object.assign(document.createElement("div"), { className: "stats" });
  item.append(label, content, stats);
  $("history").append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

function setStats(turn, metrics) {
  const stats = turn.querySelector(".stats");
  stats.replaceChildren();
  for (const [name, text, title] of metrics) {
    const span = Object.assign(document.createElement("span"), { textContent: text, title });
    span.dataset.metric = name;
    stats.append(span);
  }
}

// One reply's figures. TTFT: request sent -> first content; tokens/s: tokens after the first over the time
// after the first (1 / time per output token, as benchmarks report it); the count from `usage`.
function replyMetrics(timing, usage) {
  const metrics = [];
  if (timing.first !== null) {
    metrics.push(["ttft_ms", `TTFT ${Math.round(timing.first - timing.sent)} ms`, "request sent to the first token"]);
  }
  const tokens = usage && Number.isInteger(usage.completion_tokens) ? usage.completion_tokens : null;
  if (tokens !== null && timing.first !== null && timing.end !== null) {
    const seconds = (timing.end - timing.first) / 1000;
    const rate = tokens > 1 && seconds > 0 ? ((tokens - 1) / seconds).toFixed(1) : "n/a";
    metrics.push(["tok_s", `${rate} tok/s`, "tokens after the first / time after the first token"]);
  }
  if (tokens !== null) {
    metrics.push(["tokens", `${tokens} tokens`, `completion_tokens from usage (prompt: ${usage.prompt_tokens ?? "?"})`]);
  } else if (timing.end !== null) {
    metrics.push(["tokens", "tokens: not reported (no usage chunk)", "the endpoint sent no usage"]);
  }
  if (timing.end !== null) {
    metrics.push(["total_ms", `${Math.round(timing.end - timing.sent)} ms in all`, "request sent to the last byte"]);
  }
  return metrics;
}

// Server-sent events from a fetch body: yields each event's data (the lines after "data:", joined).
async function* sseData(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let boundary;
    while ((boundary = buffer.search(/\r?\n\r?\n/)) !== -1) {
      const block = buffer.slice(0, boundary);
      buffer = buffer.slice(boundary + buffer.slice(boundary).match(/^\r?\n\r?\n/)[0].length);
      const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, ""));
      if (data.length) yield data.join("\n");
    }
  }
  if (buffer.trim()) {
    const data = buffer.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, ""));
    if (data.length) yield data.join("\n");
  }
}

function setBusy(busy) {
  state.busy = busy;
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

async function send(event) {
  event.preventDefault();
  if (state.busy) return;
  clearError();
  const prompt = $("prompt").value;
  if (!prompt.trim()) return;
  let s;
  try {
    s = settings();
  } catch (err) {
    showError("Check the settings", err.message);
    return;
  }
  if (!s.model) {
    showError("Check the settings", "Model is empty: press “Load models” or type the endpoint's model id");
    return;
  }
  remember();

  const userTurn = addTurn("user", prompt);
  const messages = [...state.messages, { role: "user", content: prompt }];
  $("prompt").value = "";
  const turn = addTurn("assistant", "");
  turn.classList.add("streaming");
  turn.dataset.state = "waiting";
  const content = turn.querySelector(".content");
  const url = `${s.baseUrl}/chat/completions`;
  const timing = { sent: performance.now(), first: null, end: null };
  let usage = null;
  let reply = "";
  let failure = null;
  state.controller = new AbortController();
  setBusy(true);

  const failed = (title, body) => {
    failure = { title, body };
  };
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: headers(s.apiKey, true),
      credentials: "omit",
      referrerPolicy: "no-referrer",
      signal: state.controller.signal,
      body: JSON.stringify({
        model: s.model, messages, max_tokens: s.maxTokens, stream: true, stream_options: { include_usage: true },
      }),
    });
    if (!response.ok) {
      const e = await httpError(response, "POST /chat/completions");
      failed(e.title, e.body);
    } else {
      turn.dataset.state = "streaming";
      for await (const data of sseData(response.body)) {
        if (data === "[DONE]") break;
        let chunk;
        try {
          chunk = JSON.parse(data);
        } catch {
          failed("The stream sent something that is not JSON", data);
          break;
        }
        if (chunk.error) { // the gateway ends a failed stream with an error event
          failed("The endpoint ended the stream with an error", JSON.stringify(chunk.error, null, 2));
          break;
        }
        if (chunk.usage) usage = chunk.usage;
        const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
        const piece = (delta.content || "") + (delta.reasoning_content || "");
        if (piece) {
          if (timing.first === null) {
            timing.first = performance.now();
            setStats(turn, replyMetrics(timing, null));
          }
          reply += piece;
          content.textContent = reply;
        }
      }
    }
  } catch (err) {
    if (err.name === "AbortError") {
      failed("Stopped", "the reply was stopped before it ended; what arrived is kept above");
    } else if (timing.first === null && !(err instanceof UsageError)) {
      const e = networkError(url, err, "POST /chat/completions");
      failed(e.title, e.body);
    } else {
      failed("The stream broke off", String(err));
    }
  } finally {
    timing.end = performance.now();
    state.controller = null;
    setBusy(false);
  }

  turn.classList.remove("streaming");
  setStats(turn, replyMetrics(timing, usage));
  if (failure) {
    turn.dataset.state = "error";
    showError(failure.title, failure.body);
    if (!reply) {
      // Nothing came back: the turn is not part of the conversation; the prompt goes back to the box.
      turn.remove();
      userTurn.classList.add("unsent");
      userTurn.querySelector(".role").textContent = "user (not answered)";
      $("prompt").value = prompt;
      return;
    }
  } else {
    turn.dataset.state = "done";
  }
  state.messages = [...messages, { role: "assistant", content: reply }];
}

function clearChat() {
  if (state.busy) return;
  state.messages = [];
  $("history").replaceChildren();
  clearError();
}

document.addEventListener("DOMContentLoaded", async () => {
  $("composer").addEventListener("submit", send);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("clear").addEventListener("click", clearChat);
  $("load-models").addEventListener("click", loadModels);
  $("settings").addEventListener("submit", (event) => event.preventDefault());
  for (const id of ["base-url", "api-key", "model", "max-tokens"]) $(id).addEventListener("change", remember);
  await loadConfig();
  if ($("base-url").value) await loadModels();
  document.body.dataset.ready = "true";
});
