// The streaming panel (MemNet): pick or load a series, stream it into a session a chunk at a time,
// and draw each reply as it comes: predictions, interval bands, forecast, anomalies.

import { ApiError, createSession, dropSession, post, recallSession, rememberSession, sessionPath } from "./api.js";
import { StreamPlot } from "./plot.js";
import { demoSeries, lengthOf, parseCsv, pointAt } from "./series.js";
import { guarded, showError, showNote } from "./status.js";

const $ = (id) => document.getElementById(id);
const LEVELS = [80, 95];
const RETRIES = 3; // for 429 / 503 / 504, which docs/api.md says to retry with the same seq
const MAX_LISTED = 200; // anomalies kept in the list below the plot
const SID_STORE = "memserve.memnetSession";

const state = {
  sid: null,
  dim: 1, // the model's input dimension
  seq: 0, // the session's step: the seq of the next chunk
  levels: true, // false once the model said it has no intervals
  series: null,
  cursor: 0, // next point of the series to send
  seqBase: 0, // the session's seq of the series' point 0, to place anomalies on the plot
  anomalies: 0,
  running: false,
  loop: null, // the promise of the streaming loop while it runs
};
let plot = null;

// ------------------------------------------------------------------ session and series

async function newSession() {
  await halt();
  const s = await createSession("memnet", $("mn-model").value.trim());
  await dropSession(state.sid);
  adopt(s);
  return s;
}

/** Makes `s` (a session as the API describes it) the panel's session; its stream goes on at its step. */
function adopt(s) {
  Object.assign(state, { sid: s.id, dim: s.input_dim, seq: s.step, levels: true });
  rememberSession(SID_STORE, s.id);
  const dims = state.dim > 1 ? ` · ${state.dim} dimensions (plot: the first)` : "";
  const step = s.step ? ` · resumed at step ${s.step}` : "";
  $("mn-session").textContent = `session ${s.id.slice(0, 8)}… · ${s.model} · memory ${s.capacity}${dims}${step}`;
  restart();
}

/** After a reload of the tab: the session of before, if it still exists (the plot starts empty). */
export async function restoreStream() {
  const s = await recallSession(SID_STORE, "memnet");
  if (s) adopt(s);
}

/** Starts the series again from its first point (the session keeps its memory). */
function restart() {
  state.cursor = 0;
  state.anomalies = 0;
  plot.reset(state.series ? lengthOf(state.series) : 0);
  $("anomaly-list").replaceChildren();
  updateCounters(null);
}

async function useSeries(series) {
  await halt();
  state.series = series;
  const dropped = series.dropped ? ` (${series.dropped} row${series.dropped === 1 ? "" : "s"} without a number skipped)` : "";
  const cols = series.columns.length > 1 ? `, ${series.columns.length} numeric columns` : "";
  $("series-info").textContent = `${series.name}: ${lengthOf(series)} points${cols}${dropped}`;
  restart();
}

async function useCsvText(text, name) {
  await useSeries(parseCsv(text, name));
}

// ------------------------------------------------------------------ streaming

async function startStreaming() {
  if (state.running) return;
  if (!state.series) throw new Error("pick a demo series or load a CSV first");
  if (!state.sid) await newSession();
  if (state.cursor >= lengthOf(state.series)) restart(); // the series again, into the same memory
  state.running = true;
  setRunning(true);
  state.loop = streamLoop().finally(() => {
    state.running = false;
    setRunning(false);
  });
  await state.loop;
}

/** Stops after the chunk in flight; resolves when the loop has ended. */
async function halt() {
  state.running = false;
  if (state.loop) await state.loop.catch(() => {});
}

async function streamLoop() {
  const total = lengthOf(state.series);
  try {
    while (state.running && state.cursor < total) {
      await sendNextChunk();
      await nextFrame(); // one chunk per frame: the plot animates instead of jumping to the end
    }
    if (state.cursor >= total) showNote(`streamed all ${total} points; ${state.anomalies} anomalies`);
  } catch (err) {
    showError("Stream", err);
  }
}

async function sendNextChunk() {
  const size = clampInt($("chunk").value, 1, 256, 5);
  const t0 = state.cursor;
  const end = Math.min(t0 + size, lengthOf(state.series));
  const points = [];
  for (let t = t0; t < end; t++) points.push(pointAt(state.series, t, state.dim));
  if (t0 === 0) state.seqBase = state.seq;
  const started = performance.now();
  const reply = await postChunk(points);
  state.seq = reply.step;
  state.cursor = end;
  plot.addChunk(t0, points.map((p) => p[0]), reply);
  listAnomalies(reply.anomalies || []);
  plot.draw();
  updateCounters(performance.now() - started);
}

