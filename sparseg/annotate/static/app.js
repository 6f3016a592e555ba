// sparseg annotate: the page. Labels are one byte per pixel (0..K-1 classes, 254 unlabeled, 255 ignore),
// painted with the rule of sparseg.data.sparse.rasterize (pixel centres within width/2 of the stroke) and
// saved to the server after every edit. A save that fails stays pending and is retried; a save that finds the
// file changed elsewhere (412) reloads it and re-applies this page's unsaved edits on top.
"use strict";

const UNLABELED = 254;
const IGNORE = 255;
const HISTORY = 100;          // undo steps kept per image
const SAVE_DELAY_MS = 80;     // edits closer together than this are saved once
const RETRY_MS = [500, 1000, 2000, 4000];  // waits before the retries of a failed save (then the last, again)
const PREDICTIONS_KEPT = 16;  // prediction maps kept in the page (the server caches more)
const MAX_BRUSH = 201;
const RANKING_POLL_MS = 1500;

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
  doc: null,              // the current image's labels: see newDoc
  opening: null,          // the doc of the image being loaded
  docs: new Map(),        // id -> doc; undo history survives navigation, labels are kept while unsaved
  cls: 0,
  classPage: 0,           // keys 1..9 pick classes 9 * classPage .. 9 * classPage + 8
  hidden: new Set(),      // classes not drawn
  tool: "scribble",
  brush: 3,
  stroke: null,           // {idx, before, after, box, last, paint} while drawing
  pan: null,              // {x, y, vx, vy} while panning
  spaceDown: false,
  view: { scale: 1, x: 0, y: 0 },
  colours: null,          // Uint32Array[256] RGBA of each label value (hidden classes transparent)
  predictions: new Map(), // id -> Uint8Array 3*W*H (class, maxprob, entropy certainty)
  renderBox: undefined,   // the part of the label layer to repaint: undefined nothing, null all
  scores: {},             // id -> {score, uncertainty, balance} of the "label next" ranking
  order: "list",
  items: [],              // the list's <li> per image index
};

// ------------------------------------------------------------------ status and progress

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function setProgress(progress) {
  $("progress").textContent = `${progress.labeled} / ${progress.total} images labeled`;
}

function count(name) {
  document.body.dataset[name] = String(Number(document.body.dataset[name] || 0) + 1);
}

// ------------------------------------------------------------------ labels of an image, and their saving

// A doc: the label bytes (null when not loaded and nothing unsaved), the server's version they are based on,
// the undo/redo diffs, and the edits not yet acknowledged by the server (re-applied after a 412).
function newDoc(entry) {
  return { entry, label: null, version: null, undo: [], redo: [], unsaved: [], dirty: false, sending: false,
           timer: null, failures: 0, error: null, rebased: false };
}

function docOf(entry) {
  if (!state.docs.has(entry.id)) state.docs.set(entry.id, newDoc(entry));
  return state.docs.get(entry.id);
}

function pending(doc) {
  return doc.dirty || doc.sending;
}

function updatePending() {
  const docs = [...state.docs.values()].filter(pending);
  document.body.dataset.pendingSaves = String(docs.length);
  state.items.forEach((li, i) => {
    const doc = state.docs.get(state.session.images[i].id);
    li.classList.toggle("pending", !!doc && pending(doc));
  });
  $("pending").textContent = docs.length ? `unsaved: ${docs.map((d) => d.entry.id).join(", ")}` : "";
}

function labelUrl(entry) {
  return `api/label/${encodeURIComponent(entry.id)}`;
}

