// The one status area under the header: errors of any panel, and short notes.

const box = () => document.getElementById("status");
const text = () => document.getElementById("status-text");

let noteTimer = null;

function show(message, isError) {
  clearTimeout(noteTimer);
  text().textContent = message;
  box().classList.toggle("error", isError);
  box().hidden = false;
}

/** An error, kept visible until dismissed or replaced: the user has to be able to read it. */
export function showError(where, err) {
  const status = err.status ? `${err.status} ` : "";
  const title = err.title || err.name || "Error";
  const detail = err.detail !== undefined ? err.detail : err.message;
  show(`${where}: ${status}${title}${detail ? ` — ${detail}` : ""}`, true);
}

/** A note that fades after a while, so it does not hide a later error for long. */
export function showNote(message, ms = 6000) {
  show(message, false);
  noteTimer = setTimeout(hide, ms);
}

export function hide() {
  clearTimeout(noteTimer);
  box().hidden = true;
}

/**
 * Wraps an async UI action: a failure lands in the status area under `where`, and the button
 * is disabled while the action runs, so a double click does not send the request twice.
 */
export function guarded(where, action, button = null) {
  return async (...args) => {
    if (button) button.disabled = true;
    try {
      return await action(...args);
    } catch (err) {
      showError(where, err);
      return undefined;
    } finally {
      if (button) button.disabled = false;
    }
  };
}

export function initStatus() {
  document.getElementById("status-close").addEventListener("click", hide);
}
