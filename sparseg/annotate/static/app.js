// sparseg annotate: the page. Labels are one byte per pixel (0..K-1 classes, 254 unlabeled, 255 ignore),
// painted with the rule of sparseg.data.sparse.rasterize (pixel centres within width/2 of the stroke) and
// saved to the server after every edit.
"use strict";

const UNLABELED = 254;
const IGNORE = 255;
const HISTORY = 100;          // undo steps kept per image
const SAVE_DELAY_MS = 80;     // edits closer together than this are saved once
const PREDICTIONS_KEPT = 16;  // prediction maps kept in the page (the server caches more)

const $ = (id) => document.getElementById(id);
const layers = {
  image: $("image"),
  prediction: $("prediction-layer"),
  unsure: $("unsure-layer"),
  label: $("label-layer"),
};

const state = {
  session: null,
  index: -1,
  loadToken: 0,
  width: 0,
  height: 0,
  label: null,            // Uint8Array width*height of the current image
  cls: 0,
  tool: "scribble",
  brush: 3,
  undo: [],
  redo: [],
  stroke: null,           // {before, last: [x, y]} while drawing
  pan: null,              // {x, y, vx, vy} while panning
  spaceDown: false,
  view: { scale: 1, x: 0, y: 0 },
  colours: null,          // Uint32Array[256] RGBA of each label value
  predictions: new Map(), // id -> Uint8Array 3*W*H (class, maxprob, entropy certainty)
  dirty: false,
  saveTimer: null,
  saving: Promise.resolve(),
  pendingSaves: 0,
  renderQueued: false,
};

// ------------------------------------------------------------------ status and progress

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function setProgress(progress) {
  $("progress").textContent = `${progress.labeled} / ${progress.total} images labeled`;
}

function markPending(delta) {
  state.pendingSaves += delta;
  document.body.dataset.pendingSaves = String(state.pendingSaves);
}

// ------------------------------------------------------------------ painting

// Paint pixels whose centre lies within `radius` of segment a-b (as sparseg.data.sparse._paint_capsule).
function paintCapsule(ax, ay, bx, by, radius, value) {
  const w = state.width, h = state.height, label = state.label;
  const x0 = Math.max(Math.floor(Math.min(ax, bx) - radius), 0);
  const y0 = Math.max(Math.floor(Math.min(ay, by) - radius), 0);
  const x1 = Math.min(Math.ceil(Math.max(ax, bx) + radius), w - 1);
  const y1 = Math.min(Math.ceil(Math.max(ay, by) + radius), h - 1);
  if (x0 > x1 || y0 > y1) return;
  const dx = bx - ax, dy = by - ay, length2 = dx * dx + dy * dy, r2 = radius * radius;
  for (let y = y0; y <= y1; y++) {
    for (let x = x0; x <= x1; x++) {
      const t = length2 === 0 ? 0 : Math.min(Math.max(((x - ax) * dx + (y - ay) * dy) / length2, 0), 1);
      const ex = x - ax - t * dx, ey = y - ay - t * dy;
      if (ex * ex + ey * ey <= r2) label[y * w + x] = value;
    }
  }
}

function paintValue() {
  return state.tool === "eraser" ? UNLABELED : state.cls;
}

// The pixel under a pointer event, as integer (x, y) = (column, row): strokes run through pixel centres.
function pixelAt(event) {
  const rect = layers.label.getBoundingClientRect();
  return [  // multiply first: (13 / 360) * 360 is 12.999..., 13 * 360 / 360 is 13
    Math.floor(((event.clientX - rect.left) * state.width) / rect.width),
    Math.floor(((event.clientY - rect.top) * state.height) / rect.height),
  ];
}

function beginStroke(event) {
  const [x, y] = pixelAt(event);
  state.stroke = { before: state.label.slice(), last: [x, y] };
  paintCapsule(x, y, x, y, state.brush / 2, paintValue());
  queueRender();
}

function extendStroke(event) {
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const e of events.length ? events : [event]) {
    const [x, y] = pixelAt(e);
    const [lx, ly] = state.stroke.last;
    if (x === lx && y === ly) continue;
    paintCapsule(lx, ly, x, y, state.brush / 2, paintValue());
    state.stroke.last = [x, y];
  }
  queueRender();
}

function endStroke() {
  const { before } = state.stroke;
  state.stroke = null;
  if (sameBytes(before, state.label)) return;
  pushHistory(state.undo, before);
  state.redo = [];
  edited();
}

