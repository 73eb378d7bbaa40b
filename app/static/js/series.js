// Series to stream: built-in demos generated here, and CSV text (pasted or uploaded).
// A series is {name, columns: [[...numbers], ...], spikes?: [t, ...]}; columns[0] is what is plotted.

export const DEMO_LENGTH = 300;

// A seeded generator (mulberry32): the same demo every time, so a run can be compared with the last.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function gaussian(uniform) {
  const u = 1 - uniform(); // (0, 1]: log(0) would be -infinity
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * uniform());
}

const times = (n) => Array.from({ length: n }, (_, t) => t);

function noisySine(n, seed = 1) {
  const r = rng(seed);
  return times(n).map((t) => 50 + 10 * Math.sin(t / 8) + 0.8 * gaussian(r));
}

function randomWalk(n, seed = 2) {
  const r = rng(seed);
  let x = 100;
  return times(n).map(() => (x += gaussian(r)));
}

function seasonalTrend(n, seed = 3) {
  const r = rng(seed);
  // A trend, a 24-step season with a 6-step overtone, and a little noise.
  return times(n).map((t) => 20 + 0.06 * t + 6 * Math.sin((2 * Math.PI * t) / 24)
    + 2 * Math.sin((2 * Math.PI * t) / 6) + 0.6 * gaussian(r));
}

// Spikes late enough that the session's memory has seen a few periods of the sine first.
export const SPIKES_AT = [120, 190, 255];

function withSpikes(n) {
  const x = noisySine(n, 4);
  SPIKES_AT.forEach((t, i) => { if (t < n) x[t] += i % 2 ? -45 : 45; });
  return x;
}

/** The built-in demo `name` ("sine", "walk", "seasonal", "spikes") of `n` points. */
export function demoSeries(name, n = DEMO_LENGTH) {
  switch (name) {
    case "walk": return { name: "random walk", columns: [randomWalk(n)] };
    case "seasonal": return { name: "seasonal series with trend", columns: [seasonalTrend(n)] };
    case "spikes": return { name: "sine with injected spikes", columns: [withSpikes(n)], spikes: SPIKES_AT.filter((t) => t < n) };
    default: return { name: "noisy sine", columns: [noisySine(n)] };
  }
}

// ------------------------------------------------------------------ CSV

// Columns with such a header are times or row numbers, not values, even where they parse as numbers.
const INDEX_HEADER = /^(date|time|timestamp|datetime|day|month|year|week|period|index|idx|ds|t)$/i;

function splitRow(line, sep) {
  const cells = line.split(sep).map((c) => c.trim().replace(/^"(.*)"$/, "$1").trim());
  // With ";" as the separator the comma is usually the decimal mark (1,5 = 1.5).
  return sep === ";" ? cells.map((c) => c.replace(/^(-?\d+),(\d+)$/, "$1.$2")) : cells;
}

function toNumber(cell) {
  if (cell === "") return NaN; // Number("") is 0, which would invent values
  return Number(cell);
}

function sniffSeparator(line) {
  for (const sep of [",", ";", "\t"]) if (line.includes(sep)) return sep;
  return /\s+/; // one number per line, or space-separated columns
}

/**
 * The numeric columns of CSV text, in order: a header row is allowed (detected when the first row
 * has a cell that is not a number), columns where fewer than half the cells are numbers (dates, names) are
 * skipped, and rows without a number in the first kept column are dropped.
 */
export function parseCsv(text, name = "CSV") {
  const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
  if (lines.length === 0) throw new Error("the CSV is empty");
  const sep = sniffSeparator(lines[0]);
  let rows = lines.map((l) => splitRow(l, sep));
  const first = rows[0];
  const hasHeader = first.some((c) => c !== "" && !Number.isFinite(toNumber(c)));
  const header = hasHeader ? first : first.map(() => "");
  if (hasHeader) rows = rows.slice(1);
  const keep = numericColumns(rows, header);
  if (keep.length === 0) throw new Error("the CSV has no numeric column");
  const good = rows.filter((r) => Number.isFinite(toNumber(r[keep[0]] ?? "")));
  if (good.length < 2) throw new Error("the CSV has fewer than 2 numeric rows");
  // In the other kept columns a gap repeats the value above, so each row stays a full point.
  const columns = keep.map((j) => fillGaps(good.map((r) => toNumber(r[j] ?? ""))));
  const label = hasHeader ? header[keep[0]] : `column ${keep[0] + 1}`;
  return { name: `${name}: ${label}`, columns, dropped: rows.length - good.length };
}

function numericColumns(rows, header) {
  const width = Math.max(...rows.map((r) => r.length), header.length);
  const keep = [];
  for (let j = 0; j < width; j++) {
    if (INDEX_HEADER.test(header[j] || "")) continue;
    const cells = rows.map((r) => r[j] ?? "").filter((c) => c !== "");
    const numeric = cells.filter((c) => Number.isFinite(toNumber(c))).length;
    if (cells.length > 0 && numeric >= 0.5 * cells.length) keep.push(j); // a few "NA" do not disqualify it
  }
  return keep;
}

function fillGaps(values) {
  let last = values.find(Number.isFinite) ?? 0;
  return values.map((v) => (Number.isFinite(v) ? (last = v) : last));
}

/**
 * Point t of the series as the model wants it: D numbers, from the first D columns; a series
 * with fewer columns than the model's dimension repeats its first column in the others.
 */
export function pointAt(series, t, dim) {
  return Array.from({ length: dim }, (_, d) => (series.columns[d] || series.columns[0])[t]);
}

export const lengthOf = (series) => series.columns[0].length;