async function fetchLabel(entry) {
  const response = await fetch(labelUrl(entry));
  if (!response.ok) throw new Error((await response.json()).error);
  return { label: new Uint8Array(await response.arrayBuffer()), version: response.headers.get("ETag").replace(/"/g, "") };
}

function scheduleSave(doc, delay) {
  doc.dirty = true;
  clearTimeout(doc.timer);
  doc.timer = setTimeout(() => sendSave(doc), delay);
  updatePending();
}

class SaveError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Send a doc's label if it has unsaved edits; one request per doc at a time. Failures stay pending: a lost
// server is retried with growing waits, a refusal (4xx) is shown and kept until the next edit.
async function sendSave(doc) {
  clearTimeout(doc.timer);
  doc.timer = null;
  if (doc.sending || !doc.dirty) return;
  doc.dirty = false;
  doc.sending = true;
  const sent = doc.unsaved.length;
  const entry = doc.entry;
  let retryIn = null;
  try {
    const response = await fetch(labelUrl(entry), {
      method: "PUT",
      headers: { "Content-Type": "application/octet-stream", "If-Match": `"${doc.version}"` },
      body: doc.label,  // copied by fetch when the request is made
    });
    const reply = await response.json();
    if (response.status === 412) {
      await rebase(doc);
      retryIn = 0;
    } else if (!response.ok) {
      throw new SaveError(response.status, reply.error || response.statusText);
    } else {
      doc.version = reply.version;
      doc.unsaved.splice(0, sent);
      doc.failures = 0;
      doc.error = null;
      entry.labeled_pixels = reply.labeled_pixels;
      setProgress(reply.progress);
      updateImageList();
      if (doc.rebased) {
        setStatus(`saved ${entry.id}, which was changed elsewhere (another tab?): reloaded, and this page's ` +
                  "unsaved edits re-applied on top", true);
        doc.rebased = false;
      } else {
        setStatus(`saved ${entry.id} (${reply.labeled_pixels} labeled pixels)`);
      }
    }
  } catch (err) {
    doc.dirty = true;
    if (err instanceof SaveError && err.status < 500) {
      doc.error = err.message;
      setStatus(`not saved: ${err.message}`, true);
    } else {
      retryIn = RETRY_MS[Math.min(doc.failures, RETRY_MS.length - 1)];
      doc.failures++;
      setStatus(`${entry.id} not saved (${err.message}); retrying in ${retryIn / 1000} s, keep this page open`, true);
    }
  } finally {
    doc.sending = false;
  }
  if (doc.dirty && !doc.error) scheduleSave(doc, retryIn ?? SAVE_DELAY_MS);
  updatePending();
  release(doc);
}

// The file changed since this doc was loaded (another tab or tool): take the server's labels and re-apply
// the edits the server has not acknowledged, then save again.
async function rebase(doc) {
  const fresh = await fetchLabel(doc.entry);
  for (const { diff, forward } of doc.unsaved) writeDiff(fresh.label, diff, forward);
  doc.label = fresh.label;
  doc.version = fresh.version;
  doc.dirty = true;
  doc.rebased = true;
  count("conflicts");
  if (doc === state.doc) queueRender(null);
}

// A doc that is not shown (or being opened) and has nothing unsaved keeps its history only.
function release(doc) {
  if (doc !== state.doc && doc !== state.opening && !pending(doc)) doc.label = null;
}

function flushAll() {
  for (const doc of state.docs.values()) if (doc.dirty && !doc.sending && !doc.error) sendSave(doc);
}

// ------------------------------------------------------------------ edits: strokes as diffs

// Paint pixels whose centre lies within `radius` of segment a-b (as sparseg.data.sparse._paint_capsule).
function paintCapsule(ax, ay, bx, by, radius) {
  const w = state.width, h = state.height, stroke = state.stroke;
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
      if (ex * ex + ey * ey <= r2) stroke.paint(y * w + x);
    }
  }
  growBox(stroke.box, x0, y0, x1, y1);
}

function growBox(box, x0, y0, x1, y1) {
  box.x0 = Math.min(box.x0, x0);
  box.y0 = Math.min(box.y0, y0);
  box.x1 = Math.max(box.x1, x1);
  box.y1 = Math.max(box.y1, y1);
}

