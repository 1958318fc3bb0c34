// rtcap's session page (MIT, part of rtcap): draws the data analyzer/page.py computed.
// It loads nothing: every byte it shows is in the page.
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("rtcap-data").textContent);
  const S = D.session || {};
  const M = D.messages;
  const duration = Math.max(D.duration, 0.001);
  const index = new Map(M.seq.map((seq, i) => [seq, i]));
  const lines = D.lines.filter((l) => l.seq !== null);
  const ending = D.lines.find((l) => l.seq === null) || null;
  const lanes = { sent: lines.filter((l) => l.direction === "sent"), received: lines.filter((l) => l.direction === "received") };
  const STATUS = { completed: "#2a9d4b", failed: "#d62828", cancelled: "#e09f1f", incomplete: "#f4a261", dropped: "#8a8f98", in_progress: "#9bb4e0" };
  const ROWS = {
    axis: [0, 22], sent: [26, 58], received: [62, 94], responses: [100, 118], input: [124, 170], output: [176, 222],
  };
  const HEIGHT = 228;
  const LABELS = { sent: "client", received: "server", responses: "responses", input: "input audio", output: "output audio" };

  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child);
    return node;
  };
  const fmt = (t) => (t === null || t === undefined ? "" : Number(t).toFixed(3));

  // -- the page's parts ------------------------------------------------------------
  const failed = D.failures.filter((f) => f.class !== "client");
  const header = el("header", { class: "session" },
    el("h1", { text: S.session_id || "session" }),
    el("div", { class: "facts", text: [S.server_session_id, S.model, S.url, S.started_at && "started " + S.started_at,
      fmt(duration) + " s", M.seq.length + " messages"].filter(Boolean).join(" · ") }));
  const facts = header.querySelector(".facts");
  if (failed.length) facts.append(" · ", el("span", { class: "failed", text: failed.length + (failed.length === 1 ? " failure" : " failures") }));
  if (ending) facts.append(" · ended: " + ending.type + " " + ending.summary);
  const toolbar = el("div", { class: "toolbar" });
  const button = (text, title, action) => { const b = el("button", { type: "button", title, text }); b.onclick = action; toolbar.append(b); return b; };
  const stage = el("div", { id: "stage" });
  const canvas = el("canvas", { id: "lanes", height: String(HEIGHT) });
  const tip = el("div", { id: "tip" });
  stage.append(canvas, tip);
  const json = el("pre", { id: "json", text: "Click an event to see its JSON." });
  const detail = el("div", { id: "detail", text: "" });
  const left = el("div", {}, el("h2", { text: "Event" }), detail, json);
  const right = el("div", {});
  const below = el("div", { class: "below" }, left, right);
  document.body.append(header, toolbar, stage, below);

  const audio = {};
  for (const side of ["input", "output"]) {
    const a = D.audio[side];
    if (!a || !a.src) continue;
    const player = el("audio", { id: "audio-" + side, controls: "", preload: "metadata" });
    if (a.src !== "embedded") player.src = a.src;
    audio[side] = player;
    player.addEventListener("timeupdate", draw);
    right.append(el("div", { class: "audio" }, el("b", { text: LABELS[side] + " (" + a.seconds.toFixed(1) + " s)" }), player));
  }
  const list = (title, id, items, render, seqOf) => {
    if (!items.length) return;
    const ul = el("ul", { class: "list", id });
    for (const item of items) {
      const li = render(item);
      const seq = seqOf(item);
      if (seq !== null && seq !== undefined) li.onclick = () => go(seq);
      ul.append(li);
    }
    right.append(el("h2", { text: title }), ul);
  };
  list("Failures", "failures", D.failures, (f) => el("li", {}, el("span", { class: "t", text: fmt(f.t_s) }),
    el("span", { class: f.class === "client" ? "" : "status-fail", text: (f.seq === null ? "end" : "seq " + f.seq) + " " + f.error_type }),
    " " + (f.message || "")), (f) => (f.seq === null ? lastSeq() : f.seq));
  list("Doctor", "findings", D.findings, (f) => el("li", {},
    el("span", { class: "status-" + f.status, text: f.status.toUpperCase() + " " + f.check }), ": " + f.evidence),
    (f) => (f.seqs.length ? f.seqs[0] : null));
  list("Transcripts", "transcripts", D.transcripts, (t) => el("li", {}, el("span", { class: "t", text: fmt(t.t_s) }),
    el("span", { class: "who", text: t.who }), t.text), (t) => t.seq);

  // -- view: time from t0 to t1 across the canvas ------------------------------------
  let t0 = 0, t1 = duration * 1.02, width = 0, selected = null, hovered = null;
  const x = (t) => ((t - t0) / (t1 - t0)) * width;
  const tAt = (px) => t0 + (px / width) * (t1 - t0);
  const lastSeq = () => (M.seq.length ? M.seq[M.seq.length - 1] : null);
  const setView = (a, b) => {
    const span = Math.min(Math.max(b - a, 0.002), duration * 1.5);
    const mid = (a + b) / 2;
    t0 = mid - span / 2; t1 = mid + span / 2;
    if (t0 < -duration * 0.25) { t1 += -duration * 0.25 - t0; t0 = -duration * 0.25; }
    if (t1 > duration * 1.25) { t0 -= t1 - duration * 1.25; t1 = duration * 1.25; }
    draw();
  };
  const zoom = (factor, at) => { const c = at === undefined ? (t0 + t1) / 2 : at; setView(c - (c - t0) * factor, c + (t1 - c) * factor); };
  button("−", "Zoom out (or the mouse wheel)", () => zoom(2));
  button("+", "Zoom in (or the mouse wheel)", () => zoom(0.5));
  button("All", "The whole session", () => setView(0, duration * 1.02));
  if (failed.length) button("Failure", "Go to the first failure", () => go(failed[0].seq === null ? lastSeq() : failed[0].seq));
  toolbar.append(el("span", { class: "hint", text: "drag to pan, wheel to zoom, click an event for its JSON" }));
  const legend = el("span", { class: "legend" });
  for (const [status, colour] of Object.entries(STATUS)) {
    if (D.responses.some((r) => r.status === status)) {
      const swatch = el("i", {}); swatch.style.background = colour; legend.append(el("span", {}, swatch, status));
    }
  }
  toolbar.append(legend);

  // -- markers: failures, the end, doctor's findings (elements, so they can be read) -----
  const markers = [];
  const marker = (cls, t, label, seq, title) => {
    const m = el("div", { class: "marker " + cls, "data-t": String(t), title: title || label });
    if (seq !== null && seq !== undefined) m.dataset.seq = String(seq);
    const span = el("span", { text: label });
    if (seq !== null && seq !== undefined) span.onclick = () => go(seq);
    m.append(span);
    stage.append(m);
    markers.push(m);
  };
  for (const f of D.failures) {
    if (f.class === "client") continue;
    const label = (f.seq === null ? "" : "seq " + f.seq + " ") + f.error_type + " @ " + fmt(f.t_s) + " s";
    marker("failure", f.t_s, label, f.seq, [f.source, f.error_type, f.code, f.message].filter(Boolean).join(": "));
  }
  if (ending) marker("end" + (ending.failure ? " failed" : ""), ending.t_s, ending.type + " @ " + fmt(ending.t_s) + " s", null, ending.summary);
  for (const f of D.findings) {
    f.seqs.forEach((seq, i) => marker("finding " + f.status, f.t_s[i], f.check, seq, f.status.toUpperCase() + " " + f.check + ": " + f.evidence));
  }

  // -- drawing -----------------------------------------------------------------------
  const hues = new Map();
  const colour = (type) => {
    if (!hues.has(type)) { let h = 0; for (const c of type) h = (h * 31 + c.charCodeAt(0)) >>> 0; hues.set(type, "hsl(" + (h % 360) + ",55%,48%)"); }
    return hues.get(type);
  };
  const ctx = canvas.getContext("2d");
  let pending = false;
  function draw() { if (!pending) { pending = true; requestAnimationFrame(paint); } }
  function paint() {
    pending = false;
    const ratio = window.devicePixelRatio || 1;
    width = stage.clientWidth;
    if (canvas.width !== Math.round(width * ratio)) { canvas.width = Math.round(width * ratio); canvas.height = Math.round(HEIGHT * ratio); }
    canvas.style.height = HEIGHT + "px";
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, HEIGHT);
    ctx.font = "11px system-ui, sans-serif";
    // axis
    const step = niceStep((t1 - t0) / Math.max(width / 90, 1));
    ctx.fillStyle = "#5c6675"; ctx.strokeStyle = "#eef0f3";
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
      const px = x(t);
      ctx.beginPath(); ctx.moveTo(px, ROWS.axis[1]); ctx.lineTo(px, HEIGHT); ctx.stroke();
      ctx.fillText(label(t, step), px + 2, 14);
    }
    for (const lane of ["sent", "received"]) drawLane(lane);
    const [ry0, ry1] = ROWS.responses;
    for (const r of D.responses) {
      const a = r.created_t_s ?? r.done_t_s, b = r.done_t_s ?? duration;
      const xa = x(a), xb = Math.max(x(b), xa + 2);
      if (xb < 0 || xa > width) continue;
      ctx.fillStyle = STATUS[r.status] || "#8a8f98";
      ctx.fillRect(xa, ry0, xb - xa, ry1 - ry0);
    }
    for (const side of ["input", "output"]) drawWave(side);
    ctx.fillStyle = "rgba(255,255,255,.8)";
    for (const [row, text] of Object.entries(LABELS)) {
      const [y0] = ROWS[row]; const w = ctx.measureText(text).width + 6;
      ctx.fillRect(0, y0, w, 13); ctx.fillStyle = "#5c6675"; ctx.fillText(text, 3, y0 + 10); ctx.fillStyle = "rgba(255,255,255,.8)";
    }
    for (const side of Object.keys(audio)) {
      const t = sessionTime(side, audio[side].currentTime);
      if (t === null || audio[side].currentTime === 0) continue;
      ctx.strokeStyle = "#2f6fdb"; ctx.beginPath(); ctx.moveTo(x(t), ROWS.axis[1]); ctx.lineTo(x(t), HEIGHT); ctx.stroke();
    }
    for (const m of markers) {
      const px = x(Number(m.dataset.t));
      m.style.display = px < -1 || px > width + 1 ? "none" : "";
      m.style.left = px + "px"; m.style.height = HEIGHT + "px";
    }
    window.rtcap.drawn += 1;
    if (window.rtcap.readyAt === null) { window.rtcap.readyAt = performance.now(); window.rtcap.ready = true; }
  }
  function drawLane(lane) {
    const [y0, y1] = ROWS[lane];
    const items = lanes[lane];
    let i = Math.max(0, firstFrom(items, t0) - 1);
    let lastPx = -10, lastColour = "";
    for (; i < items.length; i++) {
      const l = items[i];
      if (l.t_s > t1) break;
      const xa = x(l.t_s), xb = Math.max(x(l.end_t), xa + 1.5);
      const c = l.failure ? "#d62828" : colour(l.type);
      if (xb - xa < 2 && Math.abs(xa - lastPx) < 0.5 && c === lastColour) continue; // one pixel already drawn
      ctx.fillStyle = c;
      ctx.fillRect(xa, l.failure ? y0 - 2 : y0 + 4, xb - xa, l.failure ? y1 - y0 + 4 : y1 - y0 - 8);
      lastPx = xa; lastColour = c;
    }
    if (selected) {
      const l = selected.line;
      if (l.direction === lane) {
        ctx.strokeStyle = "#1d2430"; ctx.lineWidth = 2;
        ctx.strokeRect(x(l.t_s) - 2, y0 + 1, Math.max(x(l.end_t) - x(l.t_s), 1.5) + 4, y1 - y0 - 2); ctx.lineWidth = 1;
      }
    }
  }
  function drawWave(side) {
    const a = D.audio[side];
    const [y0, y1] = ROWS[side];
    const mid = (y0 + y1) / 2, half = (y1 - y0) / 2 - 2;
    ctx.strokeStyle = "#eef0f3"; ctx.beginPath(); ctx.moveTo(0, mid); ctx.lineTo(width, mid); ctx.stroke();
    if (!a || !a.peaks.length) return;
    const n = a.peaks.length, per = duration / n;
    ctx.fillStyle = side === "input" ? "#2f6fdb" : "#7b4bc4";
    const from = Math.max(0, Math.floor(t0 / per)), to = Math.min(n, Math.ceil(t1 / per));
    // several peaks to a pixel: their maximum, one bar per pixel
    let px = -1, level = 0;
    for (let i = from; i < to; i++) {
      const p = Math.floor(x(i * per));
      if (p !== px) { if (level > 0) bar(px, level); px = p; level = 0; }
      level = Math.max(level, a.peaks[i]);
      const next = Math.floor(x((i + 1) * per));
      if (next > p + 1) { bar(p, level, next - p); px = -1; level = 0; }
    }
    if (level > 0) bar(px, level);
    function bar(p, v, w) { const h = Math.max(v * half, 0.5); ctx.fillRect(p, mid - h, w || 1, 2 * h); }
  }
  function niceStep(raw) {
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 5, 10]) if (raw <= m * p) return m * p;
    return 10 * p;
  }
  function label(t, step) { return step >= 1 ? Math.round(t) + " s" : t.toFixed(Math.min(3, Math.ceil(-Math.log10(step)))) + " s"; }
  function firstFrom(items, t) { // the first item whose span may reach t
    let lo = 0, hi = items.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (items[mid].t_s < t) lo = mid + 1; else hi = mid; }
    return lo;
  }

  // -- audio time and session time ---------------------------------------------------
  function sessionTime(side, at) {
    for (const [st, aud, secs] of D.audio[side].segments) if (at >= aud && at <= aud + secs) return st + (at - aud);
    return null;
  }
  function audioTime(side, t) {
    for (const [st, aud, secs] of D.audio[side].segments) if (t >= st && t <= st + secs) return aud + (t - st);
    return null;
  }

  // -- the mouse -----------------------------------------------------------------------
  function hit(px, py) {
    for (const lane of ["sent", "received"]) {
      const [y0, y1] = ROWS[lane];
      if (py < y0 - 2 || py > y1 + 2) continue;
      const items = lanes[lane], t = tAt(px);
      let best = null, dist = 6;
      for (let i = Math.max(0, firstFrom(items, t) - 40); i < items.length && items[i].t_s <= tAt(px + 6); i++) {
        const l = items[i], xa = x(l.t_s), xb = Math.max(x(l.end_t), xa + 1.5);
        const d = px < xa ? xa - px : px > xb ? px - xb : 0;
        if (d <= dist) { best = l; dist = d; }
      }
      return best;
    }
    return null;
  }
  const position = (ev) => { const r = canvas.getBoundingClientRect(); return [ev.clientX - r.left, ev.clientY - r.top]; };
  let drag = null;
  canvas.addEventListener("pointerdown", (ev) => { drag = { x: ev.clientX, t0, t1, moved: false }; canvas.setPointerCapture(ev.pointerId); });
  canvas.addEventListener("pointermove", (ev) => {
    const [px, py] = position(ev);
    if (drag) {
      const dx = ev.clientX - drag.x;
      if (Math.abs(dx) > 3) { drag.moved = true; stage.classList.add("dragging"); }
      if (drag.moved) { const dt = (dx / width) * (drag.t1 - drag.t0); setView(drag.t0 - dt, drag.t1 - dt); }
      return;
    }
    const l = hit(px, py);
    if (l !== hovered) { hovered = l; showTip(l, px, py); } else if (l) moveTip(px, py);
  });
  canvas.addEventListener("pointerleave", () => { hovered = null; tip.style.display = "none"; });
  canvas.addEventListener("pointerup", (ev) => {
    const was = drag; drag = null; stage.classList.remove("dragging");
    if (!was || was.moved) return;
    const [px, py] = position(ev);
    const l = hit(px, py);
    if (l) { select(l.seq); remember(l.seq); return; }
    for (const side of Object.keys(audio)) {
      const [y0, y1] = ROWS[side];
      const at = py >= y0 && py <= y1 ? audioTime(side, tAt(px)) : null;
      if (at !== null) { audio[side].currentTime = at; draw(); }
    }
  });
  canvas.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const [px] = position(ev);
    zoom(Math.exp(Math.max(-1, Math.min(1, ev.deltaY * 0.002))), tAt(px));
  }, { passive: false });
  document.addEventListener("keydown", (ev) => {
    if (ev.target.closest && ev.target.closest("input, textarea, audio")) return;
    const span = t1 - t0;
    if (ev.key === "+" || ev.key === "=") zoom(0.5);
    else if (ev.key === "-") zoom(2);
    else if (ev.key === "ArrowLeft") setView(t0 - span / 5, t1 - span / 5);
    else if (ev.key === "ArrowRight") setView(t0 + span / 5, t1 + span / 5);
  });
  function showTip(l, px, py) {
    if (!l) { tip.style.display = "none"; return; }
    const seqs = l.count > 1 ? "seq " + l.seq + "-" + l.last_seq + " (" + l.count + ")" : "seq " + l.seq;
    tip.textContent = seqs + " · " + fmt(l.t_s) + " s · " + (l.direction === "sent" ? "client → server" : "server → client") +
      "\n" + (l.failure ? "FAILED " : "") + l.type + (l.summary ? "\n" + l.summary.slice(0, 300) : "");
    tip.style.display = "block";
    moveTip(px, py);
  }
  function moveTip(px, py) {
    tip.style.left = Math.min(px + 12, Math.max(width - tip.offsetWidth - 4, 0)) + "px";
    tip.style.top = (py + 14) + "px";
  }

  // -- selection and #seq=N ------------------------------------------------------------
  function lineOf(seq) {
    for (const l of lines) if (l.seq <= seq && seq <= l.last_seq) return l;
    return null;
  }
  function select(seq) {
    const line = lineOf(seq);
    const i = index.get(seq);
    if (!line || i === undefined) return false;
    selected = { seq, line };
    const payload = M.payload[i];
    let text;
    if (payload === null) text = "(a binary message)";
    else { try { text = JSON.stringify(JSON.parse(payload), null, 2); } catch (e) { text = payload; } }
    detail.textContent = "seq " + seq + " · " + fmt(M.t_s[i]) + " s · " + (M.direction[i] === "sent" ? "client → server" : "server → client") +
      (line.count > 1 ? " · in a run of " + line.count + " (seq " + line.seq + "-" + line.last_seq + ")" : "");
    json.textContent = text;
    json.dataset.seq = String(seq);
    draw();
    return true;
  }
  function remember(seq) {
    try { history.replaceState(null, "", "#seq=" + seq); } catch (e) { location.hash = "seq=" + seq; }
  }
  function go(seq) {
    if (seq === null || seq === undefined) return;
    const i = index.get(seq);
    if (i === undefined) return;
    const t = M.t_s[i], span = Math.min(t1 - t0, Math.max(duration / 8, 4));
    setView(t - span / 2, t + span / 2);
    select(seq);
    remember(seq);
  }
  function fromHash() {
    const found = /(?:^#|&)seq=(\d+)/.exec(location.hash);
    if (found) go(Number(found[1]));
    else if (location.hash === "#failure" && failed.length) go(failed[0].seq === null ? lastSeq() : failed[0].seq);
    else if (D.focus !== null && D.focus !== undefined) go(D.focus);
  }
  window.addEventListener("hashchange", fromHash);
  window.addEventListener("resize", draw);

  window.rtcap = {
    ready: false, readyAt: null, drawn: 0,
    view: () => [t0, t1],
    x: (t) => canvas.getBoundingClientRect().left + x(t),
    point: (seq) => {
      const l = lineOf(seq);
      if (!l) return null;
      const r = canvas.getBoundingClientRect(), [y0, y1] = ROWS[l.direction];
      const i = index.get(seq);
      return { x: r.left + x(M.t_s[i]) + 0.5, y: r.top + (y0 + y1) / 2 };
    },
    go, select, setView,
    // embedded audio comes after this script, so that the page draws first
    attachAudio: () => {
      for (const side of Object.keys(audio)) {
        const data = document.getElementById("rtcap-audio-" + side);
        if (data) audio[side].src = data.textContent;
      }
    },
  };
  fromHash();
  draw();
})();
