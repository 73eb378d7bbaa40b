// The live plot of a stream on a plain <canvas>: the series, the one-step predictions with their
// interval bands, the forecast after the last point with its bands, and the anomalies.
// The x axis is t, the position in the series being streamed.

const WINDOW = 320; // points in view; a longer series scrolls
const MARGIN = { left: 52, right: 14, top: 30, bottom: 26 };

// Opaque fills (not alpha): overlapping bands stay readable, and a test can find them by colour.
export const COLORS = {
  grid: "#eceef2",
  axis: "#667085",
  series: "#1d2430",
  prediction: "#2a5bd7",
  band80: "#b7cdf5",
  band95: "#dde7fb",
  forecast: "#e8730c",
  fband80: "#f9c995",
  fband95: "#fde6cd",
  anomaly: "#d92d20",
  now: "#98a2b3",
};

export class StreamPlot {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.reset(0);
    // Redraw at the new size when the layout changes (window resize, panels stacking).
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  /** Forgets everything; `total` is the series' length, so the axis does not jump while it streams. */
  reset(total) {
    this.total = total;
    this.values = []; // values[t]: the series (first dimension)
    this.pred = []; // pred[t]: the prediction made for point t at point t - 1
    this.bands = {}; // level -> {lo: [], hi: []}, indexed by t like pred
    this.forecast = null; // {t0, mean: [], bands: {level: {lo: [], hi: []}}}
    this.anomalies = []; // {t, scales}
    this.draw();
  }

  /**
   * Adds the reply to a chunk whose first point is t0; `values` are the chunk's first-dimension
   * values. Prediction i is for the point after point i, so it lands at t0 + i + 1.
   */
  addChunk(t0, values, reply, dim = 0) {
    values.forEach((v, i) => { this.values[t0 + i] = v; });
    reply.predictions.forEach((p, i) => { this.pred[t0 + i + 1] = p[dim]; });
    for (const [level, iv] of Object.entries(reply.intervals || {})) {
      const band = (this.bands[level] ||= { lo: [], hi: [] });
      iv.lower.forEach((row, i) => { band.lo[t0 + i + 1] = row[dim]; });
      iv.upper.forEach((row, i) => { band.hi[t0 + i + 1] = row[dim]; });
    }
    this.setForecast(t0 + values.length, reply, dim);
  }

  // forecast[0] is the prediction for the point after the chunk, so the forecast starts there.
  setForecast(t0, reply, dim) {
    if (!reply.forecast) return; // a chunk without a horizon keeps the last forecast
    const col = (rows) => rows.map((r) => r[dim]);
    const bands = {};
    for (const [level, iv] of Object.entries(reply.forecast_intervals || {})) {
      bands[level] = { lo: col(iv.lower), hi: col(iv.upper) };
    }
    this.forecast = { t0, mean: col(reply.forecast), bands };
  }

  addAnomaly(t, scales) {
    this.anomalies.push({ t, scales });
  }

  // ------------------------------------------------------------------ drawing

