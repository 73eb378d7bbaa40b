// A drawing pad on a <canvas>: thick black strokes on white, by mouse, pen or finger.

// About 1/15 of the pad: after the server's box filter to 28 x 28 a stroke is ~2 pixels wide,
// like the Omniglot drawings the model learnt from.
const STROKE = 18;
const PNG_PREFIX = /^data:image\/png;base64,/;

export class DrawPad {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.last = null; // the previous point of the stroke in progress
    this.inked = false;
    this.clear();
    this.listen();
  }

  clear() {
    const { ctx, canvas } = this;
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    this.inked = false;
  }

  isEmpty() {
    return !this.inked;
  }

  /** The drawing as base64 PNG without the data-URL prefix, which the API does not take. */
  toBase64Png() {
    return this.canvas.toDataURL("image/png").replace(PNG_PREFIX, "");
  }

  /** Puts an image on the pad, centred and scaled to fit, flattened onto white. */
  drawImage(img) {
    this.clear();
    const { width, height } = this.canvas;
    const scale = Math.min(width / img.width, height / img.height);
    const w = img.width * scale;
    const h = img.height * scale;
    this.ctx.drawImage(img, (width - w) / 2, (height - h) / 2, w, h);
    this.inked = true;
  }

  // Pointer events cover mouse, pen and touch alike; the canvas has `touch-action: none`,
  // so a finger draws instead of scrolling.
  listen() {
    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => this.start(e));
    c.addEventListener("pointermove", (e) => this.move(e));
    for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
      c.addEventListener(type, () => { this.last = null; });
    }
  }

  start(e) {
    e.preventDefault();
    this.canvas.setPointerCapture(e.pointerId); // keep the stroke when it leaves the pad
    this.last = this.point(e);
    this.segment(this.last, this.last); // a click alone leaves a dot
  }

  move(e) {
    if (!this.last) return;
    // Coalesced events keep fast strokes smooth where the browser batches pointer moves.
    const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
    for (const ev of events.length ? events : [e]) {
      const p = this.point(ev);
      this.segment(this.last, p);
      this.last = p;
    }
  }

  /** The pointer in canvas pixels (the canvas may be shown at another size than its buffer). */
  point(e) {
    const r = this.canvas.getBoundingClientRect();
    return {
      x: ((e.clientX - r.left) * this.canvas.width) / r.width,
      y: ((e.clientY - r.top) * this.canvas.height) / r.height,
    };
  }

  segment(a, b) {
    const { ctx } = this;
    ctx.strokeStyle = "#000";
    ctx.lineWidth = STROKE;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(a.x, a.y);
    ctx.lineTo(b.x, b.y);
    ctx.stroke();
    this.inked = true;
  }
}

/** Reads an image file into an HTMLImageElement (via an object URL: nothing leaves the page). */
export function loadImageFile(file) {
  return new Promise((resolve, reject) => {
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => { URL.revokeObjectURL(url); resolve(img); };
    img.onerror = () => { URL.revokeObjectURL(url); reject(new Error(`${file.name} is not an image the browser can read`)); };
    img.src = url;
  });
}

// Uploads are shrunk to at most this side: the server reduces drawings to 28 x 28 anyway, and a
// photo at full size could exceed the request body limit.
const MAX_UPLOAD_SIDE = 280;

/** Any image as a base64 PNG on white, through a scratch canvas (JPEG, GIF, transparent PNG alike). */
export function imageToBase64Png(img) {
  const scale = Math.min(1, MAX_UPLOAD_SIDE / Math.max(img.width, img.height));
  const c = document.createElement("canvas");
  c.width = Math.max(1, Math.round(img.width * scale));
  c.height = Math.max(1, Math.round(img.height * scale));
  const ctx = c.getContext("2d");
  ctx.fillStyle = "#fff"; // transparent pixels would otherwise read as black ink
  ctx.fillRect(0, 0, c.width, c.height);
  ctx.drawImage(img, 0, 0, c.width, c.height);
  return c.toDataURL("image/png").replace(PNG_PREFIX, "");
}
