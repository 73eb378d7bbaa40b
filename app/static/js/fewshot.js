// The few-shot panel (VMA): draw or load characters, store labelled exemplars in the session's
// memory, then sample new drawings in their style and classify new drawings against them.

import { createSession, del, dropSession, get, post, recallSession, rememberSession, sessionPath } from "./api.js";
import { DrawPad, imageToBase64Png, loadImageFile } from "./drawpad.js";
import { guarded, showNote } from "./status.js";

const $ = (id) => document.getElementById(id);
const pngSrc = (b64) => `data:image/png;base64,${b64}`;
const MEMORY_PAGE = 1000; // exemplars listed at most (the API's page limit)
const SAMPLES = 8;
const TOP_K = 5;
// The page shows the likelihood bound, which a classify request gets only when it asks for samples.
const BOUND_SAMPLES = 4;
const SID_STORE = "memserve.vmaSession";

const state = {
  sid: null,
  exemplars: new Map(), // id -> {id, label, image}: the memory as last listed
  selected: "", // the sample source: "", "label:<name>" or "ex:<id>"
};
let pad = null;

// ------------------------------------------------------------------ session

async function newSession() {
  const s = await createSession("vma", $("vma-model").value.trim());
  await dropSession(state.sid);
  adopt(s);
  return s;
}

/** Makes `s` (a session as the API describes it) the panel's session, with an empty view. */
function adopt(s) {
  state.sid = s.id;
  state.exemplars.clear();
  state.selected = "";
  rememberSession(SID_STORE, s.id);
  $("vma-session").textContent = `session ${s.id.slice(0, 8)}… · ${s.model} · capacity ${s.capacity}`;
  renderMemory();
  renderSampleSources();
  clearChildren($("samples"), "One-shot samples appear here.");
  $("classify-result").hidden = true;
}

/** After a reload of the tab: the session of before, with its memory, if it still exists. */
export async function restoreFewShot() {
  const s = await recallSession(SID_STORE, "vma");
  if (!s) return;
  adopt(s);
  await refreshMemory();
}

// The memory buttons create a session when there is none yet, so a first visit needs one click less.
async function ensureSession() {
  if (!state.sid) await newSession();
  return state.sid;
}

// ------------------------------------------------------------------ memory

function requireLabel() {
  const label = $("vma-label").value.trim();
  if (!label) throw new Error("type a label for the drawing first");
  return label;
}

async function addDrawing() {
  const label = requireLabel();
  if (pad.isEmpty()) throw new Error("draw a character on the pad first");
  const sid = await ensureSession();
  const reply = await post(sessionPath(sid, "/exemplars"), {
    exemplars: [{ image: pad.toBase64Png(), label }],
  });
  pad.clear(); // ready for the next drawing
  await refreshMemory();
  showNote(`added exemplar #${reply.ids[0]} "${label}": ${reply.count} in memory`);
}

/** One file goes onto the pad (to add or classify); several are added to memory at once. */
async function loadFiles(files) {
  if (files.length === 0) return;
  const images = await Promise.all([...files].map(loadImageFile));
  if (images.length === 1) {
    pad.drawImage(images[0]);
    return;
  }
  const label = requireLabel();
  const sid = await ensureSession();
  const exemplars = images.map((img) => ({ image: imageToBase64Png(img), label }));
  const reply = await post(sessionPath(sid, "/exemplars"), { exemplars });
  await refreshMemory();
  showNote(`added ${reply.ids.length} images as "${label}": ${reply.count} in memory`);
}

async function refreshMemory() {
  const page = await get(sessionPath(state.sid, `/exemplars?images=true&limit=${MEMORY_PAGE}`));
  state.exemplars = new Map(page.exemplars.map((e) => [e.id, e]));
  const shown = page.total > page.exemplars.length ? ` — first ${page.exemplars.length} shown` : "";
  $("memory-count").textContent = `(${page.total}${shown})`;
  renderMemory();
  renderSampleSources();
}

async function deleteExemplar(id) {
  await del(sessionPath(state.sid, `/exemplars/${id}`));
  if (state.selected === `ex:${id}`) state.selected = "";
  await refreshMemory();
}

function renderMemory() {
  const grid = $("memory");
  if (state.exemplars.size === 0) {
    clearChildren(grid, "Add a few labelled drawings.");
    $("memory-count").textContent = "(0)";
    return;
  }
  grid.replaceChildren(...[...state.exemplars.values()].map(memoryThumb));
}

function memoryThumb(e) {
  const t = thumb(e.image, `#${e.id} ${e.label}`, `exemplar ${e.id}, label ${e.label}`);
  t.dataset.id = e.id;
  t.classList.toggle("selected", state.selected === `ex:${e.id}`);
  // A click picks this exemplar as the source of the next samples.
  t.addEventListener("click", () => selectSource(`ex:${e.id}`));
  const x = document.createElement("button");
  x.className = "del";
  x.type = "button";
  x.title = "remove from memory";
  x.textContent = "×";
  x.addEventListener("click", (ev) => {
    ev.stopPropagation(); // not a selection
    guarded("Remove exemplar", () => deleteExemplar(e.id))();
  });
  t.append(x);
  return t;
}

// ------------------------------------------------------------------ samples

function selectSource(value) {
  state.selected = value;
  $("sample-source").value = value;
  for (const t of $("memory").querySelectorAll(".thumb")) {
    t.classList.toggle("selected", value === `ex:${t.dataset.id}`);
  }
}

