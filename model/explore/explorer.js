// specetl explore: a latent-map scatter on one <canvas>, with hover, click → spectrum panel,
// a top-outlier list, colour choice, zoom (wheel) and pan (drag), and a selection (box or lasso
// on the map, ticks in the top list) saved as CSV. No library, no network: the
// data arrive inline as JSON in <script id="data">. Exposed as window.explorer (tests use it).
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("data").textContent);
  const N = D.points.x.length;
  const $ = (id) => document.getElementById(id);

  function f32(b64) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new Float32Array(bytes.buffer);
  }
  const waveObs = f32(D.wave_obs);
  const waveRest = f32(D.wave_rest);
  const spectra = {}; // point index → {flux, model, rest} (decoded lazily)
  const specIndex = {};
  D.spectra.forEach((s) => (specIndex[s.i] = s));

  // --- colour scales ---------------------------------------------------------------------
  // viridis, 9 stops; categorical: tableau 10
  const VIR = [[68,1,84],[71,44,122],[59,81,139],[44,113,142],[33,144,141],[39,173,129],[92,200,99],[170,220,50],[253,231,37]];
  const CAT = ["#4e79a7","#f28e2b","#e15759","#76b7b2","#59a14f","#edc948","#b07aa1","#ff9da7","#9c755f","#bab0ac"];
  function viridis(t) {
    t = Math.min(1, Math.max(0, t)) * (VIR.length - 1);
    const i = Math.min(VIR.length - 2, Math.floor(t)), f = t - i, a = VIR[i], b = VIR[i + 1];
    return "rgb(" + [0, 1, 2].map((k) => Math.round(a[k] + f * (b[k] - a[k]))).join(",") + ")";
  }
  const PALETTE = Array.from({ length: 64 }, (_, k) => viridis(k / 63));
  let colourIdx = new Uint8Array(N), legend = "";

  function setColour(name) {
    const col = D.points.colour[name];
    if (col.categories) {
      for (let i = 0; i < N; i++) colourIdx[i] = col.values[i];
      legend = col.categories.map((c, k) => `<span style="color:${CAT[k % 10]}">●</span> ${c}`).join(" &nbsp;");
    } else {
      const v = col.values.filter((x) => x !== null && isFinite(x)).slice().sort((a, b) => a - b);
      const lo = v[Math.floor(0.01 * (v.length - 1))], hi = v[Math.floor(0.99 * (v.length - 1))];
      for (let i = 0; i < N; i++) {
        const x = col.values[i];
        colourIdx[i] = x === null ? 0 : Math.round(63 * Math.min(1, Math.max(0, (x - lo) / (hi - lo || 1))));
      }
      legend = `${col.label}: <span class="bar"></span> ${fmt(lo)} … ${fmt(hi)} (1st–99th percentile)`;
    }
    current.colour = name;
    $("legend").innerHTML = legend;
    draw();
  }
  function fillOf(i) {
    const col = D.points.colour[current.colour];
    return col.categories ? CAT[colourIdx[i] % 10] : PALETTE[colourIdx[i]];
  }
  function fmt(x) {
    if (x === null || x === undefined || !isFinite(x)) return "–";
    return Math.abs(x) >= 1000 || (Math.abs(x) < 0.01 && x !== 0) ? x.toExponential(2) : x.toFixed(3);
  }

  // --- view ------------------------------------------------------------------------------
  const cv = $("map"), ctx = cv.getContext("2d");
  const X = D.points.x, Y = D.points.y;
  let xmin = Infinity, xmax = -Infinity, ymin = Infinity, ymax = -Infinity;
  for (let i = 0; i < N; i++) {
    xmin = Math.min(xmin, X[i]); xmax = Math.max(xmax, X[i]);
    ymin = Math.min(ymin, Y[i]); ymax = Math.max(ymax, Y[i]);
  }
  const padx = 0.05 * (xmax - xmin || 1), pady = 0.05 * (ymax - ymin || 1);
  xmin -= padx; xmax += padx; ymin -= pady; ymax += pady;
  const current = { colour: D.default_colour, selected: -1, hover: -1 };
  const chosen = new Set(); // the selection to save as CSV (point indices)
  let lassoPath = null; // [[px, py], …] of a box or lasso being drawn
  let view = { x0: xmin, x1: xmax, y0: ymin, y1: ymax };
  const W = () => cv.width, H = () => cv.height;
  const sx = (x) => ((x - view.x0) / (view.x1 - view.x0)) * W();
  const sy = (y) => H() - ((y - view.y0) / (view.y1 - view.y0)) * H();
  const dx = (px) => view.x0 + (px / W()) * (view.x1 - view.x0);
  const dy = (py) => view.y0 + ((H() - py) / H()) * (view.y1 - view.y0);

  // draw order: by colour bucket, so each bucket is one fillStyle change; outliers drawn last
  let order = null;
  function draw() {
    ctx.clearRect(0, 0, W(), H());
    if (!order || order.colour !== current.colour) {
      const idx = Array.from({ length: N }, (_, i) => i);
      idx.sort((a, b) => colourIdx[a] - colourIdx[b]);
      order = { colour: current.colour, idx: idx };
    }
    const r = N > 20000 ? 1.5 : 2.5;
    let last = null;
    for (const i of order.idx) {
      const f = fillOf(i);
      if (f !== last) { ctx.fillStyle = f; last = f; }
      ctx.fillRect(sx(X[i]) - r, sy(Y[i]) - r, 2 * r, 2 * r);
    }
    ctx.strokeStyle = "#d62728"; ctx.lineWidth = 1.5;
    for (const i of D.top) { ctx.beginPath(); ctx.arc(sx(X[i]), sy(Y[i]), 5, 0, 7); ctx.stroke(); }
    if (chosen.size) {
      ctx.strokeStyle = "#ff7f0e"; ctx.lineWidth = 1.5;
      for (const i of chosen) ctx.strokeRect(sx(X[i]) - r - 2, sy(Y[i]) - r - 2, 2 * r + 4, 2 * r + 4);
    }
    if (lassoPath && lassoPath.length > 1) {
      ctx.strokeStyle = "#ff7f0e"; ctx.lineWidth = 1; ctx.setLineDash([4, 3]); ctx.beginPath();
      const pts = tool() === "box" ? boxCorners(lassoPath) : lassoPath;
      pts.forEach(([x, y], k) => (k ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.closePath(); ctx.stroke(); ctx.setLineDash([]);
    }
    if (current.selected >= 0) {
      const i = current.selected;
      ctx.strokeStyle = "#000"; ctx.lineWidth = 2.5;
      ctx.beginPath(); ctx.arc(sx(X[i]), sy(Y[i]), 9, 0, 7); ctx.stroke();
    }
    $("axes").textContent = `${D.axes[0]} ${fmt(view.x0)} … ${fmt(view.x1)}   ${D.axes[1]} ${fmt(view.y0)} … ${fmt(view.y1)}`;
  }

  // nearest point through a fixed grid in data space (built once: O(N))
  const G = 256, grid = new Map();
  const gx = (x) => Math.min(G - 1, Math.max(0, Math.floor(((x - xmin) / (xmax - xmin)) * G)));
  const gy = (y) => Math.min(G - 1, Math.max(0, Math.floor(((y - ymin) / (ymax - ymin)) * G)));
  for (let i = 0; i < N; i++) {
    const k = gx(X[i]) * G + gy(Y[i]);
    if (!grid.has(k)) grid.set(k, []);
    grid.get(k).push(i);
  }
  function nearest(px, py, maxPx) {
    const x = dx(px), y = dy(py);
    const rx = (maxPx / W()) * (view.x1 - view.x0), ry = (maxPx / H()) * (view.y1 - view.y0);
    let best = -1, bestD = maxPx * maxPx;
    for (let a = gx(x - rx); a <= gx(x + rx); a++)
      for (let b = gy(y - ry); b <= gy(y + ry); b++)
        for (const i of grid.get(a * G + b) || []) {
          const d = (sx(X[i]) - px) ** 2 + (sy(Y[i]) - py) ** 2;
          if (d <= bestD) { bestD = d; best = i; }
        }
    return best;
  }
  function canvasXY(ev) {
    const r = cv.getBoundingClientRect();
    return [((ev.clientX - r.left) * W()) / r.width, ((ev.clientY - r.top) * H()) / r.height];
  }

  // --- interaction -----------------------------------------------------------------------
  let drag = null;
  const tool = () => document.querySelector('input[name="tool"]:checked').value;
  function boxCorners(path) {
    const [x0, y0] = path[0], [x1, y1] = path[path.length - 1];
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]];
  }
  function inside(poly, x, y) { // even-odd rule
    let c = false;
    for (let a = 0, b = poly.length - 1; a < poly.length; b = a++) {
      const [xa, ya] = poly[a], [xb, yb] = poly[b];
      if ((ya > y) !== (yb > y) && x < ((xb - xa) * (y - ya)) / (yb - ya) + xa) c = !c;
    }
    return c;
  }
  // points inside a box or lasso drawn in canvas pixels; shift adds them to the selection
  function chooseInside(poly, add) {
    if (!add) chosen.clear();
    for (let i = 0; i < N; i++) if (inside(poly, sx(X[i]), sy(Y[i]))) chosen.add(i);
    selectionChanged();
  }
  cv.addEventListener("mousedown", (ev) => {
    drag = { xy: canvasXY(ev), view: { ...view }, moved: false };
    if (tool() !== "pan") lassoPath = [drag.xy];
  });
  window.addEventListener("mouseup", (ev) => {
    if (drag && !drag.moved) {
      const [px, py] = canvasXY(ev);
      const i = nearest(px, py, 8);
      if (i >= 0) select(i);
    } else if (drag && lassoPath) {
      lassoPath.push(canvasXY(ev));
      chooseInside(tool() === "box" ? boxCorners(lassoPath) : lassoPath, ev.shiftKey);
    }
    drag = null;
    if (lassoPath) { lassoPath = null; draw(); }
  });
  cv.addEventListener("mousemove", (ev) => {
    const [px, py] = canvasXY(ev);
    if (drag) {
      const mx = px - drag.xy[0], my = py - drag.xy[1];
      if (Math.abs(mx) + Math.abs(my) > 3) drag.moved = true;
      if (drag.moved && lassoPath) { lassoPath.push([px, py]); draw(); return; }
      if (drag.moved) {
        const v = drag.view, kx = (v.x1 - v.x0) / W(), ky = (v.y1 - v.y0) / H();
        view = { x0: v.x0 - mx * kx, x1: v.x1 - mx * kx, y0: v.y0 + my * ky, y1: v.y1 + my * ky };
        draw();
      }
      return;
    }
    const i = nearest(px, py, 8), tip = $("tip");
    if (i < 0) { tip.style.display = "none"; return; }
    tip.style.display = "block";
    tip.style.left = ev.pageX + 12 + "px"; tip.style.top = ev.pageY + 12 + "px";
    tip.innerHTML = `<b>${D.points.id[i]}</b><br>z ${fmt(D.points.z[i])}<br>score ${fmt(D.points.score[i])} (rank ${D.points.rank[i]})`;
  });
  cv.addEventListener("mouseleave", () => ($("tip").style.display = "none"));
  cv.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const [px, py] = canvasXY(ev), x = dx(px), y = dy(py), k = ev.deltaY > 0 ? 1.25 : 0.8;
    view = { x0: x - (x - view.x0) * k, x1: x + (view.x1 - x) * k, y0: y - (y - view.y0) * k, y1: y + (view.y1 - y) * k };
    draw();
  }, { passive: false });
  $("reset").addEventListener("click", () => { view = { x0: xmin, x1: xmax, y0: ymin, y1: ymax }; draw(); });
  $("colour").addEventListener("change", (ev) => setColour(ev.target.value));

  // --- the object panel ------------------------------------------------------------------
  function decoded(i) {
    if (!(i in specIndex)) return null;
    if (!spectra[i]) {
      const s = specIndex[i];
      spectra[i] = { flux: f32(s.flux), model: f32(s.model), rest: f32(s.rest) };
    }
    return spectra[i];
  }
  function plot(canvas, series, xlabel) {
    const c = canvas.getContext("2d"), w = canvas.width, h = canvas.height, m = 34;
    c.clearRect(0, 0, w, h);
    let x0 = Infinity, x1 = -Infinity, vals = [];
    for (const s of series) for (let k = 0; k < s.x.length; k++) if (isFinite(s.y[k])) {
      x0 = Math.min(x0, s.x[k]); x1 = Math.max(x1, s.x[k]); vals.push(s.y[k]);
    }
    vals.sort((a, b) => a - b);
    const y0 = Math.min(0, vals[Math.floor(0.005 * (vals.length - 1))]);
    const y1 = vals[Math.floor(0.995 * (vals.length - 1))] * 1.1 || 1;
    const px = (x) => m + ((x - x0) / (x1 - x0)) * (w - m - 8), py = (y) => h - m + 8 - ((y - y0) / (y1 - y0)) * (h - m);
    c.strokeStyle = "#999"; c.lineWidth = 1; c.strokeRect(m, 0, w - m - 8, h - m + 8);
    c.fillStyle = "#333"; c.font = "11px sans-serif";
    c.fillText(fmt(x0), m, h - 12); c.fillText(fmt(x1), w - 60, h - 12);
    c.fillText(xlabel, w / 2 - 40, h - 2); c.fillText(fmt(y1), 2, 12); c.fillText(fmt(y0), 2, h - m + 6);
    let drawn = 0;
    for (const s of series) {
      c.strokeStyle = s.colour; c.lineWidth = s.width; c.beginPath();
      let pen = false;
      for (let k = 0; k < s.x.length; k++) {
        if (!isFinite(s.y[k])) { pen = false; continue; }
        const X1 = px(s.x[k]), Y1 = py(Math.max(y0, Math.min(y1, s.y[k])));
        if (pen) c.lineTo(X1, Y1); else c.moveTo(X1, Y1);
        pen = true; drawn++;
      }
      c.stroke();
    }
    c.fillStyle = "#333";
    series.forEach((s, k) => { c.fillStyle = s.colour; c.fillText(s.label, w - 230 + 80 * k, 12); });
    canvas.dataset.drawnPoints = drawn;
    return drawn;
  }
  function select(i) {
    current.selected = i;
    draw();
    const p = D.points, id = p.id[i];
    let html = `<h3 id="obj-id">${id}</h3><table>`;
    for (const [k, v] of Object.entries(p.info)) html += `<tr><td>${k}</td><td>${typeof v[i] === "number" && !Number.isInteger(v[i]) ? fmt(v[i]) : v[i]}</td></tr>`;
    html += "</table>";
    if (p.linkable[i]) {
      const url = D.link_template.replace("{id}", encodeURIComponent(id));
      html += `<p><a id="obj-link" href="${url}" target="_blank" rel="noopener">SkyServer page of ${id}</a></p>`;
    }
    $("info").innerHTML = html;
    const s = decoded(i), so = $("spec-obs"), sr = $("spec-rest");
    if (!s) {
      $("nospec").style.display = "block";
      so.style.display = sr.style.display = "none";
      so.dataset.drawnPoints = 0;
      return;
    }
    $("nospec").style.display = "none";
    so.style.display = sr.style.display = "block";
    const z = p.z[i], restOfObs = waveObs.map((w) => w / (1 + z));
    plot(so, [
      { x: waveObs, y: s.flux, colour: "#888", width: 1, label: "observed" },
      { x: waveObs, y: s.model, colour: "#d62728", width: 1.5, label: "reconstruction" },
    ], "observed wavelength (Å)");
    plot(sr, [
      { x: restOfObs, y: s.flux, colour: "#bbb", width: 1, label: "data at 1/(1+z)" },
      { x: waveRest, y: s.rest, colour: "#1f77b4", width: 1.5, label: "restframe model" },
    ], "restframe wavelength (Å)");
  }

  // --- top outliers ----------------------------------------------------------------------
  const list = $("top");
  D.top.forEach((i) => {
    const li = document.createElement("li");
    li.innerHTML = `<input type="checkbox" class="pick" data-i="${i}" title="add to the selection"> <a href="#" data-i="${i}">#${D.points.rank[i]} ${D.points.id[i]}</a> <small>score ${fmt(D.points.score[i])}</small>`;
    li.querySelector("a").addEventListener("click", (ev) => { ev.preventDefault(); select(i); });
    li.querySelector("input").addEventListener("change", (ev) => {
      if (ev.target.checked) chosen.add(i); else chosen.delete(i);
      selectionChanged();
    });
    list.appendChild(li);
  });

  // --- the selection, saved as CSV ---------------------------------------------------------
  // columns: SPECOBJID, the release's object key, RA, DEC, then the panel's columns (Z, scores,
  // SPLIT, CLASS) and where the row came from; names as in the embedding, so TOPCAT and
  // `specetl embed --spectra --catalog` read it back
  function csvCell(v) {
    if (v === null || v === undefined) return "";
    const t = String(v);
    return /[",\r\n]/.test(t) ? `"${t.replace(/"/g, '""')}"` : t;
  }
  function selectionCSV() {
    const p = D.points, ex = D.export, rows = Array.from(chosen).sort((a, b) => p.rank[a] - p.rank[b]);
    const first = Object.keys(ex).filter((k) => !D.export_after.includes(k));
    const cols = [["SPECOBJID", p.id], ...first.map((k) => [k, ex[k]]),
      ...Object.entries(p.info), ...D.export_after.map((k) => [k, ex[k]])];
    const lines = [cols.map(([k]) => k).join(",")];
    for (const i of rows) lines.push(cols.map(([, v]) => csvCell(v[i])).join(","));
    return lines.join("\n") + "\n";
  }
  function saveSelection() {
    const blob = new Blob([selectionCSV()], { type: "text/csv" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = D.csv_name;
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }
  function selectionChanged() {
    $("nsel").textContent = chosen.size;
    $("sel-save").disabled = chosen.size === 0;
    document.querySelectorAll("#top input.pick").forEach((c) => (c.checked = chosen.has(+c.dataset.i)));
    draw();
  }
  $("sel-top").addEventListener("click", () => { D.top.forEach((i) => chosen.add(i)); selectionChanged(); });
  $("sel-clear").addEventListener("click", () => { chosen.clear(); selectionChanged(); });
  $("sel-save").addEventListener("click", saveSelection);
  const sel = $("colour");
  Object.entries(D.points.colour).forEach(([k, c]) => {
    const o = document.createElement("option");
    o.value = k; o.textContent = c.label; sel.appendChild(o);
  });
  sel.value = D.default_colour;
  setColour(D.default_colour);
  selectionChanged();

  window.explorer = {
    n: N,
    select: select,
    // canvas-pixel → page-pixel position of point i (for tests and scripting)
    screenPos: (i) => {
      const r = cv.getBoundingClientRect();
      return [r.left + (sx(X[i]) * r.width) / W(), r.top + (sy(Y[i]) * r.height) / H()];
    },
    hasSpectrum: (i) => i in specIndex,
    selection: () => Array.from(chosen).sort((a, b) => a - b),
    selectionCSV: selectionCSV,
    withSpectrum: () => D.spectra.map((s) => s.i),
  };
  document.body.dataset.ready = "1";
})();