// What a stroke does to pixel i: the brush tools write one value; "accept" writes the model's class where
// the model is sure (the unsure measure at or above the threshold) and the pixel is unlabeled.
function painter(stroke, label) {
  const set = (i, value) => {
    if (label[i] === value) return;
    stroke.idx.push(i);
    stroke.before.push(label[i]);
    stroke.after.push(value);
    label[i] = value;
  };
  if (state.tool !== "accept") {
    const value = state.tool === "eraser" ? UNLABELED : state.cls;
    return (i) => set(i, value);
  }
  const maps = state.predictions.get(state.doc.entry.id);
  const n = state.width * state.height, offset = unsurePlane() * n, threshold = unsureThreshold();
  return (i) => {
    if (label[i] === UNLABELED && maps[offset + i] >= threshold) set(i, maps[i]);
  };
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
  if (state.tool === "accept" && !state.predictions.has(state.doc.entry.id)) {
    setStatus("the prediction is not loaded yet; try again in a moment", true);
    loadPrediction(true);
    return;
  }
  const [x, y] = pixelAt(event);
  state.stroke = { idx: [], before: [], after: [], box: { x0: x, y0: y, x1: x, y1: y }, last: [x, y] };
  state.stroke.paint = painter(state.stroke, state.doc.label);
  paintCapsule(x, y, x, y, state.brush / 2);
  queueRender(state.stroke.box);
}

function extendStroke(event) {
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const e of events.length ? events : [event]) {
    const [x, y] = pixelAt(e);
    const [lx, ly] = state.stroke.last;
    if (x === lx && y === ly) continue;
    paintCapsule(lx, ly, x, y, state.brush / 2);
    state.stroke.last = [x, y];
  }
  queueRender(state.stroke.box);
}

function endStroke() {
  const { idx, before, after, box } = state.stroke;
  state.stroke = null;
  if (!idx.length) return;
  const diff = { idx: Uint32Array.from(idx), before: Uint8Array.from(before), after: Uint8Array.from(after), box };
  pushHistory(state.doc.undo, diff);
  state.doc.redo = [];
  edited(diff, true);
}

function pushHistory(stack, diff) {
  stack.push(diff);
  if (stack.length > HISTORY) stack.shift();
}

function writeDiff(label, diff, forward) {
  const values = forward ? diff.after : diff.before, idx = diff.idx;
  for (let i = 0; i < idx.length; i++) label[idx[i]] = values[i];
}

function undo() {
  const doc = state.doc;
  if (!doc.undo.length || state.stroke) return;
  const diff = doc.undo.pop();
  writeDiff(doc.label, diff, false);
  pushHistory(doc.redo, diff);
  edited(diff, false);
}

function redo() {
  const doc = state.doc;
  if (!doc.redo.length || state.stroke) return;
  const diff = doc.redo.pop();
  writeDiff(doc.label, diff, true);
  pushHistory(doc.undo, diff);
  edited(diff, true);
}

function edited(diff, forward) {
  const doc = state.doc;
  doc.unsaved.push({ diff, forward });
  doc.error = null;
  queueRender(diff.box);
  scheduleSave(doc, SAVE_DELAY_MS);
}

// ------------------------------------------------------------------ rendering

function buildColours() {
  const colours = new Uint32Array(256);
  const view = new DataView(colours.buffer);
  state.session.palette.forEach(([r, g, b], i) => {
    if (!state.hidden.has(i)) view.setUint32(i * 4, ((r << 24) | (g << 16) | (b << 8) | 255) >>> 0, false);
  });
  view.setUint32(IGNORE * 4, 0x000000a0, false);  // ignore: translucent black; unlabeled stays transparent
  state.colours = colours;
}

// Repaint `box` of the label layer at the next frame (null: all of it).
function queueRender(box) {
  const queued = state.renderBox;
  if (box === null || queued === null) state.renderBox = null;
  else if (queued === undefined) state.renderBox = { ...box };
  else growBox(queued, box.x0, box.y0, box.x1, box.y1);
  if (queued !== undefined) return;
  requestAnimationFrame(() => {
    const target = state.renderBox;
    state.renderBox = undefined;
    renderLabel(target);
  });
}

