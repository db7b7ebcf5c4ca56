// An rnnlm model exported by `python export.py format=web`, sampled in this page by onnxruntime-web
// (WebAssembly): the tokenizer, the decoding loop and the page. It reads only the files beside it
// (rnnlm.json, model.onnx, ort/); nothing runs on a server.
import * as ort from "./ort/ort.wasm.bundle.min.mjs";

ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
ort.env.wasm.numThreads = 1; // threads need a cross-origin-isolated page, which static hosts rarely serve

const $ = (id) => document.getElementById(id);
const page = { model: null, running: false, stop: false };
let LIMITS = {};  // each option's bounds, as sample.py's (rnnlm.json's "limits")

// ---- the tokenizer: rnnlm's char and word tokenizers (rnnlm.data.tokenizers) ------------------
// Python's \w is a letter, a digit or "_" in any script; the two word splits rnnlm writes.
const W = "[\\p{L}\\p{N}_]";
const WORD_SPLITS = {
  " ?\\w+| ?[^\\w\\s]|\\s+(?!\\S)|\\s+": ` ?${W}+| ?[^\\p{L}\\p{N}_\\s]|\\s+(?!\\S)|\\s+`,
  "\\w+|[^\\w\\s]|\\s+": `${W}+|[^\\p{L}\\p{N}_\\s]|\\s+`,
};

class Tokenizer {
  constructor(state) {
    this.kind = state.kind;
    this.vocab = state.vocab;
    this.start = state.start ?? "\n\n";
    this.index = new Map(this.vocab.map((token, id) => [token, id]));
    if (this.kind === "word") {
      const source = WORD_SPLITS[state.pattern ?? "\\w+|[^\\w\\s]|\\s+"];
      if (!source) throw new Error(`this page does not know the word split ${state.pattern}`);
      this.regex = new RegExp(source, "gu");
    }
  }
  split(text) { return this.kind === "char" ? Array.from(text) : Array.from(text.matchAll(this.regex), (m) => m[0]); }
  encode(text) { return this.split(text).map((piece) => this.index.get(piece) ?? 0); }
  decode(ids) { return ids.map((id) => this.vocab[id]).join(""); }
  unknown(text) { return [...new Set(this.split(text).filter((piece) => !this.index.has(piece)))]; }
  // Tokenizer.encode_context: trailing whitespace encoded as if a word followed it.
  encodeContext(text) {
    const body = text.trimEnd();
    const tail = text.slice(body.length);
    if (!tail) return this.encode(text);
    const probe = this.encode(tail + "x");
    while (probe.length && !tail.startsWith(this.decode(probe))) probe.pop();
    return [...this.encode(body), ...probe, ...this.encode(tail.slice(this.decode(probe).length))];
  }
  // generation.prompt.encode_prompt: an empty prompt starts a document.
  promptIds(prompt) {
    if (!prompt) {
      const ids = this.encodeContext(this.start).filter((id) => id !== 0);
      return ids.length ? ids : [this.vocab.length > 1 ? 1 : 0];
    }
    return this.encodeContext(prompt);
  }
}

// ---- the model: rnnlm.json and model.onnx --------------------------------------------------
async function loadModel() {
  const response = await fetch("rnnlm.json");
  if (!response.ok) throw new Error(`rnnlm.json could not be read (${response.status})`);
  const meta = await response.json();
  const session = await ort.InferenceSession.create("model.onnx", { executionProviders: ["wasm"] });
  return { meta, session, tokenizer: new Tokenizer(meta.tokenizer) };
}

function zeroState(meta) {
  const size = meta.num_layers * meta.hidden_size;
  return Object.fromEntries(meta.states.map((name) => [name, new ort.Tensor("float32", new Float32Array(size), [meta.num_layers, 1, meta.hidden_size])]));
}

// tokens -> the last step's logits and the new state (the graph: tokens [1, T] and state in, logits [1, T, V] out)
async function run(model, ids, state) {
  const tokens = new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]);
  const out = await model.session.run({ tokens, ...state });
  const vocab = model.meta.vocab_size;
  const logits = out.logits.data.slice((ids.length - 1) * vocab, ids.length * vocab);
  return { logits, state: Object.fromEntries(model.meta.states.map((name) => [name, out[`${name}_out`]])) };
}

// ---- choosing the next token: generation.decoding's strategies --------------------------------
function softmax(values) {
  let max = -Infinity;
  for (const v of values) if (v > max) max = v;
  const out = new Float64Array(values.length);
  let sum = 0;
  for (let i = 0; i < values.length; i++) { out[i] = values[i] === -Infinity ? 0 : Math.exp(values[i] - max); sum += out[i]; }
  for (let i = 0; i < out.length; i++) out[i] /= sum;
  return out;
}

