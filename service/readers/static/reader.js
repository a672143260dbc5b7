// RankIQ reader page: fetch the next item, show its images with synchronised zoom/pan and
// window/level, send the answer (keys 1/2/3 or clicks; Likert 1-5; S skips), repeat.
// No third-party code; everything comes from this server. The page state is mirrored in
// document.body.dataset (state, item, position) so a test or an assistive tool can follow it.
"use strict";
(function () {
  const main = document.getElementById("reader");
  const task = main.dataset.task;
  const csrf = main.dataset.csrf;
  const status = document.getElementById("status");
  const progress = document.getElementById("progress");
  const slots = task === "rank" ? ["reference", "left", "right"] : ["reference", "single"];
  const canvases = {};
  for (const s of slots) {
    const c = document.getElementById(s);
    if (c) canvases[s] = c;
  }
  // shared view: zoom factor, pan offset (canvas pixels), window width/level (0-255 grey)
  const view = { zoom: 1, x: 0, y: 0, width: 255, level: 127.5 };
  let item = null;
  let sources = {};   // slot -> {grey: Uint8ClampedArray, w, h, tile: canvas}
  let shownAt = 0;
  let busy = false;

  function setState(state) {
    document.body.dataset.state = state;
    document.body.dataset.item = item ? String(item.id) : "";
    document.body.dataset.position = item ? String(item.position) : "";
  }

  function loadImage(url) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("image failed to load"));
      img.src = url;
    });
  }

  function windowed(src) {
    // grey -> grey through the window: out = (in - (level - width/2)) / width
    const lo = view.level - view.width / 2;
    const scale = 255 / Math.max(view.width, 1);
    const ctx = src.tile.getContext("2d");
    const out = ctx.createImageData(src.w, src.h);
    const g = src.grey;
    for (let i = 0, j = 0; i < g.length; i++, j += 4) {
      const v = (g[i] - lo) * scale;
      out.data[j] = out.data[j + 1] = out.data[j + 2] = v;
      out.data[j + 3] = 255;
    }
    ctx.putImageData(out, 0, 0);
  }

  function draw() {
    for (const [slot, canvas] of Object.entries(canvases)) {
      const src = sources[slot];
      const ctx = canvas.getContext("2d");
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      if (!src) continue;
      const fit = Math.min(canvas.width / src.w, canvas.height / src.h);
      const s = fit * view.zoom;
      ctx.imageSmoothingEnabled = view.zoom < 2;
      ctx.setTransform(s, 0, 0, s, (canvas.width - src.w * s) / 2 + view.x,
                       (canvas.height - src.h * s) / 2 + view.y);
      ctx.drawImage(src.tile, 0, 0);
    }
  }

  function rewindow() {
    for (const src of Object.values(sources)) windowed(src);
    draw();
  }

  async function show(next) {
    item = next;
    sources = {};
    const entries = Object.entries(item.images).filter(([slot]) => canvases[slot]);
    const imgs = await Promise.all(entries.map(([, url]) => loadImage(url)));
    entries.forEach(([slot], k) => {
      const img = imgs[k];
      const tile = document.createElement("canvas");
      tile.width = img.naturalWidth;
      tile.height = img.naturalHeight;
      const ctx = tile.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const rgba = ctx.getImageData(0, 0, tile.width, tile.height).data;
      const grey = new Uint8ClampedArray(tile.width * tile.height);
      for (let i = 0; i < grey.length; i++) grey[i] = rgba[4 * i];
      sources[slot] = { grey, w: tile.width, h: tile.height, tile };
    });
    rewindow();
    progress.textContent = "item " + item.position;
    status.textContent = "";
    shownAt = performance.now();
    busy = false;
    setState("ready");
  }

  async function fetchNext() {
    busy = true;
    setState("loading");
    const r = await fetch("/api/next", { credentials: "same-origin" });
    const body = await r.json();
    if (!r.ok) {
      status.textContent = "Error: " + (body.detail || r.status);
      setState("error");
      return;
    }
    if (body.done) {
      item = null;
      for (const c of Object.values(canvases)) c.getContext("2d").clearRect(0, 0, c.width, c.height);
      status.textContent = "All done: " + body.answered + " answers recorded. Thank you.";
      setState("done");
      return;
    }
    await show(body.item);
  }

  async function answer(choice) {
    if (busy || !item) return;
    busy = true;
    setState("sending");
    const seconds = Math.round((performance.now() - shownAt) / 10) / 100;
    const r = await fetch("/api/vote", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({ presentation: item.id, nonce: item.nonce, choice, seconds }),
    });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      status.textContent = "Not recorded: " + (body.detail || r.status);
      busy = false;
      setState("ready");
      return;
    }
    await fetchNext();
  }

  const keys = task === "rank"
    ? { "1": "left", "2": "right", "3": "similar", s: "skip", S: "skip" }
    : { "1": "1", "2": "2", "3": "3", "4": "4", "5": "5", s: "skip", S: "skip" };
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (keys[e.key]) {
      e.preventDefault();
      answer(keys[e.key]);
    } else if (e.key === "r" || e.key === "R") {
      Object.assign(view, { zoom: 1, x: 0, y: 0, width: 255, level: 127.5 });
      rewindow();
    }
  });
  for (const b of document.querySelectorAll("button[data-choice]")) {
    b.addEventListener("click", () => answer(b.dataset.choice));
  }

  // synchronised zoom/pan (left drag, wheel) and window/level (right or shift drag)
  let drag = null;
  for (const canvas of Object.values(canvases)) {
    canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      view.zoom = Math.min(16, Math.max(1, view.zoom * (e.deltaY < 0 ? 1.2 : 1 / 1.2)));
      draw();
    }, { passive: false });
    canvas.addEventListener("pointerdown", (e) => {
      drag = { x: e.clientX, y: e.clientY, wl: e.button === 2 || e.shiftKey };
      canvas.setPointerCapture(e.pointerId);
    });
    canvas.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      drag.x = e.clientX;
      drag.y = e.clientY;
      if (drag.wl) {
        view.width = Math.min(510, Math.max(1, view.width + dx));
        view.level = Math.min(255, Math.max(0, view.level - dy));
        rewindow();
      } else {
        view.x += dx;
        view.y += dy;
        draw();
      }
    });
    canvas.addEventListener("pointerup", () => { drag = null; });
  }

  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/logout", { method: "POST", credentials: "same-origin",
                             headers: { "X-CSRF-Token": csrf } });
    window.location.href = "/";
  });

  fetchNext().catch((e) => { status.textContent = "Error: " + e.message; setState("error"); });
})();
