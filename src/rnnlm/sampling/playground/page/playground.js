// The rnnlm playground: talks to the JSON API of rnnlm.sampling.playground.app; no libraries, no build step.
"use strict";

const PASSAGE = `LYSANDER:
How now, my love! why is your cheek so pale?
How chance the roses there do fade so fast?

HERMIA:
Belike for want of rain, which I could well
Beteem them from the tempest of my eyes.

LYSANDER:
Ay me! for aught that I could ever read,
Could ever hear by tale or history,
The course of true love never did run smooth;
But, either it was different in blood,--

HERMIA:
O cross! too high to be enthrall'd to low.
[Aside] "Too old," he said, "to be engaged to young."
`;

const $ = (id) => document.getElementById(id);
const state = { ckpt: null, model: null, defaults: {}, limits: {}, views: {}, pinned: null, controller: null };

// ---- talking to the server -------------------------------------------------------------
async function api(path, body) {
  const response = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({ error: `the server answered ${response.status} without JSON` }));
  if (!response.ok) throw new Error(data.error || `the server answered ${response.status}`);
  return data;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function guarded(action) {
  showError("");
  try { await action(); } catch (err) { if (err.name !== "AbortError") showError(err.message); }
}

// ---- checkpoints -----------------------------------------------------------------------
function checkpointLabel(entry) {
  const bpc = entry.val_bpc == null ? "no val bits/char" : `val ${entry.val_bpc.toFixed(3)} bits/char`;
  return `${entry.label} — step ${entry.step}, ${bpc}`;
}

async function loadCheckpoints() {
  const data = await api("/api/checkpoints");
  state.defaults = data.defaults;
  state.limits = data.limits;
  const select = $("ckpt");
  const previous = state.ckpt;
  select.replaceChildren(...data.checkpoints.map((entry) => new Option(checkpointLabel(entry), entry.id)));
  if (!data.checkpoints.length) throw new Error(`no checkpoint under ${data.root}/: train one with make train`);
  select.value = data.checkpoints.some((e) => e.id === previous) ? previous : data.checkpoints[0].id;
  if (select.value !== previous) await loadModel();
}

async function loadModel() {
  state.ckpt = $("ckpt").value;
  const info = await api("/api/model", { ckpt: state.ckpt });
  state.model = info;
  $("model-info").textContent = `${info.cell.toUpperCase()} ${info.layers}×${info.hidden_size}, ` +
    `${info.tokenizer} tokenizer, ${info.vocab_size} tokens, step ${info.step}`;
  $("layer").replaceChildren(...Array.from({ length: info.layers }, (_, i) => new Option(`${i}`, `${i}`)));
  $("state").replaceChildren(...info.states.map((s) => new Option(s === "cell" ? "cell state" : "hidden state", s)));
  $("unit").max = info.hidden_size - 1;
}

function applyDefaults() {
  const d = state.defaults;
  $("prompt").value = d.prompt ?? "";
  $("strategy").value = ["sample", "greedy", "beam"].includes(d.strategy) ? d.strategy : "sample";
  $("temperature").value = d.temperature ?? 0.8;
  $("top_k").value = d.top_k ?? "";
  $("top_p").value = d.top_p ?? "";
  $("length").value = Math.min(d.length ?? 500, state.limits.length ?? 5000);
  $("seed").value = "";
  $("stop_at").value = d.stop ?? "";
  $("num_samples").value = Math.min(d.num_samples ?? 1, state.limits.num_samples ?? 8);
  $("cell-text").value = PASSAGE;
  $("score-text").value = PASSAGE;
}

