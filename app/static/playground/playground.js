// vgate playground: plain JavaScript, no dependencies. Every value from the gateway is written with
// textContent (never parsed as HTML), and every call goes to this page's own origin (relative URLs, so a
// gateway behind a path prefix works too).
"use strict";

const $ = (sel) => document.querySelector(sel);
const KEY_STORE = "vgate.playground.key"; // sessionStorage: the key lives as long as the tab
const RUN_STORE = "vgate.playground.agent"; // the agent run being shown: id, last event id, events

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function headers(extra = {}) {
  const h = { "Content-Type": "application/json", ...extra };
  const key = $("#api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function errorText(status, body) {
  const e = body && body.error;
  if (e && typeof e === "object") return `${status} ${e.type || "error"}: ${e.message || ""}`;
  return `${status}: ${typeof body === "string" ? body : JSON.stringify(body)}`;
}

async function postJSON(path, payload, signal) {
  const response = await fetch(path, { method: "POST", headers: headers({ Accept: "application/json" }),
                                       body: JSON.stringify(payload), signal });
  const text = await response.text();
  let body;
  try { body = JSON.parse(text); } catch { body = text; }
  if (!response.ok) throw new Error(errorText(response.status, body));
  return body;
}

function parseJSONField(id, what) {
  const raw = $(id).value.trim();
  try { return JSON.parse(raw); } catch (e) { throw new Error(`${what} is not valid JSON: ${e.message}`); }
}

function showError(testid, message) {
  const p = document.querySelector(`[data-testid="${testid}"]`);
  p.textContent = message || "";
  p.hidden = !message;
}

function fillMeta(dl, pairs) {
  dl.replaceChildren();
  for (const [name, value] of pairs) {
    if (value === undefined || value === null) continue;
    dl.append(el("dt", {}, name), el("dd", { "data-testid": `meta-${name}` },
                                      typeof value === "string" ? value : JSON.stringify(value)));
  }
  dl.hidden = false;
}

function usageText(u) {
  return u ? `${u.prompt_tokens} in + ${u.completion_tokens} out = ${u.total_tokens} tokens` : undefined;
}

function typeName(v) {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  if (typeof v === "number") return Number.isInteger(v) ? "integer" : "number";
  return typeof v; // string, boolean, object
}

// --- tabs ---------------------------------------------------------------------------------

function selectTab(name) {
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    const on = tab.id === `tab-${name}`;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`#${tab.getAttribute("aria-controls")}`).hidden = !on;
  }
}

// --- predict ------------------------------------------------------------------------------

async function loadPrograms() {
  const select = $("#predict-program");
  try {
    const response = await fetch("predict/programs", { headers: headers() });
    if (!response.ok) return; // e.g. no key typed yet: the signature form still works
    const { programs } = await response.json();
    select.replaceChildren(...programs.map((p) =>
      el("option", { value: p.name }, `${p.name} — ${p.signature || ""}`)));
  } catch { /* the list is a convenience */ }
}

async function runPredict(event) {
  event.preventDefault();
  showError("predict-error", "");
  const table = $('[data-testid="predict-outputs"]');
  const meta = $('[data-testid="predict-meta"]');
  table.hidden = meta.hidden = true;
  const button = $('[data-testid="predict-run"]');
  button.disabled = true;
  try {
    const payload = { inputs: parseJSONField("#predict-inputs", "Inputs") };
    if (document.querySelector('input[name="predict-kind"]:checked').value === "program") {
      payload.program = $("#predict-program").value;
    } else {
      payload.signature = $("#predict-signature").value;
    }
    const instructions = $("#predict-instructions").value.trim();
    if (instructions) payload.instructions = instructions;
    const started = performance.now();
    const r = await postJSON("predict", payload);
    const tbody = table.tBodies[0];
    tbody.replaceChildren();
    for (const [field, value] of Object.entries(r.outputs || {})) {
      const row = el("tr", { "data-testid": `output-${field}`, "data-type": typeName(value) });
      row.append(el("th", { scope: "row" }, field),
                 el("td", { class: "value", "data-testid": `output-${field}-value` },
                    typeof value === "string" ? value : JSON.stringify(value)),
                 el("td", { class: "type", "data-testid": `output-${field}-type` }, typeName(value)));
      tbody.append(row);
    }
    table.hidden = false;
    fillMeta(meta, [["model", r.model], ["program", r.program], ["signature", r.signature],
                    ["reasoning", r.reasoning], ["usage", usageText(r.usage)], ["cost_usd", r.cost_usd],
                    ["latency_ms", r.latency_ms], ["round_trip_ms", Math.round(performance.now() - started)]]);
  } catch (e) {
    showError("predict-error", e.message);
  } finally {
    button.disabled = false;
  }
}