function chunkBody(points) {
  const body = {
    values: state.dim === 1 ? points.map((p) => p[0]) : points, // a flat list when D = 1
    seq: state.seq,
    horizon: clampInt($("horizon").value, 0, 200, 20),
  };
  if (state.levels) body.level = LEVELS;
  return body;
}

/** Posts one chunk: without `level` when the model has no intervals, and again after a 429/503/504. */
async function postChunk(points) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await post(sessionPath(state.sid, "/points"), chunkBody(points));
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      if (isNoIntervals(err)) {
        state.levels = false; // a refused chunk changes nothing, so the same seq goes again
        showNote("this model predicts values only: streaming without interval bands");
        continue;
      }
      if (attempt < RETRIES && [429, 503, 504].includes(err.status)) {
        await sleep(1000 * (err.retryAfterS || 1)); // a repeat of the same seq is applied once
        continue;
      }
      if (err.status === 409 && err.body.expected_seq !== undefined) {
        state.seq = err.body.expected_seq; // someone else moved the session on; the next Stream resumes there
      }
      throw err;
    }
  }
}

// The 422 a model without a predictive scale gives for `level` (any other 422 is a real error).
function isNoIntervals(err) {
  return err.status === 422 && state.levels && /interval|distribution/i.test(err.detail || "");
}

function listAnomalies(anomalies) {
  const list = $("anomaly-list");
  for (const a of anomalies) {
    const t = a.seq - state.seqBase;
    state.anomalies += 1;
    if (a.dim === 0) plot.addAnomaly(t, a.scales);
    const li = document.createElement("li");
    li.dataset.t = String(t);
    const dim = state.dim > 1 ? ` dim ${a.dim}` : "";
    li.textContent = `t=${t}${dim}: ${formatScales(a.scales)}σ`;
    li.title = `seq ${a.seq}: ${a.scales.toFixed(2)} predicted standard deviations from the prediction`;
    list.append(li);
  }
  while (list.children.length > MAX_LISTED) list.firstElementChild.remove();
}

// ------------------------------------------------------------------ small helpers

function updateCounters(latencyMs) {
  $("count-points").textContent = String(state.cursor);
  $("count-anomalies").textContent = String(state.anomalies);
  $("latency").textContent = latencyMs === null ? "–" : `${latencyMs.toFixed(0)} ms`;
}

function setRunning(running) {
  $("mn-stream").disabled = running;
  $("mn-stop").disabled = !running;
}

// Early in a stream, before the model has seen much, a point can sit thousands of σ away.
function formatScales(v) {
  const sign = v > 0 ? "+" : "";
  return Math.abs(v) >= 1000 ? `${sign}${v.toExponential(1)}` : `${sign}${v.toFixed(1)}`;
}

function clampInt(text, lo, hi, fallback) {
  const v = Math.round(Number(text));
  return Number.isFinite(v) ? Math.min(hi, Math.max(lo, v)) : fallback;
}

const nextFrame = () => new Promise((resolve) => requestAnimationFrame(() => resolve()));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ------------------------------------------------------------------ wiring

export function initStream() {
  plot = new StreamPlot($("plot"));
  const newBtn = $("mn-new");
  newBtn.addEventListener("click", guarded("New MemNet session", newSession, newBtn));
  const streamBtn = $("mn-stream");
  // Disabled from the click on (a double click while the session is being created starts one loop).
  streamBtn.addEventListener("click", guarded("Stream", startStreaming, streamBtn));
  $("mn-stop").addEventListener("click", () => halt());
  const demo = $("demo");
  demo.addEventListener("change", guarded("Demo series", () => useSeries(demoSeries(demo.value))));
  $("csv-use").addEventListener("click", guarded("CSV", () => useCsvText($("csv").value, "pasted CSV")));
  const file = $("csv-file");
  file.addEventListener("change", guarded("CSV file", async () => {
    const f = file.files[0];
    file.value = ""; // the same file chosen again fires another change
    if (f) await useCsvText(await f.text(), f.name);
  }));
  useSeries(demoSeries(demo.value));
}