function paintLayer(canvas, fill) {
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(state.width, state.height);
  fill(new Uint32Array(image.data.buffer));
  ctx.putImageData(image, 0, 0);
}

function renderLabel(box = null) {
  if (!state.doc?.label) return;
  const label = state.doc.label, colours = state.colours, w = state.width;
  const { x0, y0, x1, y1 } = box ?? { x0: 0, y0: 0, x1: w - 1, y1: state.height - 1 };
  const bw = x1 - x0 + 1, bh = y1 - y0 + 1;
  const ctx = layers.label.getContext("2d");
  const image = ctx.createImageData(bw, bh);
  const pixels = new Uint32Array(image.data.buffer);
  for (let y = 0; y < bh; y++) {
    const row = (y0 + y) * w + x0;
    for (let x = 0; x < bw; x++) pixels[y * bw + x] = colours[label[row + x]];
  }
  ctx.putImageData(image, x0, y0);
}

function unsurePlane() {
  return $("measure").value === "entropy" ? 2 : 1;
}

function unsureThreshold() {
  return Math.round(Number($("threshold").value) * 2.55);
}

function renderAssist() {
  const maps = state.predictions.get(state.doc.entry.id);
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
  const offset = unsurePlane() * n, threshold = unsureThreshold();
  const magenta = new DataView(new ArrayBuffer(4));
  magenta.setUint32(0, 0xff00ffff, false);
  const unsureColour = new Uint32Array(magenta.buffer)[0];
  let unsure = 0;
  for (let i = 0; i < n; i++) if (maps[offset + i] < threshold) unsure++;
  if (showUnsure) {
    paintLayer(layers.unsure, (pixels) => {
      for (let i = 0; i < n; i++) pixels[i] = maps[offset + i] < threshold ? unsureColour : 0;
    });
  }
  $("assist-status").textContent = `unsure: ${((100 * unsure) / n).toFixed(1)}% of the pixels`;
}

// Fetch the current image's prediction when an overlay or the accept tool needs it (`needed`).
async function loadPrediction(needed = false) {
  const entry = state.doc.entry;
  const wanted = needed || state.tool === "accept" || $("show-prediction").checked || $("show-unsure").checked;
  if (!state.session.model || state.predictions.has(entry.id) || !wanted) return renderAssist();
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
  if (state.doc.entry.id === entry.id) renderAssist();
}

// ------------------------------------------------------------------ view: zoom and pan