// --- evaluate -----------------------------------------------------------------------------

async function runEvaluate(event) {
  event.preventDefault();
  showError("evaluate-error", "");
  const table = $('[data-testid="evaluate-results"]');
  const meta = $('[data-testid="evaluate-meta"]');
  table.hidden = meta.hidden = true;
  const button = $('[data-testid="evaluate-run"]');
  button.disabled = true;
  try {
    const target = $("#evaluate-target").value.trim();
    const payload = { dataset: parseJSONField("#evaluate-dataset", "Dataset") };
    if (target.startsWith("program:")) payload.program = target.slice("program:".length).trim();
    else payload.signature = target;
    const metric = $("#evaluate-metric").value.trim();
    if (metric) payload.metric = metric.startsWith("{") ? parseJSONField("#evaluate-metric", "Metric") : metric;
    if ($("#evaluate-job").checked) payload.job = true;
    const r = await postJSON("evaluate", payload);
    if (r.job_id) await followJob(r, meta); // a large dataset (or a request for one) runs as a job
    else showEvaluation(r);
  } catch (e) {
    showError("evaluate-error", e.message);
  } finally {
    button.disabled = false;
  }
}

// Follows an evaluation job's events: progress as it goes, then its result (the 200's body) or its error.
async function followJob(job, meta) {
  const shown = [["job_id", job.job_id]];
  fillMeta(meta, [...shown, ["status", job.status]]);
  const response = await fetch(`jobs/${encodeURIComponent(job.job_id)}/events`,
                               { headers: headers({ Accept: "text/event-stream" }) });
  if (!response.ok) throw new Error(errorText(response.status, await response.text()));
  let outcome = null;
  await readEvents(response, (event, data) => {
    if (event === "progress") fillMeta(meta, [...shown, ["status", "running"], ["progress", `${data.done}/${data.total}`]]);
    else if (event === "result" || event === "error") outcome = [event, data];
  });
  if (!outcome) throw new Error(`job ${job.job_id}: its event stream ended without a result`);
  const [event, data] = outcome;
  if (event === "error") throw new Error(`job ${job.job_id}: ${errorText("failed", data)}`);
  showEvaluation(data, shown);
}

function showEvaluation(r, extra = []) {
  const table = $('[data-testid="evaluate-results"]');
  const meta = $('[data-testid="evaluate-meta"]');
  const tbody = table.tBodies[0];
  tbody.replaceChildren();
  for (const x of r.results) {
    const row = el("tr", { "data-testid": `evaluate-row-${x.index}`, "data-score": String(x.score) });
    row.append(el("td", {}, String(x.index)), el("td", { class: "value" }, JSON.stringify(x.inputs)),
               el("td", { class: "value" }, JSON.stringify(x.expected)),
               el("td", { class: "value", "data-testid": "evaluate-prediction" },
                  x.prediction === null ? "—" : JSON.stringify(x.prediction)),
               el("td", { "data-testid": "evaluate-score" }, String(x.score)),
               el("td", { class: "error" }, x.error ? `${x.error.type}: ${x.error.message}` : ""));
    tbody.append(row);
  }
  table.hidden = false;
  fillMeta(meta, [...extra, ["score", r.score], ["count", r.count], ["failed", r.failed], ["metric", r.metric],
                  ["model", r.model], ["usage", usageText(r.usage)], ["cost_usd", r.cost_usd],
                  ["latency_ms", r.latency_ms]]);
}