function argmax(values) {  // the first of equal maxima, as torch.argmax
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

function samplingProbs(logits, settings) {
  const scaled = Array.from(logits, (v) => v / settings.temperature);
  const order = scaled.map((_, i) => i).sort((a, b) => scaled[b] - scaled[a]);
  if (settings.top_k != null && settings.top_k < scaled.length) {
    for (const i of order.slice(settings.top_k)) scaled[i] = -Infinity;
  }
  if (settings.top_p != null && settings.top_p < 1) {
    const probs = softmax(scaled);
    let mass = 0;
    for (const i of order) {  // keep the most likely tokens until their mass reaches top_p
      if (mass >= settings.top_p && scaled[i] !== -Infinity) scaled[i] = -Infinity;
      mass += probs[i];
    }
  }
  return softmax(scaled);
}

function mulberry32(seed) {  // a small seeded generator: the same seed, the same text in this page
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function draw(probs, random) {
  let r = random(), last = 0;
  for (let i = 0; i < probs.length; i++) {
    if (probs[i] > 0) { last = i; r -= probs[i]; if (r < 0) return i; }
  }
  return last;
}

function topFive(probs) {
  return Array.from(probs.keys()).sort((a, b) => probs[b] - probs[a]).slice(0, 5);
}

// ---- the page ------------------------------------------------------------------------------
const confidence = (p) => `hsl(${Math.round(120 * p)}, 75%, ${Math.round(82 + 10 * p)}%)`;
const shown = (piece) => JSON.stringify(piece);

function settingsFromForm() {
  const number = (id, integer) => {
    const raw = $(id).value.trim();
    if (raw === "") return null;
    const value = Number(raw);
    const [low, high] = LIMITS[id];
    const tooLow = id === "top_p" ? value <= low : value < low;
    if (!Number.isFinite(value) || tooLow || value > high || (integer && !Number.isInteger(value))) {
      throw new Error(`${id}=${raw} is not allowed: it must be ${integer ? "an integer" : "a number"} ${id === "top_p" ? "above" : "from"} ${low} to ${high}`);
    }
    return value;
  };
  const strategy = $("strategy").value;
  return {
    prompt: $("prompt").value, strategy, temperature: number("temperature") ?? 1, top_k: number("top_k", true),
    top_p: number("top_p"), length: number("length", true) ?? 500, seed: number("seed", true),
  };
}

async function generate() {
  if (page.running || !page.model) return;
  $("error").hidden = true;
  const status = $("status");
  delete status.dataset.done;
  let settings;
  try { settings = settingsFromForm(); } catch (err) { showError(err.message); return; }
  const { tokenizer, meta } = page.model;
  const greedy = settings.strategy === "greedy" || settings.temperature === 0;
  const seed = settings.seed ?? Math.floor(Math.random() * 2 ** 31);
  const random = mulberry32(seed);
  const output = $("output");
  const promptSpan = Object.assign(document.createElement("span"), { className: "prompt", textContent: settings.prompt });
  output.replaceChildren(promptSpan);
  const missing = settings.prompt ? tokenizer.unknown(settings.prompt.trimEnd() || settings.prompt) : [];
  if (missing.length) showError(`the prompt has pieces not in the vocabulary, read as <unk>: ${missing.map(shown).join(" ")}`);
  page.running = true;
  page.stop = false;
  $("generate").disabled = true;
  $("stop").disabled = false;
  status.textContent = "generating…";
  const started = performance.now();
  let chars = 0, count = 0;
  try {
    let { logits, state } = await run(page.model, tokenizer.promptIds(settings.prompt), zeroState(meta));
    for (; count < settings.length && !page.stop; count++) {
      const raw = softmax(logits);
      const token = greedy ? argmax(logits) : draw(samplingProbs(logits, settings), random);
      const span = document.createElement("span");
      span.textContent = tokenizer.vocab[token];
      span.style.backgroundColor = confidence(raw[token]);
      span.title = `p = ${raw[token].toFixed(3)}\n` + topFive(raw).map((id) => `${shown(tokenizer.vocab[id])} ${raw[id].toFixed(3)}`).join("\n");
      output.append(span);
      chars += Array.from(tokenizer.vocab[token]).length;  // characters, not UTF-16 units
      ({ logits, state } = await run(page.model, [token], state));
    }
    const seconds = (performance.now() - started) / 1000;
    status.dataset.charsPerS = (chars / seconds).toFixed(0);
    status.textContent = `${page.stop ? "stopped" : "done"}: ${count} tokens, ${chars} characters in ${seconds.toFixed(2)} s ` +
      `(${status.dataset.charsPerS} characters/s) · seed ${seed}`;
    status.dataset.done = "1";
  } catch (err) {
    showError(`generation failed: ${err.message}`);
  } finally {
    page.running = false;
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function fillFromUrl() {  // index.html?prompt=ROMEO:&strategy=greedy&length=200&run=1
  const params = new URLSearchParams(location.search);
  for (const id of ["prompt", "strategy", "temperature", "top_k", "top_p", "length", "seed"]) {
    if (params.has(id)) $(id).value = params.get(id);
  }
  return params.get("run") === "1";
}

async function main() {
  const autorun = fillFromUrl();
  try {
    page.model = await loadModel();
  } catch (err) {
    $("about").textContent = "";
    showError(`the model did not load (${err.message}); serve this directory over HTTP (python -m http.server) rather than opening the file`);
    return;
  }
  const meta = page.model.meta;
  LIMITS = meta.limits;
  $("about").textContent = `${meta.cell.toUpperCase()} ${meta.num_layers} x ${meta.hidden_size}, ${meta.tokenizer.kind} vocabulary of ` +
    `${meta.vocab_size.toLocaleString("en")}${meta.quantized ? `, ${meta.quantized}` : ""}, step ${meta.global_step}`;
  $("generate").disabled = false;
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => { page.stop = true; });
  if (autorun) await generate();
}

main();