// ---- drawing tokens --------------------------------------------------------------------
const fixed = (v, digits) => (v == null ? "–" : v.toFixed(digits));  // the server sends NaN as null
const shown = (piece) => piece.replace(/\n/g, "⏎").replace(/ /g, "␣").replace(/\t/g, "⇥") || "∅";
const confidence = (p) => `hsl(${Math.round(120 * p)}, 75%, ${Math.round(82 + 10 * p)}%)`;
const surprisal = (bits) => `hsl(0, 85%, ${(97 - 35 * Math.min(bits, 8) / 8).toFixed(1)}%)`;
function activation(x) {
  const v = Math.max(-1, Math.min(1, x));
  return `hsl(${v >= 0 ? 10 : 220}, 85%, ${(100 - 38 * Math.abs(v)).toFixed(1)}%)`;
}

// A view: a container of token spans, each data-i indexing view.tokens; one listener per container.
function makeView(name, container, describe) {
  const view = { name, container, tokens: [], describe, vocabulary: state.model ? state.model.vocabulary : [] };
  state.views[name] = view;
  return view;
}

function tokenSpan(view, token, colour) {
  const span = document.createElement("span");
  span.textContent = token.piece;
  span.dataset.i = view.tokens.length;
  span.dataset.view = view.name;
  if (colour) span.style.backgroundColor = colour;
  view.tokens.push(token);
  return span;
}