  draw() {
    if (!this.fitToScreen()) return;
    const view = this.view();
    const { ctx } = this;
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, this.w, this.h);
    this.drawGrid(view);
    ctx.save();
    ctx.beginPath();
    ctx.rect(MARGIN.left, MARGIN.top, this.w - MARGIN.left - MARGIN.right, this.h - MARGIN.top - MARGIN.bottom);
    ctx.clip(); // bands far outside the data's range are cut at the plot's edge
    this.drawBands(view);
    this.drawLines(view);
    this.drawAnomalies(view);
    ctx.restore();
    this.drawLegend();
    if (this.values.length === 0) this.drawHint("pick a series and press Stream");
  }

  drawHint(text) {
    const { ctx } = this;
    ctx.font = "14px system-ui, sans-serif";
    ctx.fillStyle = COLORS.axis;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(text, (MARGIN.left + this.w - MARGIN.right) / 2, (MARGIN.top + this.h - MARGIN.bottom) / 2);
  }

  /** Matches the canvas buffer to its CSS size and the screen's pixel ratio, for sharp lines. */
  fitToScreen() {
    const { canvas } = this;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    if (w === 0 || h === 0) return false; // not laid out (hidden)
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
      canvas.width = Math.round(w * ratio);
      canvas.height = Math.round(h * ratio);
    }
    this.ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    this.w = w;
    this.h = h;
    return true;
  }

  /** The visible t range and y range, and the maps from data to canvas coordinates. */
  view() {
    const n = this.values.length;
    const horizon = this.forecast ? this.forecast.mean.length : 0;
    const t0 = Math.max(0, n - WINDOW);
    const t1 = t0 + Math.max(Math.min(Math.max(this.total, n), WINDOW) + horizon, 20);
    const [y0, y1] = this.yRange(t0, t1);
    const px = (t) => MARGIN.left + ((t - t0) / (t1 - t0)) * (this.w - MARGIN.left - MARGIN.right);
    const py = (y) => this.h - MARGIN.bottom - ((y - y0) / (y1 - y0)) * (this.h - MARGIN.top - MARGIN.bottom);
    return { t0, t1, y0, y1, px, py };
  }

  // The range covers the series, the predictions up to 3 series spans beyond it (a model that is
  // far off shows as far off), and the forecast and the bands up to 1 span: a forecast may run
  // away, and the intervals of the first points, before the model has seen much, can be very wide.
  yRange(t0, t1) {
    const base = extent(this.values.slice(t0, t1));
    if (!base) return [0, 1];
    const span = Math.max(base[1] - base[0], 1e-6);
    const clampTo = (r, k) => r && [Math.max(r[0], base[0] - k * span), Math.min(r[1], base[1] + k * span)];
    const pred = clampTo(extent(this.pred.slice(t0, t1)), 3);
    const fc = this.forecast && clampTo(extent(this.forecast.mean), 1);
    const band = this.bands["80"];
    const bands = band && clampTo(extent([...band.lo.slice(t0, t1), ...band.hi.slice(t0, t1)]), 1);
    const [lo, hi] = extent([base, pred || base, fc || base, bands || base].flat());
    const pad = 0.06 * (hi - lo || 1);
    return [lo - pad, hi + pad];
  }

  drawGrid({ t0, t1, y0, y1, px, py }) {
    const { ctx } = this;
    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    ctx.fillStyle = COLORS.axis;
    ctx.strokeStyle = COLORS.grid;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const y of ticks(y0, y1, 5)) {
      line(ctx, MARGIN.left, py(y), this.w - MARGIN.right, py(y));
      ctx.fillText(formatTick(y), MARGIN.left - 6, py(y));
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const t of ticks(t0, t1, 8)) {
      line(ctx, px(t), MARGIN.top, px(t), this.h - MARGIN.bottom);
      ctx.fillText(formatTick(t), px(t), this.h - MARGIN.bottom + 6);
    }
    ctx.strokeStyle = COLORS.axis;
    line(ctx, MARGIN.left, this.h - MARGIN.bottom, this.w - MARGIN.right, this.h - MARGIN.bottom);
  }

  drawBands(view) {
    // Wider level first, so the narrower one is painted over it.
    const levels = Object.keys(this.bands).sort((a, b) => Number(b) - Number(a));
    for (const level of levels) {
      const b = this.bands[level];
      fillBand(this.ctx, view, b.lo, b.hi, 0, bandColor(level, false));
    }
    if (!this.forecast) return;
    const flevels = Object.keys(this.forecast.bands).sort((a, b) => Number(b) - Number(a));
    for (const level of flevels) {
      const b = this.forecast.bands[level];
      fillBand(this.ctx, view, b.lo, b.hi, this.forecast.t0, bandColor(level, true));
    }
  }

  drawLines(view) {
    const { ctx } = this;
    const n = this.values.length;
    if (n > 0) {
      ctx.strokeStyle = COLORS.now; // where the stream is now
      ctx.setLineDash([3, 4]);
      line(ctx, view.px(n - 1), MARGIN.top, view.px(n - 1), this.h - MARGIN.bottom);
      ctx.setLineDash([]);
    }
    polyline(ctx, view, this.values, 0, COLORS.series, 1.6);
    polyline(ctx, view, this.pred, 0, COLORS.prediction, 1.4);
    if (this.forecast) polyline(ctx, view, this.forecast.mean, this.forecast.t0, COLORS.forecast, 2);
  }

  drawAnomalies({ t0, px, py }) {
    const { ctx } = this;
    ctx.strokeStyle = COLORS.anomaly;
    ctx.lineWidth = 2;
    for (const a of this.anomalies) {
      const v = this.values[a.t];
      if (a.t < t0 || v === undefined) continue;
      ctx.beginPath();
      ctx.arc(px(a.t), py(v), 6, 0, 2 * Math.PI);
      ctx.stroke();
    }
  }

  drawLegend() {
    const items = [["line", COLORS.series, "series"], ["line", COLORS.prediction, "one-step prediction"]];
    if (Object.keys(this.bands).length) items.push(["box", COLORS.band80, "80 %"], ["box", COLORS.band95, "95 % interval"]);
    if (this.forecast) items.push(["line", COLORS.forecast, "forecast"]);
    if (this.forecast && Object.keys(this.forecast.bands).length) items.push(["box", COLORS.fband80, "forecast 80/95 %"]);
    items.push(["ring", COLORS.anomaly, "anomaly"]);
    const { ctx } = this;
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    let x = MARGIN.left;
    const y = 14;
    for (const [shape, color, label] of items) {
      legendMark(ctx, shape, color, x, y);
      ctx.fillStyle = COLORS.axis;
      ctx.fillText(label, x + 20, y);
      x += 30 + ctx.measureText(label).width;
    }
  }
}