/** The sample sources: the whole memory, each label, each exemplar. */
function renderSampleSources() {
  const counts = new Map();
  for (const e of state.exemplars.values()) counts.set(e.label, (counts.get(e.label) || 0) + 1);
  const options = [option("", "whole memory")];
  for (const [label, n] of counts) options.push(option(`label:${label}`, `label "${label}" (${n})`));
  for (const e of state.exemplars.values()) options.push(option(`ex:${e.id}`, `exemplar #${e.id} (${e.label})`));
  const select = $("sample-source");
  select.replaceChildren(...options);
  // Keep the choice while it still exists; a deleted exemplar falls back to the whole memory.
  if (![...select.options].some((o) => o.value === state.selected)) state.selected = "";
  select.value = state.selected;
}

function sampleRequest() {
  const body = { n: SAMPLES };
  const [kind, value] = splitSource(state.selected);
  if (kind === "label") body.label = value;
  if (kind === "ex") body.exemplar_id = Number(value);
  const temperature = $("sample-temperature").value;
  if (temperature !== "") body.temperature = Number(temperature);
  const anchor = $("sample-anchor").value;
  if (anchor !== "") body.anchor = Number(anchor);
  return body;
}

function splitSource(source) {
  const i = source.indexOf(":");
  return i < 0 ? ["", ""] : [source.slice(0, i), source.slice(i + 1)];
}

async function drawSamples() {
  const sid = await ensureSession();
  const reply = await post(sessionPath(sid, "/samples"), sampleRequest());
  $("samples").replaceChildren(
    ...reply.samples.map((s) => thumb(s.image, `${s.label} ← #${s.exemplar_id}`, `sample of exemplar ${s.exemplar_id}`)),
  );
}

// ------------------------------------------------------------------ classify

async function classify() {
  if (pad.isEmpty()) throw new Error("draw a character on the pad first");
  const sid = await ensureSession();
  const reply = await post(sessionPath(sid, "/classify"), {
    images: [{ image: pad.toBase64Png() }],
    top_k: TOP_K,
    samples: BOUND_SAMPLES,
  });
  renderClassification(reply.results[0]);
}

function renderClassification(r) {
  const scores = Object.entries(r.scores).sort((a, b) => b[1] - a[1]);
  $("scores").replaceChildren(...scores.map(([label, p]) => scoreBar(label, p, label === r.label)));
  $("kl").textContent = r.kl_nats.toFixed(2);
  $("loglik").textContent = r.log_likelihood_nats === null ? "–" : r.log_likelihood_nats.toFixed(1);
  renderNovelty(r.novel);
  $("top").replaceChildren(...r.top.map(topThumb));
  $("classify-result").hidden = false;
}

function scoreBar(label, p, best) {
  const row = document.createElement("div");
  row.className = best ? "bar best" : "bar";
  const name = span("name", label);
  name.title = label;
  const track = span("track", "");
  const fill = span("fill", "");
  fill.style.width = `${(100 * p).toFixed(1)}%`; // CSSOM, allowed by the page's style-src 'self'
  track.append(fill);
  row.append(name, track, span("val", `${(100 * p).toFixed(1)} %`));
  return row;
}

function renderNovelty(novel) {
  const badge = $("novel");
  badge.hidden = novel === null; // the model has no calibrated threshold
  badge.className = novel ? "badge novel" : "badge known";
  badge.textContent = novel ? "novel" : "familiar";
}

/** A top address as the thumbnail of its exemplar (listed earlier), with q(a|x). */
function topThumb(a) {
  const e = state.exemplars.get(a.exemplar_id);
  return thumb(e ? e.image : null, `#${a.exemplar_id} ${(100 * a.p).toFixed(0)}%`, `exemplar ${a.exemplar_id} (${a.label})`);
}

// ------------------------------------------------------------------ small DOM helpers

function thumb(b64, caption, alt) {
  const t = document.createElement("div");
  t.className = "thumb";
  if (b64) {
    const img = document.createElement("img");
    img.src = pngSrc(b64);
    img.alt = alt;
    t.append(img);
  }
  t.append(span("cap", caption));
  t.title = caption;
  return t;
}

function span(cls, text) {
  const s = document.createElement("span");
  s.className = cls;
  s.textContent = text;
  return s;
}

function option(value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  return o;
}

function clearChildren(el, emptyText) {
  const p = document.createElement("p");
  p.className = "empty";
  p.textContent = emptyText;
  el.replaceChildren(p);
}

// ------------------------------------------------------------------ wiring

export function initFewShot() {
  pad = new DrawPad($("pad"));
  const on = (id, where, action) => {
    const b = $(id);
    b.addEventListener("click", guarded(where, action, b));
  };
  on("vma-new", "New VMA session", newSession);
  on("vma-add", "Add to memory", addDrawing);
  on("vma-samples", "Samples", drawSamples);
  on("vma-classify", "Classify", classify);
  $("pad-clear").addEventListener("click", () => pad.clear());
  $("sample-source").addEventListener("change", (e) => selectSource(e.target.value));
  const file = $("pad-file");
  file.addEventListener("change", guarded("Load image", async () => {
    try {
      await loadFiles(file.files);
    } finally {
      file.value = ""; // choosing the same file again fires another change
    }
  }));
}
