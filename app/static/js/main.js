// The page's entry point: the key field, who the key acts for, the model lists, and both panels.

import { get, loadKey, saveKey } from "./api.js";
import { initFewShot, restoreFewShot } from "./fewshot.js";
import { hide, initStatus, showError } from "./status.js";
import { initStream, restoreStream } from "./stream.js";

const $ = (id) => document.getElementById(id);

/**
 * Asks the server who the key acts for. With keys on and no (or a wrong) key this is where the
 * visitor first sees the 401, before trying anything else.
 */
async function checkKey() {
  try {
    const t = await get("v1/tenant");
    $("tenant").textContent = t.auth === "off" ? "authentication off (local use)" : `tenant ${t.tenant}`;
    hide();
    await listModels();
    return true;
  } catch (err) {
    $("tenant").textContent = "";
    showError("API key", err);
    return false;
  }
}

/** On load: the key is checked first, then the sessions this tab had before a reload come back. */
async function start() {
  if (!(await checkKey())) return;
  try {
    await Promise.all([restoreFewShot(), restoreStream()]);
  } catch (err) {
    showError("Restore sessions", err);
  }
}

/** Fills the model fields' suggestions with the loaded models of each kind. */
async function listModels() {
  const { models } = await get("v1/models");
  for (const [kind, listId] of [["memnet", "mn-models"], ["vma", "vma-models"]]) {
    const names = [...new Set(models.filter((m) => m.kind === kind && m.workers.length).map((m) => m.name))];
    $(listId).replaceChildren(...names.map((name) => Object.assign(document.createElement("option"), { value: name })));
  }
}

/** A line in the footer: whether a worker is up (the panels need one). */
async function showReadiness() {
  const res = await fetch("health/ready").catch(() => null);
  const body = res ? await res.json().catch(() => null) : null;
  if (!body) return;
  $("ready").textContent = body.status === "ready"
    ? `· ready: ${body.workers.length} worker(s), models ${body.models.join(", ")}`
    : `· not ready: ${body.reasons.join("; ")}`;
}

function initKey() {
  const input = $("api-key");
  input.value = loadKey();
  // Saved on every keystroke, so the next request uses what is in the field.
  input.addEventListener("input", () => saveKey(input.value.trim()));
  $("auth-form").addEventListener("submit", (e) => {
    e.preventDefault(); // checked by fetch, not a page load
    checkKey();
  });
  input.addEventListener("change", checkKey);
}

initStatus();
initKey();
initFewShot();
initStream();
start();
showReadiness();