function sameBytes(a, b) {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function pushHistory(stack, snapshot) {
  stack.push(snapshot);
  if (stack.length > HISTORY) stack.shift();
}

function undo() {
  if (!state.undo.length || state.stroke) return;
  pushHistory(state.redo, state.label);
  state.label = state.undo.pop();
  edited();
}

function redo() {
  if (!state.redo.length || state.stroke) return;
  pushHistory(state.undo, state.label);
  state.label = state.redo.pop();
  edited();
}

function edited() {
  state.dirty = true;
  queueRender();
  clearTimeout(state.saveTimer);
  state.saveTimer = setTimeout(flushSave, SAVE_DELAY_MS);
}

// ------------------------------------------------------------------ saving

// Send the current label if it changed; saves go out one after another, so the last edit wins.
function flushSave() {
  clearTimeout(state.saveTimer);
  if (!state.dirty) return state.saving;
  state.dirty = false;
  const entry = currentEntry();
  const body = state.label.slice();
  markPending(1);
  state.saving = state.saving.then(async () => {
    try {
      const response = await fetch(`api/label/${encodeURIComponent(entry.id)}`, {
        method: "PUT",
        headers: { "Content-Type": "application/octet-stream" },
        body,
      });
      const reply = await response.json();
      if (!response.ok) throw new Error(reply.error || response.statusText);
      entry.labeled_pixels = reply.labeled_pixels;
      setProgress(reply.progress);
      updateImageList();
      setStatus(`saved ${entry.id} (${reply.labeled_pixels} labeled pixels)`);
    } catch (err) {
      setStatus(`not saved: ${err.message}`, true);
    } finally {
      markPending(-1);
    }
  });
  return state.saving;
}

// ------------------------------------------------------------------ rendering

function buildColours(palette) {
  const colours = new Uint32Array(256);
  const view = new DataView(colours.buffer);
  palette.forEach(([r, g, b], i) => view.setUint32(i * 4, ((r << 24) | (g << 16) | (b << 8) | 255) >>> 0, false));
  view.setUint32(IGNORE * 4, 0x000000a0, false);  // ignore: translucent black; unlabeled stays transparent
  return colours;
}

function queueRender() {
  if (state.renderQueued) return;
  state.renderQueued = true;
  requestAnimationFrame(() => {
    state.renderQueued = false;
    renderLabel();
  });
}

function paintLayer(canvas, fill) {
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(state.width, state.height);
  fill(new Uint32Array(image.data.buffer));
  ctx.putImageData(image, 0, 0);
}

function renderLabel() {
  if (!state.label) return;
  const label = state.label, colours = state.colours;
  paintLayer(layers.label, (pixels) => {
    for (let i = 0; i < label.length; i++) pixels[i] = colours[label[i]];
  });
}

function renderAssist() {
  const maps = state.predictions.get(currentEntry().id);
  const showPrediction = $("show-prediction").checked && maps;
  const showUnsure = $("show-unsure").checked && maps;
  layers.prediction.hidden = !showPrediction;
  layers.unsure.hidden = !showUnsure;
  if (!maps) return;
  const n = state.width * state.height;
  if (showPrediction) {
    const colours = state.colours;
    paintLayer(layers.prediction, (pixels) => {
      for (let i = 0; i < n; i++) pixels[i] = colours[maps[i]];
    });
  }
  const plane = $("measure").value === "entropy" ? 2 : 1;
  const threshold = Math.round(Number($("threshold").value) * 2.55);
  const magenta = new DataView(new ArrayBuffer(4));
  magenta.setUint32(0, 0xff00ffff, false);
  const unsureColour = new Uint32Array(magenta.buffer)[0];
  let unsure = 0;
  for (let i = 0; i < n; i++) if (maps[plane * n + i] < threshold) unsure++;
  if (showUnsure) {
    paintLayer(layers.unsure, (pixels) => {
      for (let i = 0; i < n; i++) pixels[i] = maps[plane * n + i] < threshold ? unsureColour : 0;
    });
  }
  $("assist-status").textContent = `unsure: ${((100 * unsure) / n).toFixed(1)}% of the pixels`;
}

async function loadPrediction() {
  const entry = currentEntry();
  if (!state.session.model || state.predictions.has(entry.id)) return renderAssist();
  if (!$("show-prediction").checked && !$("show-unsure").checked) return renderAssist();
  $("assist-status").textContent = "computing the prediction…";
  try {
    const response = await fetch(`api/prediction/${encodeURIComponent(entry.id)}`);
    if (!response.ok) throw new Error((await response.json()).error);
    state.predictions.set(entry.id, new Uint8Array(await response.arrayBuffer()));
    if (state.predictions.size > PREDICTIONS_KEPT) state.predictions.delete(state.predictions.keys().next().value);
  } catch (err) {
    $("assist-status").textContent = `prediction failed: ${err.message}`;
    return;
  }
  if (currentEntry().id === entry.id) renderAssist();
}

// ------------------------------------------------------------------ view: zoom and pan

function applyView() {
  const v = state.view;
  $("stage").style.transform = `translate(${v.x}px, ${v.y}px) scale(${v.scale})`;
}

function setView(scale) {
  const box = $("viewport").getBoundingClientRect();
  state.view = {
    scale,
    x: Math.round((box.width - state.width * scale) / 2),
    y: Math.round((box.height - state.height * scale) / 2),
  };
  applyView();
}

function fitView() {
  const box = $("viewport").getBoundingClientRect();
  setView(Math.min(box.width / state.width, box.height / state.height) * 0.98);
}

function zoomAt(clientX, clientY, factor) {
  const box = $("viewport").getBoundingClientRect();
  const v = state.view;
  const scale = Math.min(Math.max(v.scale * factor, 0.05), 64);
  const cx = clientX - box.left, cy = clientY - box.top;
  state.view = {
    scale,
    x: Math.round(cx - ((cx - v.x) * scale) / v.scale),
    y: Math.round(cy - ((cy - v.y) * scale) / v.scale),
  };
  applyView();
}

// ------------------------------------------------------------------ images

function currentEntry() {
  return state.session.images[state.index];
}

async function go(index) {
  const images = state.session.images;
  if (state.stroke) endStroke();
  const saved = flushSave();  // before any await: the edits of this image are sent first
  if (index < 0 || index >= images.length) return;
  await saved;
  const token = ++state.loadToken;
  const entry = images[index];
  document.body.dataset.ready = "0";
  setStatus(`loading ${entry.id}…`);
  const img = new Image();
  img.src = `api/image/${encodeURIComponent(entry.id)}`;
  const [labelResponse] = await Promise.all([fetch(`api/label/${encodeURIComponent(entry.id)}`), img.decode()]);
  const bytes = new Uint8Array(await labelResponse.arrayBuffer());
  if (token !== state.loadToken) return;  // a later navigation won
  state.index = index;
  state.width = entry.width;
  state.height = entry.height;
  state.label = bytes;
  state.undo = [];
  state.redo = [];
  layers.image.src = img.src;
  for (const layer of [layers.image, layers.prediction, layers.unsure, layers.label]) {
    layer.width = entry.width;
    layer.height = entry.height;
    layer.style.width = `${entry.width}px`;
    layer.style.height = `${entry.height}px`;
  }
  $("current-name").textContent = entry.id;
  $("current-name").title = entry.id;
  history.replaceState(null, "", `#${encodeURIComponent(entry.id)}`);
  fitView();
  renderLabel();
  updateImageList();
  loadPrediction();
  setStatus(`${entry.id}: ${entry.width}x${entry.height}`);
  document.body.dataset.image = entry.id;
  document.body.dataset.readyAt = String(Math.round(performance.now()));  // ms since navigation start
  document.body.dataset.ready = "1";
}

// go() for event handlers: a failure (an unreadable image, a lost server) shows in the status line
function show(index) {
  go(index).catch((err) => setStatus(`cannot show the image: ${err.message}`, true));
}

function updateImageList() {
  const items = $("images").children;
  state.session.images.forEach((entry, i) => {
    items[i].classList.toggle("labeled", entry.labeled_pixels > 0);
    items[i].classList.toggle("current", i === state.index);
  });
  items[state.index]?.scrollIntoView({ block: "nearest" });
}

// ------------------------------------------------------------------ controls

function selectClass(cls) {
  if (cls < 0 || cls >= state.session.classes.length) return;
  state.cls = cls;
  [...$("palette").children].forEach((li, i) => li.classList.toggle("active", i === cls));
  if (state.tool === "eraser") selectTool("scribble");
}

function selectTool(tool) {
  state.tool = tool;
  document.querySelectorAll("[data-tool]").forEach((b) => b.classList.toggle("active", b.dataset.tool === tool));
}

function setBrush(width) {
  state.brush = Math.min(Math.max(width, 1), 31);
  $("brush").value = state.brush;
  $("brush-value").textContent = state.brush;
}

function buildControls(session) {
  session.classes.forEach((name, i) => {
    const li = document.createElement("li");
    const [r, g, b] = session.palette[i];
    li.innerHTML = `<span class="key">${i < 9 ? i + 1 : ""}</span><span class="swatch"></span><span></span>`;
    li.children[1].style.background = `rgb(${r}, ${g}, ${b})`;
    li.children[2].textContent = name;
    li.dataset.cls = i;
    li.addEventListener("click", () => selectClass(i));
    $("palette").append(li);
  });
  session.images.forEach((entry, i) => {
    const li = document.createElement("li");
    li.textContent = entry.id;
    li.title = entry.id;
    li.addEventListener("click", () => show(i));
    $("images").append(li);
  });
  document.querySelectorAll("[data-tool]").forEach((b) => b.addEventListener("click", () => selectTool(b.dataset.tool)));
  $("brush").addEventListener("input", () => setBrush(Number($("brush").value)));
  $("opacity").addEventListener("input", () => (layers.label.style.opacity = $("opacity").value / 100));
  layers.label.style.opacity = $("opacity").value / 100;
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("fit").addEventListener("click", fitView);
  $("actual").addEventListener("click", () => setView(1));
  $("prev").addEventListener("click", () => show(state.index - 1));
  $("next").addEventListener("click", () => show(state.index + 1));
  $("assist").hidden = !session.model;
  for (const id of ["show-prediction", "show-unsure"]) $(id).addEventListener("change", loadPrediction);
  $("measure").addEventListener("change", renderAssist);
  const showThreshold = () => ($("threshold-value").textContent = (Number($("threshold").value) / 100).toFixed(2));
  $("threshold").addEventListener("input", () => { showThreshold(); renderAssist(); });
  showThreshold();
  // sliders and menus give the keyboard back, so arrow keys keep moving between images
  document.querySelectorAll("input, select").forEach((el) => el.addEventListener("change", () => el.blur()));
  setBrush(state.brush);
  selectTool("scribble");
  selectClass(0);
}

function toggle(id) {
  $(id).checked = !$(id).checked;
  loadPrediction();
}

function onKey(event) {
  if (event.target.tagName === "INPUT" && event.target.type !== "checkbox") return;
  const key = event.key.toLowerCase();
  const ctrl = event.ctrlKey || event.metaKey;
  if (ctrl && key === "z") (event.shiftKey ? redo : undo)();
  else if (ctrl && key === "y") redo();
  else if (ctrl) return;
  else if (/^[1-9]$/.test(key)) selectClass(Number(key) - 1);
  else if (key === "s") selectTool("scribble");
  else if (key === "p") selectTool("point");
  else if (key === "e") selectTool("eraser");
  else if (key === "[") setBrush(state.brush - 1);
  else if (key === "]") setBrush(state.brush + 1);
  else if (key === "arrowright") show(state.index + 1);
  else if (key === "arrowleft") show(state.index - 1);
  else if (key === "m" && state.session.model) toggle("show-prediction");
  else if (key === "u" && state.session.model) toggle("show-unsure");
  else if (key === "f") fitView();
  else if (key === "0") setView(1);
  else if (key === " ") {
    state.spaceDown = true;
    $("viewport").classList.add("panning");
  } else return;
  event.preventDefault();
}

function bindViewport() {
  const viewport = $("viewport");
  viewport.addEventListener("pointerdown", (event) => {
    if (!state.label || state.stroke || state.pan) return;
    viewport.setPointerCapture(event.pointerId);
    if (event.button === 1 || event.button === 2 || state.spaceDown) {
      state.pan = { x: event.clientX, y: event.clientY, vx: state.view.x, vy: state.view.y };
    } else if (event.button === 0) {
      beginStroke(event);
    }
  });
  viewport.addEventListener("pointermove", (event) => {
    if (state.pan) {
      state.view.x = Math.round(state.pan.vx + event.clientX - state.pan.x);
      state.view.y = Math.round(state.pan.vy + event.clientY - state.pan.y);
      applyView();
    } else if (state.stroke && state.tool !== "point") {
      extendStroke(event);
    }
  });
  const release = (event) => {
    if (state.pan) {
      state.pan = null;
    } else if (state.stroke) {
      if (state.tool !== "point") extendStroke(event);  // the release point ends the stroke, moved to or not
      endStroke();
    }
  };
  viewport.addEventListener("pointerup", release);
  viewport.addEventListener("pointercancel", release);
  viewport.addEventListener("contextmenu", (event) => event.preventDefault());
  viewport.addEventListener("wheel", (event) => {
    event.preventDefault();
    zoomAt(event.clientX, event.clientY, Math.exp(-event.deltaY * 0.0015));
  }, { passive: false });
  window.addEventListener("resize", () => state.label && fitView());
  document.addEventListener("keydown", onKey);
  document.addEventListener("keyup", (event) => {
    if (event.key === " ") {
      state.spaceDown = false;
      viewport.classList.remove("panning");
    }
  });
  window.addEventListener("beforeunload", (event) => {
    flushSave();
    if (state.pendingSaves > 0) event.preventDefault();
  });
}

async function main() {
  markPending(0);
  const response = await fetch("api/session");
  const session = await response.json();
  state.session = session;
  state.colours = buildColours(session.palette);
  buildControls(session);
  bindViewport();
  setProgress(session.progress);
  const fromHash = decodeURIComponent(location.hash.slice(1));
  let start = session.images.findIndex((e) => e.id === fromHash);
  if (start < 0) start = Math.max(session.images.findIndex((e) => e.labeled_pixels === 0), 0);
  await go(start);
}

main().catch((err) => setStatus(`error: ${err.message}`, true));