function applyView() {
  const v = state.view;
  $("stage").style.transform = `translate(${v.x}px, ${v.y}px) scale(${v.scale})`;
  sizeCursor();
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

// The brush outline: a circle of the brush diameter around the pointer.
function sizeCursor() {
  const size = state.brush * state.view.scale;
  $("cursor").style.width = $("cursor").style.height = `${size}px`;
  $("cursor").style.margin = `${-size / 2}px 0 0 ${-size / 2}px`;
}

function moveCursor(event) {
  const box = $("viewport").getBoundingClientRect();
  $("cursor").style.left = `${event.clientX - box.left}px`;
  $("cursor").style.top = `${event.clientY - box.top}px`;
  $("cursor").hidden = state.spaceDown || !!state.pan;
}

// ------------------------------------------------------------------ images

async function go(index) {
  const images = state.session.images;
  if (state.stroke) endStroke();
  if (index < 0 || index >= images.length) return flushAll();
  const left = state.doc;
  flushAll();  // before any await: the edits of this image are sent first
  const token = ++state.loadToken;
  const entry = images[index];
  const doc = docOf(entry);
  state.opening = doc;  // its labels, if unsaved edits keep them in the page, stay while it loads
  document.body.dataset.ready = "0";
  setStatus(`loading ${entry.id}…`);
  const img = new Image();
  img.src = `api/image/${encodeURIComponent(entry.id)}`;
  const [loaded] = await Promise.all([doc.label ? null : fetchLabel(entry), img.decode()]);
  if (token !== state.loadToken) return;  // a later navigation won
  state.opening = null;
  if (!doc.label) Object.assign(doc, loaded);  // else: unsaved edits of this image are still here
  state.index = index;
  state.doc = doc;
  state.width = entry.width;
  state.height = entry.height;
  if (left && left !== doc) release(left);
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
  if (left && left !== doc && pending(left) && (left.failures || left.error)) {
    setStatus(`warning: ${left.entry.id} has unsaved edits; they are kept and retried (see "unsaved")`, true);
  } else {
    setStatus(`${entry.id}: ${entry.width}x${entry.height}`);
  }
  document.body.dataset.image = entry.id;
  document.body.dataset.readyAt = String(Math.round(performance.now()));  // ms since navigation start
  document.body.dataset.ready = "1";
}

// go() for event handlers: a failure (an unreadable image, a lost server) shows in the status line
function show(index) {
  go(index).catch((err) => setStatus(`cannot show the image: ${err.message}`, true));
}

// The best-scored image without labels other than the current one ("label next").
function nextBest() {
  const images = state.session.images;
  let best = -1;
  images.forEach((entry, i) => {
    const score = state.scores[entry.id]?.score;
    if (i === state.index || entry.labeled_pixels > 0 || score === undefined) return;
    if (best < 0 || score > state.scores[images[best].id].score) best = i;
  });
  if (best < 0) setStatus("no scored unlabeled image left", true);
  else show(best);
}

function updateImageList() {
  state.session.images.forEach((entry, i) => {
    const li = state.items[i];
    li.classList.toggle("labeled", entry.labeled_pixels > 0);
    li.classList.toggle("current", i === state.index);
    const score = state.scores[entry.id];
    li.children[1].textContent = score ? score.score.toFixed(2) : "";
    li.children[1].title = score ? `uncertainty ${score.uncertainty}, class balance ${score.balance}` : "";
  });
  state.items[state.index]?.scrollIntoView({ block: "nearest" });
}

// Show the list in list order or "label next": unlabeled images first, each group by descending score
// (unscored images after the scored ones, in list order).
function sortImages() {
  const images = state.session.images;
  const order = images.map((_, i) => i);
  if (state.order === "score") {
    const labeled = (i) => (images[i].labeled_pixels > 0 ? 1 : 0);
    const score = (i) => state.scores[images[i].id]?.score ?? -Infinity;
    order.sort((a, b) => labeled(a) - labeled(b) || score(b) - score(a) || a - b);
  }
  $("images").append(...order.map((i) => state.items[i]));
}

async function pollRanking() {
  try {
    const response = await fetch("api/ranking");
    const ranking = await response.json();
    if (!response.ok) throw new Error(ranking.error);
    state.scores = ranking.scores;
    const finished = ranking.done === ranking.total || ranking.error;
    $("ranking-status").textContent = ranking.error ? `scoring stopped: ${ranking.error}`
      : finished ? `${ranking.total} images scored` : `scoring ${ranking.done} / ${ranking.total} images…`;
    document.body.dataset.rankingDone = finished ? "1" : "0";
    updateImageList();
    sortImages();
    if (!finished) setTimeout(pollRanking, RANKING_POLL_MS);
  } catch (err) {
    $("ranking-status").textContent = `ranking unavailable: ${err.message}`;
    setTimeout(pollRanking, RANKING_POLL_MS * 4);
  }
}

// ------------------------------------------------------------------ controls

function selectClass(cls) {
  if (cls < 0 || cls >= state.session.classes.length) return;
  state.cls = cls;
  [...$("palette").children].forEach((li, i) => li.classList.toggle("active", i === cls));
  if (state.tool === "eraser" || state.tool === "accept") selectTool("scribble");
}

// Keys 1..9 choose among the classes of one page of nine; ` moves to the next page.
function setClassPage(page) {
  const pages = Math.ceil(state.session.classes.length / 9);
  state.classPage = ((page % pages) + pages) % pages;
  [...$("palette").children].forEach((li, i) => {
    li.querySelector(".key").textContent = Math.floor(i / 9) === state.classPage ? String((i % 9) + 1) : "";
  });
  $("class-page").textContent = pages > 1 ? `keys 1-9: classes ${9 * state.classPage + 1}-` +
    `${Math.min(9 * state.classPage + 9, state.session.classes.length)}, \` for the next nine` : "keys 1-9";
}

function toggleHidden(cls) {
  if (state.hidden.has(cls)) state.hidden.delete(cls);
  else state.hidden.add(cls);
  $("palette").children[cls].classList.toggle("hidden-class", state.hidden.has(cls));
  $("palette").children[cls].querySelector("input").checked = !state.hidden.has(cls);
  buildColours();
  queueRender(null);
  if ($("show-prediction").checked) renderAssist();
}

function selectTool(tool) {
  state.tool = tool;
  document.querySelectorAll("[data-tool]").forEach((b) => b.classList.toggle("active", b.dataset.tool === tool));
  if (tool === "accept") loadPrediction(true);
}

function setBrush(width) {
  state.brush = Math.min(Math.max(width, 1), MAX_BRUSH);
  $("brush").value = state.brush;
  $("brush-value").textContent = state.brush;
  sizeCursor();
}

// `[` / `]`: one pixel at a time up to 10, then about 15%.
function stepBrush(direction) {
  const step = state.brush < 10 || (direction < 0 && state.brush <= 10) ? 1 : Math.max(1, Math.round(state.brush * 0.15));
  setBrush(state.brush + direction * step);
}

function buildControls(session) {
  session.classes.forEach((name, i) => {
    const li = document.createElement("li");
    const [r, g, b] = session.palette[i];
    li.innerHTML = '<span class="key"></span><span class="swatch"></span><span class="name"></span>' +
      '<input type="checkbox" checked title="show this class (H for the selected one)">';
    li.querySelector(".swatch").style.background = `rgb(${r}, ${g}, ${b})`;
    li.querySelector(".name").textContent = name;
    li.dataset.cls = i;
    li.addEventListener("click", (event) => event.target.tagName !== "INPUT" && selectClass(i));
    li.querySelector("input").addEventListener("change", () => toggleHidden(i));
    $("palette").append(li);
  });
  state.items = session.images.map((entry, i) => {
    const li = document.createElement("li");
    li.innerHTML = '<span class="name"></span><span class="score"></span>';
    li.children[0].textContent = entry.id;
    li.title = entry.id;
    li.dataset.id = entry.id;
    li.addEventListener("click", () => show(i));
    $("images").append(li);
    return li;
  });
  document.querySelectorAll("[data-tool]").forEach((b) => b.addEventListener("click", () => selectTool(b.dataset.tool)));
  $("brush").max = MAX_BRUSH;
  $("brush").addEventListener("input", () => setBrush(Number($("brush").value)));
  $("opacity").addEventListener("input", () => (layers.label.style.opacity = $("opacity").value / 100));
  layers.label.style.opacity = $("opacity").value / 100;
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("fit").addEventListener("click", fitView);
  $("actual").addEventListener("click", () => setView(1));
  $("prev").addEventListener("click", () => show(state.index - 1));
  $("next").addEventListener("click", () => show(state.index + 1));
  $("help-button").addEventListener("click", toggleHelp);
  $("help").addEventListener("click", toggleHelp);
  $("assist").hidden = !session.model;
  document.querySelector('[data-tool="accept"]').hidden = !session.model;
  for (const id of ["show-prediction", "show-unsure"]) $(id).addEventListener("change", () => loadPrediction());
  $("measure").addEventListener("change", renderAssist);
  const showThreshold = () => ($("threshold-value").textContent = (Number($("threshold").value) / 100).toFixed(2));
  $("threshold").addEventListener("input", () => { showThreshold(); renderAssist(); });
  showThreshold();
  $("ranking").hidden = !session.ranking;
  $("order").addEventListener("change", () => { state.order = $("order").value; sortImages(); });
  $("next-best").addEventListener("click", nextBest);
  // sliders and menus give the keyboard back, so arrow keys keep moving between images
  document.querySelectorAll("input, select").forEach((el) => el.addEventListener("change", () => el.blur()));
  setBrush(state.brush);
  selectTool("scribble");
  selectClass(0);
  setClassPage(0);
}

function toggle(id) {
  $(id).checked = !$(id).checked;
  loadPrediction();
}

function toggleHelp() {
  $("help").hidden = !$("help").hidden;
}

function onKey(event) {
  if (event.target.tagName === "INPUT" && event.target.type !== "checkbox") return;
  const key = event.key.toLowerCase();
  const ctrl = event.ctrlKey || event.metaKey;
  const model = state.session.model;
  if (ctrl && key === "z") (event.shiftKey ? redo : undo)();
  else if (ctrl && key === "y") redo();
  else if (ctrl) return;
  else if (key === "?") toggleHelp();
  else if (key === "escape") $("help").hidden = true;
  else if (/^[1-9]$/.test(key)) selectClass(9 * state.classPage + Number(key) - 1);
  else if (key === "`") setClassPage(state.classPage + 1);
  else if (key === "h") toggleHidden(state.cls);
  else if (key === "s") selectTool("scribble");
  else if (key === "p") selectTool("point");
  else if (key === "e") selectTool("eraser");
  else if (key === "a" && model) selectTool("accept");
  else if (key === "[") stepBrush(-1);
  else if (key === "]") stepBrush(1);
  else if (key === "arrowright") show(state.index + 1);
  else if (key === "arrowleft") show(state.index - 1);
  else if (key === "n" && state.session.ranking) nextBest();
  else if (key === "m" && model) toggle("show-prediction");
  else if (key === "u" && model) toggle("show-unsure");
  else if (key === "f") fitView();
  else if (key === "0") setView(1);
  else if (key === " ") {
    state.spaceDown = true;
    $("viewport").classList.add("panning");
    $("cursor").hidden = true;
  } else return;
  event.preventDefault();
}

function bindViewport() {
  const viewport = $("viewport");
  viewport.addEventListener("pointerdown", (event) => {
    if (!state.doc?.label || state.stroke || state.pan) return;
    viewport.setPointerCapture(event.pointerId);
    if (event.button === 1 || event.button === 2 || state.spaceDown) {
      state.pan = { x: event.clientX, y: event.clientY, vx: state.view.x, vy: state.view.y };
    } else if (event.button === 0) {
      beginStroke(event);
    }
  });
  viewport.addEventListener("pointermove", (event) => {
    moveCursor(event);
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
  viewport.addEventListener("pointerleave", () => ($("cursor").hidden = true));
  viewport.addEventListener("contextmenu", (event) => event.preventDefault());
  viewport.addEventListener("wheel", (event) => {
    event.preventDefault();
    zoomAt(event.clientX, event.clientY, Math.exp(-event.deltaY * 0.0015));
  }, { passive: false });
  window.addEventListener("resize", () => state.doc && fitView());
  document.addEventListener("keydown", onKey);
  document.addEventListener("keyup", (event) => {
    if (event.key === " ") {
      state.spaceDown = false;
      viewport.classList.remove("panning");
    }
  });
  window.addEventListener("beforeunload", (event) => {
    if (state.stroke) endStroke();
    flushAll();
    if ([...state.docs.values()].some(pending)) {  // the browser asks whether to leave
      event.preventDefault();
      event.returnValue = "";
    }
  });
}

async function main() {
  const response = await fetch("api/session");
  const session = await response.json();
  state.session = session;
  buildColours();
  buildControls(session);
  bindViewport();
  updatePending();
  setProgress(session.progress);
  if (session.ranking) pollRanking();
  const fromHash = decodeURIComponent(location.hash.slice(1));
  let start = session.images.findIndex((e) => e.id === fromHash);
  if (start < 0) start = Math.max(session.images.findIndex((e) => e.labeled_pixels === 0), 0);
  await go(start);
}

main().catch((err) => setStatus(`error: ${err.message}`, true));