// --- agent --------------------------------------------------------------------------------

let agent = null; // {runId, lastId, done, events: [[event, data, id]], input}
let controller = null; // aborts the stream being read

function saveRun() { sessionStorage.setItem(RUN_STORE, JSON.stringify(agent)); }

function setStatus(text, running) {
  $('[data-testid="agent-status"]').textContent = text;
  $('[data-testid="agent-run"]').disabled = running;
  $('[data-testid="agent-stop"]').disabled = !running;
}

function transcriptItem(kind, label, text, extra = {}) {
  const li = el("li", { class: kind, "data-label": label, "data-testid": `agent-${kind.replace("_", "-")}`,
                        ...extra }, text);
  $('[data-testid="agent-transcript"]').append(li);
  return li;
}

// Appends streamed text (delta or reasoning) to the last item of that kind and step, or starts one.
function appendText(kind, data) {
  const last = $('[data-testid="agent-transcript"]').lastElementChild;
  if (last && last.classList.contains(kind) && last.dataset.step === String(data.step)) {
    last.textContent += data.text;
  } else if (data.text) {
    transcriptItem(kind, kind === "delta" ? `assistant (step ${data.step})` : `reasoning (step ${data.step})`,
                   data.text, { "data-step": String(data.step) });
  }
}

function render(event, data) {
  switch (event) {
    case "run":
      agent.runId = data.run_id;
      $('[data-testid="agent-transcript"]').dataset.runId = data.run_id;
      break;
    case "delta":
    case "reasoning":
      appendText(event, data);
      break;
    case "tool_call":
      transcriptItem("tool_call", "tool call", `${data.name}(${JSON.stringify(data.arguments)})`,
                     { "data-call-id": data.id, "data-name": data.name });
      break;
    case "tool_result":
      transcriptItem(`tool_result${data.ok ? "" : " failed"}`, `tool result (${data.latency_ms} ms)`,
                     `${data.name} → ${JSON.stringify(data.ok ? data.result : data.error)}`,
                     { "data-call-id": data.id, "data-name": data.name, "data-testid": "agent-tool-result" });
      break;
    case "final":
      agent.done = true;
      fillMeta($('[data-testid="agent-meta"]'), [
        ["answer", data.answer], ["stop_reason", data.stop_reason], ["steps", data.steps],
        ["model_calls", data.model_calls], ["model", data.model], ["usage", usageText(data.usage)],
        ["cost_usd", data.cost_usd], ["latency_ms", data.latency_ms]]);
      break;
    case "error":
      agent.done = true;
      transcriptItem("error", "error", `${data.type}: ${data.message}`);
      break;
    default:
      break;
  }
}

function onEvent(event, data, id) {
  const n = Number(id);
  if (id !== null && agent.lastId !== null && n <= agent.lastId) return; // a replayed event already shown
  if (id !== null) agent.lastId = n;
  agent.events.push([event, data]);
  render(event, data);
  saveRun();
}

// Reads a text/event-stream body (EventSource cannot POST, nor send an Authorization header).
async function readEvents(response, handler = onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer = (buffer + value).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message"; let id = null; const lines = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue; // a heartbeat comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let v = colon < 0 ? "" : line.slice(colon + 1);
        if (v.startsWith(" ")) v = v.slice(1);
        if (field === "event") event = v;
        else if (field === "data") lines.push(v);
        else if (field === "id") id = v;
      }
      if (lines.length) handler(event, JSON.parse(lines.join("\n")), id);
    }
  }
}

