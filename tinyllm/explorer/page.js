// The backward explorer: draws the graph tinyllm.explorer laid out, fills the card of a clicked
// node, and steps through the backward in the engine's order. Plain DOM and SVG, no library.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("explorer-data").textContent);
  const NS = "http://www.w3.org/2000/svg";
  const W = 150, H = 38, PAD = 10;
  const svg = document.getElementById("graph");
  const card = document.getElementById("card");
  const total = data.nodes.length;
  const byIndex = new Map(data.nodes.map((n) => [n.index, n]));
  const elOf = new Map();                 // forward index -> the node's <g>
  let step = 0;                           // nodes 1..step of the backward have run

  function make(tag, attrs, parent) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (parent) parent.appendChild(e);
    return e;
  }
  function html(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  const xy = (n) => data.xy[n.forward];
  // a parameter's last two name parts fit a node ("c_attn.weight"); the card has the whole
  const short = (name) => name.split(".").slice(-2).join(".");
  const shape = (s) => "(" + s.join(", ") + ")";

  // ---- the drawing -------------------------------------------------------------------------
  let maxX = 0, maxY = 0;
  for (const n of data.nodes) {
    const [x, y] = xy(n);
    maxX = Math.max(maxX, x); maxY = Math.max(maxY, y);
  }
  const depth = Math.max(1, ...data.nodes.map((n) => (n.module ? n.module.split(".").length : 0)));
  const M = PAD + depth * 7 + 24;          // room for the module boxes around the nodes
  svg.setAttribute("width", maxX + W / 2 + 2 * M);
  svg.setAttribute("height", maxY + H / 2 + 2 * M);
  const root = make("g", {transform: `translate(${M},${M})`}, svg);
  const gGroups = make("g", {}, root), gEdges = make("g", {}, root), gNodes = make("g", {}, root);

  // module groups: every prefix of a node's module path, the root (all nodes) left out
  const groups = new Map();
  for (const n of data.nodes) {
    if (!n.module) continue;
    const parts = n.module.split(".");
    for (let k = 1; k <= parts.length; k++) {
      const path = parts.slice(0, k).join(".");
      const [x, y] = xy(n);
      const g = groups.get(path) || {path: path, depth: k, x0: x, y0: y, x1: x, y1: y,
                                     members: []};
      g.x0 = Math.min(g.x0, x); g.x1 = Math.max(g.x1, x);
      g.y0 = Math.min(g.y0, y); g.y1 = Math.max(g.y1, y);
      g.members.push(n.forward);
      groups.set(path, g);
    }
  }
  const maxDepth = Math.max(1, ...[...groups.values()].map((g) => g.depth));
  const drawn = [...groups.values()]        // the model itself (its class name) left out
    .filter((g) => g.path !== data.root && g.members.length < total && g.members.length > 1)
    .sort((a, b) => a.depth - b.depth);
  for (const g of drawn) {
    const pad = PAD + (maxDepth - g.depth) * 7;
    const e = make("g", {"class": "module", "data-path": g.path}, gGroups);
    make("rect", {x: g.x0 - W / 2 - pad, y: g.y0 - H / 2 - pad - 12,
                  width: g.x1 - g.x0 + W + 2 * pad, height: g.y1 - g.y0 + H + 2 * pad + 12}, e);
    const t = make("text", {x: g.x0 - W / 2 - pad + 6, y: g.y0 - H / 2 - pad}, e);
    t.textContent = g.path + " \u25BE";
    t.addEventListener("click", () => fold(g, e, t));
    g.el = e;
  }

  const edges = data.edges.map(([a, b]) => {
    const na = data.nodes.find((n) => n.forward === a);
    const nb = data.nodes.find((n) => n.forward === b);
    const [x1, y1] = xy(na), [x2, y2] = xy(nb);
    const mid = (y1 + y2) / 2;
    const p = make("path", {"class": "edge",
                            d: `M${x1},${y1 + H / 2} C${x1},${mid} ${x2},${mid} ${x2},${y2 - H / 2}`},
                   gEdges);
    return {from: na, to: nb, el: p};
  });

  for (const n of data.nodes) {
    const [x, y] = xy(n);
    const leaf = n.op === "leaf";
    const cls = "node" + (leaf ? " leaf" + (n.module || /\./.test(n.name || "") ? " param" : "")
                               : "") +
                (n.check && !n.check.ok ? " check-failed" : "");
    const g = make("g", {"class": cls, "data-op": n.op, "data-module": n.module || "",
                         "data-node": n.index, "data-forward": n.forward,
                         transform: `translate(${x - W / 2},${y - H / 2})`}, gNodes);
    make("rect", {width: W, height: H}, g);
    const t1 = make("text", {x: 8, y: 15, "class": "op"}, g);
    t1.textContent = leaf ? short(n.name || "leaf") : n.op;
    const t2 = make("text", {x: 8, y: 30, "class": "sub"}, g);
    t2.textContent = `${n.index}. ${shape(n.out_shape)}`;
    const title = make("title", {}, g);
    title.textContent = (leaf ? "leaf " + (n.name || "") : n.op) +
      (n.module ? " in " + n.module : "") + `, backward step ${n.index} of ${total}`;
    g.addEventListener("click", () => show(n));
    elOf.set(n.forward, g);
  }

  function fold(g, e, label) {
    const folded = e.classList.toggle("collapsed");
    label.textContent = g.path + (folded ? ` \u25B8 (${g.members.length} nodes)` : " \u25BE");
    const hidden = new Set();
    for (const other of drawn) {
      if (other.el.classList.contains("collapsed")) other.members.forEach((m) => hidden.add(m));
    }
    for (const [f, el] of elOf) el.classList.toggle("hidden", hidden.has(f));
    for (const ed of edges) {
      ed.el.classList.toggle("hidden", hidden.has(ed.from.forward) && hidden.has(ed.to.forward));
    }
    if (folded) gEdges.parentNode.insertBefore(gGroups, gNodes);    // folded boxes over edges
  }

  // ---- the card ------------------------------------------------------------------------------
  function stats(s, label) {
    const box = html("div");
    if (!s) { box.appendChild(html("p", label + ": none (not needed)", "muted")); return box; }
    const line = label + " " + shape(s.shape) + (s.min === undefined ? " (empty)" :
      `  min ${s.min}  max ${s.max}  mean ${s.mean}  norm ${s.norm}`);
    box.appendChild(html("div", line));
    if (s.heat) box.appendChild(heatmap(s));
    return box;
  }

  function heatmap(s) {
    const rows = s.heat.length, cols = s.heat[0].length;
    const cell = Math.max(3, Math.min(14, Math.floor(224 / Math.max(rows, cols))));
    const c = html("canvas");
    c.width = cols * cell; c.height = rows * cell;
    const [r, k, sr, sc] = s.heat_of;
    c.title = `a ${r} x ${k} slice` + (sr > 1 || sc > 1 ? `, every ${sr}th row and ${sc}th column`
                                                       : "") + "; red > 0, blue < 0";
    const ctx = c.getContext("2d");
    let m = 0;
    for (const row of s.heat) for (const v of row) if (typeof v === "number") m = Math.max(m, Math.abs(v));
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) {
        const v = s.heat[i][j];
        const a = typeof v === "number" && m > 0 ? v / m : 0;
        const w = Math.round(255 * (1 - Math.abs(a)));
        ctx.fillStyle = typeof v !== "number" ? "#000" : a >= 0 ? `rgb(255,${w},${w})` : `rgb(${w},${w},255)`;
        ctx.fillRect(j * cell, i * cell, cell, cell);
      }
    }
    return c;
  }

  function source(title, src, open) {
    const d = html("details");
    if (open) d.open = true;
    const sum = html("summary");
    sum.appendChild(html("span", title + " "));
    sum.appendChild(html("span", src.where, "where"));
    d.appendChild(sum);
    d.appendChild(html("pre", src.code));
    return d;
  }

  function show(n) {
    for (const el of elOf.values()) el.classList.remove("selected");
    elOf.get(n.forward).classList.add("selected");
    card.replaceChildren();
    const leaf = n.op === "leaf";
    card.appendChild(html("h2", leaf ? "leaf " + (n.name || "") : n.op));
    const t = html("table");
    const rows = [["module", n.module || "(the model itself)"],
                  ["backward step", `${n.index} of ${total}`], ["output", shape(n.out_shape)]];
    if (!leaf) rows.push(["inputs", n.in_shapes.map(shape).join(", ")]);
    for (const [k, v] of rows) {
      const tr = html("tr"); tr.appendChild(html("th", k)); tr.appendChild(html("td", v));
      t.appendChild(tr);
    }
    card.appendChild(t);
    if (leaf) {
      card.appendChild(html("h3", ".grad"));
      if (step > 0 && step < n.index) {
        card.appendChild(html("p", `not complete yet: its last contribution arrives at step ${n.index}`,
                              "muted"));
      } else {
        card.appendChild(stats(n.grad, ".grad"));
      }
      card.appendChild(html("h3", "upstream gradient"));
      card.appendChild(stats(n.dout, "dout"));
      return;
    }
    const op = data.ops[n.op];
    card.appendChild(html("h3", "derivation"));
    card.appendChild(html("pre", op.doc || "(no docstring)", "doc"));
    if (op.planted) card.appendChild(html("p", op.planted, "bad"));
    card.appendChild(html("h3", "source"));
    card.appendChild(source("backward", op.backward, true));
    card.appendChild(source("forward", op.forward, false));
    card.appendChild(html("h3", "gradients"));
    card.appendChild(stats(n.dout, "dout (upstream)"));
    n.grads.forEach((g, k) => card.appendChild(
      stats(g, n.grads.length > 1 ? `d input ${k}` : "d input")));
    card.appendChild(html("h3", "saved by forward for backward"));
    if (!n.saved.length) card.appendChild(html("p", "nothing", "muted"));
    for (const s of n.saved) {
      card.appendChild(html("div", `${s.name} ${shape(s.shape)} ${s.dtype}, ${s.bytes} bytes`));
    }
    if (n.saved.length) card.appendChild(html("div", `in all ${n.saved_bytes} bytes`, "muted"));
    card.appendChild(html("h3", "finite-difference check of this node alone"));
    const c = n.check;
    if (!c) {
      card.appendChild(html("p", data.check_note, "muted"));
    } else if (c.skipped) {
      card.appendChild(html("p", "skipped: " + c.skipped, "muted"));
    } else {
      card.appendChild(html("p", (c.ok ? "agrees" : "DISAGREES") +
        `: max |analytic - numeric| ${c.error.toExponential(2)}`, c.ok ? "ok" : "bad"));
      for (const i of c.inputs) {
        card.appendChild(html("div", `input ${i.input} ${shape(i.shape)}: ` +
          `${i.error.toExponential(2)} ${i.ok ? "ok" : "WRONG"}`, i.ok ? "" : "bad"));
      }
    }
  }

  // ---- stepping through the backward ---------------------------------------------------------
  function setStep(k) {
    step = Math.max(0, Math.min(total, k));
    for (const n of data.nodes) {
      const el = elOf.get(n.forward);
      el.classList.toggle("done", n.index <= step);
      el.classList.toggle("current", n.index === step);
    }
    for (const ed of edges) ed.el.classList.toggle("lit", ed.to.index <= step);
    const label = document.getElementById("step-label");
    if (step === 0) {
      label.textContent = "before the backward: press next (or the Right arrow)";
      return;
    }
    const n = byIndex.get(step);
    label.textContent = `step ${step} of ${total}: ` + (n.op === "leaf" ? "leaf " + n.name : n.op) +
      (n.module ? ` in ${n.module}` : "");
    show(n);
    const el = elOf.get(n.forward);
    if (el.scrollIntoView) el.scrollIntoView({block: "center", inline: "center"});
  }
  document.getElementById("step-next").addEventListener("click", () => setStep(step + 1));
  document.getElementById("step-prev").addEventListener("click", () => setStep(step - 1));
  document.getElementById("step-reset").addEventListener("click", () => setStep(0));
  document.addEventListener("keydown", (e) => {
    if (e.key === "ArrowRight") { setStep(step + 1); e.preventDefault(); }
    if (e.key === "ArrowLeft") { setStep(step - 1); e.preventDefault(); }
  });

  // ---- the header ------------------------------------------------------------------------------
  document.getElementById("summary").textContent =
    `${total} nodes (${data.nodes.filter((n) => n.op === "leaf").length} leaves), ` +
    `loss ${data.loss.toPrecision(6)} (${data.dtype}). ${data.check_note}.`;
  if (data.first_failure) {
    const f = data.first_failure;
    const box = document.getElementById("first-failure");
    box.hidden = false;
    box.textContent = `The finite-difference check first disagrees at ${f.op}` +
      (f.module ? ` in ${f.module}` : "") + ` (backward step ${f.index}): max |analytic - ` +
      `numeric| ${f.error.toExponential(2)}. Click it to see its backward.`;
    box.addEventListener("click", () => show(byIndex.get(f.index)));
  }
  document.body.dataset.ready = "1";
})();