// ------------------------------------------------------------------ drawing helpers

function bandColor(level, forecast) {
  const inner = Number(level) <= 80;
  if (forecast) return inner ? COLORS.fband80 : COLORS.fband95;
  return inner ? COLORS.band80 : COLORS.band95;
}

function line(ctx, x0, y0, x1, y1) {
  ctx.beginPath();
  ctx.moveTo(x0, y0);
  ctx.lineTo(x1, y1);
  ctx.stroke();
}

/** ys[i] at t = offset + i; holes (undefined) break the line. */
function polyline(ctx, { t0, t1, px, py }, ys, offset, color, width) {
  ctx.strokeStyle = color;
  ctx.lineWidth = width;
  ctx.lineJoin = "round";
  ctx.beginPath();
  let pen = false;
  for (let i = 0; i < ys.length; i++) { // not forEach: it skips the holes that must break the line
    const t = offset + i;
    const y = ys[i];
    if (y === undefined || t < t0 - 1 || t > t1 + 1) { pen = false; continue; }
    if (pen) ctx.lineTo(px(t), py(y));
    else ctx.moveTo(px(t), py(y));
    pen = true;
  }
  ctx.stroke();
}

/** Fills between lo and hi (indexed from `offset`), one polygon per run without holes. */
function fillBand(ctx, view, lo, hi, offset, color) {
  ctx.fillStyle = color;
  let run = [];
  const flush = () => {
    if (run.length > 1) {
      ctx.beginPath();
      run.forEach((t, k) => (k ? ctx.lineTo : ctx.moveTo).call(ctx, view.px(t), view.py(hi[t - offset])));
      for (let k = run.length - 1; k >= 0; k--) ctx.lineTo(view.px(run[k]), view.py(lo[run[k] - offset]));
      ctx.closePath();
      ctx.fill();
    }
    run = [];
  };
  for (let i = 0; i < hi.length; i++) {
    const t = offset + i;
    if (lo[i] === undefined || hi[i] === undefined || t < view.t0 - 1) flush();
    else run.push(t);
  }
  flush();
}

function legendMark(ctx, shape, color, x, y) {
  ctx.strokeStyle = color;
  ctx.fillStyle = color;
  ctx.lineWidth = 2;
  if (shape === "box") ctx.fillRect(x, y - 5, 16, 10);
  else if (shape === "ring") {
    ctx.beginPath();
    ctx.arc(x + 8, y, 4.5, 0, 2 * Math.PI);
    ctx.stroke();
  } else line(ctx, x, y, x + 16, y);
}

function extent(values) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (v === undefined || !Number.isFinite(v)) continue;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return lo <= hi ? [lo, hi] : null;
}

/** About `count` round tick values between lo and hi (steps of 1, 2 or 5 times a power of ten). */
function ticks(lo, hi, count) {
  const raw = (hi - lo) / count;
  if (!(raw > 0)) return [];
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function formatTick(v) {
  const a = Math.abs(v);
  if (a >= 1e5 || (a > 0 && a < 1e-3)) return v.toExponential(1);
  return String(Number(v.toPrecision(6)));
}