// Follows a stream (the POST's or a resume's); reconnects with Last-Event-ID if it drops mid-run.
async function follow(open) {
  controller = new AbortController();
  setStatus(agent.runId ? `running ${agent.runId}` : "running", true);
  let attempts = 0;
  try {
    for (;;) {
      const response = await open(controller.signal);
      if (!response.ok) {
        const text = await response.text();
        let body; try { body = JSON.parse(text); } catch { body = text; }
        throw new Error(errorText(response.status, body));
      }
      agent.runId = agent.runId || response.headers.get("x-vgate-run-id");
      saveRun();
      setStatus(`running ${agent.runId}`, true);
      await readEvents(response);
      if (agent.done || attempts++ >= 3) break;
      open = (signal) => resumeRequest(signal); // the connection dropped: pick up after the last event
    }
    setStatus(agent.done ? "done" : "disconnected", false);
  } catch (e) {
    if (e.name === "AbortError") {
      setStatus("stopped", false);
    } else {
      agent.done = true;
      showError("agent-error", e.message);
      setStatus("failed", false);
    }
  } finally {
    saveRun();
    controller = null;
  }
}

function resumeRequest(signal) {
  const h = headers({ Accept: "text/event-stream" });
  delete h["Content-Type"];
  if (agent.lastId !== null) h["Last-Event-ID"] = String(agent.lastId);
  return fetch(`agent/runs/${encodeURIComponent(agent.runId)}/events`, { headers: h, signal });
}

function startAgent(event) {
  event.preventDefault();
  const input = $("#agent-input").value;
  if (!input.trim()) return;
  showError("agent-error", "");
  $('[data-testid="agent-transcript"]').replaceChildren();
  $('[data-testid="agent-meta"]').hidden = true;
  agent = { runId: null, lastId: null, done: false, events: [], input };
  transcriptItem("user", "you", input);
  saveRun();
  const payload = { input, max_steps: Number($("#agent-max-steps").value) || undefined };
  const tools = $("#agent-tools").value.split(",").map((t) => t.trim()).filter(Boolean);
  if (tools.length) payload.tools = tools;
  follow((signal) => fetch("agent", { method: "POST", headers: headers({ Accept: "text/event-stream" }),
                                      body: JSON.stringify(payload), signal }));
}

// Stop: closing the stream cancels the run (the gateway cancels a run its last client left).
function stopAgent() {
  if (!controller) return;
  agent.done = true; // not resumed after a reload
  agent.stopped = true;
  saveRun();
  controller.abort();
}

// After a reload: show what was streamed, then follow the rest of a run that had not finished.
function restoreAgent() {
  let saved;
  try { saved = JSON.parse(sessionStorage.getItem(RUN_STORE) || "null"); } catch { saved = null; }
  if (!saved) return;
  agent = saved;
  selectTab("agent");
  transcriptItem("user", "you", agent.input);
  for (const [event, data] of agent.events) render(event, data);
  if (agent.done || !agent.runId) {
    setStatus(agent.stopped ? "stopped" : agent.done ? "done" : "idle", false);
    return;
  }
  follow((signal) => resumeRequest(signal)).then(() => {
    const status = $('[data-testid="agent-status"]').textContent;
    if (status === "done") $('[data-testid="agent-status"]').dataset.resumed = "true";
  });
}

// --- wiring -------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  const key = $("#api-key");
  key.value = sessionStorage.getItem(KEY_STORE) || "";
  key.addEventListener("change", () => { sessionStorage.setItem(KEY_STORE, key.value.trim()); loadPrograms(); });
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    tab.addEventListener("click", () => selectTab(tab.id.slice("tab-".length)));
  }
  for (const radio of document.querySelectorAll('input[name="predict-kind"]')) {
    radio.addEventListener("change", () => {
      const program = radio.value === "program" && radio.checked;
      $("#predict-program").disabled = !program;
      $("#predict-signature").disabled = program;
    });
  }
  $("#predict-form").addEventListener("submit", runPredict);
  $("#evaluate-form").addEventListener("submit", runEvaluate);
  $("#agent-form").addEventListener("submit", startAgent);
  $("#agent-stop").addEventListener("click", stopAgent);
  loadPrograms();
  restoreAgent();
  document.body.dataset.ready = "true";
});