function candidatesTable(title, top, chosenId, vocabulary) {
  const [ids, probs] = top;
  const rows = ids.map((id, k) => {
    const tr = document.createElement("tr");
    if (id === chosenId) tr.className = "chosen";
    const tok = document.createElement("td");
    tok.className = "tok";
    tok.textContent = shown(vocabulary[id] ?? `#${id}`);
    const bar = document.createElement("td");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(100 * (probs[k] ?? 0)).toFixed(1)}%`;
    bar.append(fill);
    const value = document.createElement("td");
    value.textContent = fixed(probs[k], 3);
    tr.append(tok, bar, value);
    return tr;
  });
  const h = document.createElement("h3");
  h.textContent = title;
  const table = document.createElement("table");
  table.className = "top5";
  table.append(...rows);
  return [h, table];
}

function showDetails(view, index) {
  const token = view.tokens[index];
  if (!token) return;
  const aside = $("details");
  const head = document.createElement("p");
  head.className = "token-head";
  head.textContent = `“${shown(token.piece)}” `;
  aside.replaceChildren(head, ...view.describe(token, head, view.vocabulary));
}

function bindDetails(container) {
  const handler = (event) => {
    const span = event.target.closest("span[data-i]");
    if (!span || (event.type === "mouseover" && state.pinned)) return;
    if (event.type === "click") {
      if (state.pinned) state.pinned.classList.remove("pinned");
      state.pinned = state.pinned === span ? null : span;
      if (state.pinned) span.classList.add("pinned");
    }
    showDetails(state.views[span.dataset.view], Number(span.dataset.i));
  };
  container.addEventListener("mouseover", handler);
  container.addEventListener("click", handler);
}

// ---- generate --------------------------------------------------------------------------
function settingsText(s) {
  const parts = [`T=${s.temperature}`];
  if (s.top_k != null) parts.push(`top-k ${s.top_k}`);
  if (s.top_p != null) parts.push(`top-p ${s.top_p}`);
  return parts.join(", ");
}

function numberOrNull(id, integer) {
  const raw = $(id).value.trim();
  if (raw === "") return null;
  return integer ? Number.parseInt(raw, 10) : Number(raw);
}

function generationRequest() {
  return {
    ckpt: state.ckpt, prompt: $("prompt").value, strategy: $("strategy").value,
    temperature: numberOrNull("temperature") ?? 1, top_k: numberOrNull("top_k", true), top_p: numberOrNull("top_p"),
    length: numberOrNull("length", true) ?? 0, seed: numberOrNull("seed", true),
    num_samples: numberOrNull("num_samples", true) ?? 1, stop: $("stop_at").value,
    beam_width: Math.min(Math.max(state.defaults.beam_width ?? 5, numberOrNull("num_samples", true) ?? 1),
      state.limits.beam_width ?? 16),
  };
}

function describeGenerated(settings) {
  return (token, head, vocabulary) => {
    const greedy = settings.strategy === "greedy" || settings.temperature === 0;
    head.textContent += `p = ${fixed(token.p, 3)} at T=1` +
      (token.q != null && settings.strategy !== "beam" ? `, ${fixed(token.q, 3)} under ${greedy ? "greedy decoding" : settingsText(settings)}` : "");
    const parts = candidatesTable("the model (T=1, raw)", token.top, token.id, vocabulary);
    if (token.atop) parts.push(...candidatesTable(greedy ? "greedy: always the top one" : `sampled from (${settingsText(settings)})`, token.atop, token.id, vocabulary));
    else parts.push(Object.assign(document.createElement("p"), { className: "muted", textContent: "beam search ranks whole continuations by their probability at T=1" }));
    return parts;
  };
}

function startSamples(start, settings) {
  const box = $("samples");
  box.replaceChildren();
  state.samples = [];
  for (let i = 0; i < start.num_samples; i++) {
    const div = document.createElement("div");
    div.className = "sample";
    div.dataset.sample = i;
    const head = document.createElement("div");
    head.className = "sample-head";
    head.textContent = `sample ${i + 1}`;
    const prompt = document.createElement("span");
    prompt.className = "prompt";
    prompt.textContent = start.prompt;
    const body = document.createElement("span");
    body.className = "generated";
    div.append(head, prompt, body);
    box.append(div);
    state.samples.push({ body, view: makeView(`sample${i}`, body, describeGenerated(settings)) });
  }
}

function colourOf(token) {
  const p = $("colour-by").value === "q" && token.q != null ? token.q : token.p;
  return confidence(p);
}

function addStep(event, fragments) {
  event.ids.forEach((id, i) => {
    if (id == null) return;  // this stream reached the stop string
    const token = { id, piece: event.pieces[i], p: event.p[i], q: event.q[i],
      top: [event.top[0][i], event.top[1][i]], atop: [event.atop[0][i], event.atop[1][i]] };
    fragments[i].append(tokenSpan(state.samples[i].view, token, colourOf(token)));
  });
}

function addBeam(event) {
  const sample = state.samples[event.stream];
  if (!sample) return;
  const fragment = document.createDocumentFragment();
  event.ids.forEach((id, k) => {
    const token = { id, piece: event.pieces[k], p: event.p[k], q: null, top: [event.top[0][k], event.top[1][k]] };
    fragment.append(tokenSpan(sample.view, token, colourOf(token)));
  });
  sample.body.append(fragment);
}

async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = chunk.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data) onEvent(JSON.parse(data));
    }
  }
}

async function generate() {
  if (state.controller) return;  // one generation at a time per page (Ctrl+Enter while one runs)
  const request = generationRequest();
  const status = $("gen-status");
  delete status.dataset.done;
  delete status.dataset.firstMs;
  delete status.dataset.charsPerS;
  const controller = new AbortController();
  state.controller = controller;
  $("generate").disabled = true;
  $("stop").disabled = false;
  $("gen-status").textContent = "generating…";
  const pressed = performance.now();
  let firstPaint = null, lastPaint = null, drawnChars = 0;
  try {
    const response = await fetch("/api/generate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request), signal: controller.signal,
    });
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      throw new Error(data.error || `the server answered ${response.status}`);
    }
    await readEvents(response, (message) => {
      if (message.type === "start") {
        startSamples(message, request);
        if (message.unknown.length) showError(`the prompt has pieces not in the vocabulary, read as <unk>: ${message.unknown.join(" ")}`);
        return;
      }
      const fragments = state.samples.map(() => document.createDocumentFragment());  // one insertion per message
      let done = null;
      for (const event of message.events) {
        if (event.type === "step") addStep(event, fragments);
        else if (event.type === "beam") addBeam(event);
        else if (event.type === "error") throw new Error(event.error);
        else if (event.type === "done") done = event;
        if (event.pieces) drawnChars += event.pieces.reduce((n, piece) => n + piece.length, 0);
      }
      fragments.forEach((fragment, i) => state.samples[i].body.append(fragment));
      if (message.events.some((event) => event.pieces)) {
        lastPaint = performance.now() - pressed;
        if (firstPaint == null) {
          firstPaint = lastPaint;
          $("gen-status").dataset.firstMs = firstPaint.toFixed(1);
        }
      }
      if (done) {
        const status = $("gen-status");
        const first = firstPaint == null ? "" : `, first character after ${Math.round(firstPaint)} ms`;
        if (lastPaint > firstPaint) status.dataset.charsPerS = (1000 * drawnChars / (lastPaint - firstPaint)).toFixed(0);
        status.textContent = `${done.stopped ? "stopped" : "done"}: ${done.tokens} tokens in ${done.seconds.toFixed(2)} s` +
          ` (${done.tokens_per_s ?? "–"} tokens/s)${first} · seed ${done.seed} · nll ${done.nll_per_token.map((v) => fixed(v, 3)).join(", ")} nats/token`;
        status.dataset.done = "1";
      }
    });
  } catch (err) {
    if (err.name === "AbortError") $("gen-status").textContent = "stopped";
    else throw err;
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
    state.controller = null;
  }
}

// ---- score -----------------------------------------------------------------------------
function describeScored(token, head, vocabulary) {
  if (token.p == null) {
    head.textContent += "the first token: nothing before it, so it is not scored";
    return [];
  }
  head.textContent += `p = ${fixed(token.p, 4)}, surprisal ${(-Math.log2(Math.max(token.p, 1e-12))).toFixed(2)} bits`;
  const parts = candidatesTable("what the model expected (T=1)", token.top, token.id, vocabulary);
  if (token.atop) {
    head.textContent += `; ${fixed(token.q, 4)} under ${settingsText(token.settings)}`;
    parts.push(...candidatesTable(`sampling would draw from (${settingsText(token.settings)})`, token.atop, token.id, vocabulary));
  }
  return parts;
}

function drawTokens(view, tokens, colour, vocabulary) {
  view.tokens = [];
  view.vocabulary = vocabulary;  // of the model these tokens came from
  const fragment = document.createDocumentFragment();
  tokens.forEach((token) => fragment.append(tokenSpan(view, token, colour(token))));
  view.container.replaceChildren(fragment);
}

async function score() {
  const text = $("score-text").value;
  const started = performance.now();
  const { temperature, top_k, top_p } = generationRequest();  // the Generate tab's sampling settings
  const { vocabulary } = state.model;  // the model asked, whatever is picked meanwhile
  const result = await api("/api/score", { ckpt: state.ckpt, text, temperature, top_k, top_p });
  const received = performance.now();
  const settings = { temperature, top_k, top_p };
  const tokens = result.pieces.map((piece, i) => ({
    piece, id: result.ids[i], p: i === 0 ? null : result.p[i - 1], top: i === 0 ? null : [result.top[0][i - 1], result.top[1][i - 1]],
    q: i === 0 || !result.q ? null : result.q[i - 1], settings,
    atop: i === 0 || !result.atop ? null : [result.atop[0][i - 1], result.atop[1][i - 1]],
  }));
  drawTokens(state.views.score, tokens, (t) => (t.p == null ? "" : surprisal(-Math.log2(Math.max(t.p, 1e-12)))), vocabulary);
  const f = result.figures;
  $("score-figures").textContent = `score: loss ${fixed(f.loss, 4)} nats/token | perplexity ${fixed(f.ppl, 3)} | ` +
    `${fixed(f.bpc, 4)} bits/char, ${fixed(f.bpt, 4)} bits/token | accuracy ${fixed(f.acc, 3)} over ${f.tokens} tokens`;
  $("score-figures").dataset.loss = f.loss;
  await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));  // until drawn
  const drawn = performance.now();
  const timing = $("score-timing");
  timing.textContent = `${text.length.toLocaleString()} characters: ${Math.round(received - started)} ms to score ` +
    `(${Math.round(result.server_ms)} ms in the model), ${Math.round(drawn - received)} ms to draw`;
  timing.dataset.totalMs = (drawn - started).toFixed(1);
  if (result.unknown.length) showError(`the text has pieces not in the vocabulary, scored as <unk>: ${result.unknown.join(" ")}`);
}

// ---- inside the model ------------------------------------------------------------------
function cellRequest() {
  return { ckpt: state.ckpt, text: $("cell-text").value, layer: Number($("layer").value), state: $("state").value,
    unit: numberOrNull("unit", true) ?? 0 };
}

async function showCell() {
  const request = cellRequest();
  const { vocabulary } = state.model;
  const result = await api("/api/cells", request);
  const scale = result.max_abs || 1;
  const tokens = result.pieces.map((piece, i) => ({ piece, value: result.values[i] }));
  drawTokens(state.views.cell, tokens, (t) => (t.value == null ? "" : activation(t.value / scale)), vocabulary);
  const finiteValues = result.values.filter((v) => v != null);
  const lo = Math.min(...finiteValues), hi = Math.max(...finiteValues);
  $("cell-caption").textContent = `layer ${result.layer} · ${result.state} state · unit ${result.unit}: ` +
    `from ${lo.toFixed(3)} to ${hi.toFixed(3)} over ${result.values.length} tokens`;
}

async function findCells() {
  const result = await api("/api/find", { ckpt: state.ckpt, text: $("cell-text").value });
  const box = $("find-results");
  box.replaceChildren();
  for (const [key, found] of Object.entries(result.properties)) {
    const h = document.createElement("h3");
    h.textContent = `${found.description}`;
    box.append(h);
    if (!found.units.length) {
      box.append(Object.assign(document.createElement("p"), { className: "muted", textContent: found.note }));
      continue;
    }
    for (const u of found.units) {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.property = key;
      button.textContent = `layer ${u.layer} ${u.state} ${u.unit}: r = ${u.corr >= 0 ? "+" : ""}${u.corr.toFixed(2)}`;
      button.addEventListener("click", () => guarded(async () => {
        $("layer").value = `${u.layer}`;
        $("state").value = u.state;
        $("unit").value = u.unit;
        await showCell();
      }));
      box.append(button);
    }
  }
}

// ---- wiring ----------------------------------------------------------------------------
function selectTab(name) {
  document.querySelectorAll(".tab").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll(".pane").forEach((p) => { p.hidden = p.id !== `tab-${name}`; });
}

function init() {
  makeView("score", $("score-view"), describeScored);
  makeView("cell", $("cell-view"), (token, head) => { head.textContent += `activation ${fixed(token.value, 4)}`; return []; });
  [$("samples"), $("score-view"), $("cell-view")].forEach(bindDetails);
  document.querySelectorAll(".tab").forEach((b) => b.addEventListener("click", () => selectTab(b.dataset.tab)));
  $("ckpt").addEventListener("change", () => guarded(loadModel));
  $("refresh").addEventListener("click", () => guarded(loadCheckpoints));
  $("generate").addEventListener("click", () => guarded(generate));
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) guarded(generate); });
  $("colour-by").addEventListener("change", () => {
    for (const sample of state.samples || []) {
      sample.body.querySelectorAll("span[data-i]").forEach((span) => { span.style.backgroundColor = colourOf(sample.view.tokens[span.dataset.i]); });
    }
  });
  $("score").addEventListener("click", () => guarded(score));
  $("show-cell").addEventListener("click", () => guarded(showCell));
  $("find-cells").addEventListener("click", () => guarded(findCells));
  guarded(async () => {
    await loadCheckpoints();
    applyDefaults();
    document.body.dataset.ready = "1";
  });
}

init();
