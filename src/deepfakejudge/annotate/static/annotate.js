// Annotate page: class, boxes drawn on a canvas over the image (each with a category and a
// referring expression), gold rationale, skip/flag, keyboard shortcuts. Every change is saved.
(function () {
  "use strict";
  const D = DFJ.pageData();
  const item = D.item;
  const img = document.getElementById("image");
  const canvas = document.getElementById("canvas");
  const g = canvas.getContext("2d");
  const list = document.getElementById("artifacts");
  const catSel = document.getElementById("category");
  const help = document.getElementById("category-help");
  const rationale = document.getElementById("rationale");
  const note = document.getElementById("note");
  const names = D.taxonomy.categories.map((c) => c.name);
  const defs = Object.fromEntries(D.taxonomy.categories.map((c) => [c.name, c.definition]));
  const COLORS = ["#e6194b", "#2f9e44", "#4363d8", "#f58231", "#911eb4", "#0a9396"];
  const MIN_SIZE = 2; // image pixels: a smaller drag is a click

  let artifacts = (D.annotation.artifacts || []).map((a) => ({ category: a.category, bbox: a.bbox, expression: a.expression || "" }));
  let label = D.annotation.label;
  let status = D.annotation.status === "todo" ? "draft" : D.annotation.status;
  let selected = -1;
  let drag = null;
  const saver = DFJ.Saver(item.id, D.annotation.version);

  function payload(st) {
    return {
      status: st,
      label: label,
      rationale: rationale.value || null,
      note: note.value || null,
      artifacts: artifacts.map((a) => ({ category: a.category, bbox: a.bbox, expression: a.expression })),
    };
  }
  const autosave = DFJ.debounce(() => saver.save(payload(status)), 600);
  function changed() { DFJ.markDirty(); autosave(); }
  function finish(st) {
    autosave.cancel();
    status = st;
    return saver.save(payload(st)).then((ok) => { if (ok) DFJ.go("next"); return ok; });
  }

  // --- geometry: image pixels <-> canvas pixels
  function fit() {
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(img.clientWidth * ratio);
    canvas.height = Math.round(img.clientHeight * ratio);
    draw();
  }
  function toImage(ev) {
    const r = canvas.getBoundingClientRect();
    const x = ((ev.clientX - r.left) * item.width) / r.width;
    const y = ((ev.clientY - r.top) * item.height) / r.height;
    return [Math.min(Math.max(x, 0), item.width), Math.min(Math.max(y, 0), item.height)];
  }
  function rectOf(b) {
    const sx = canvas.width / item.width, sy = canvas.height / item.height;
    return [b[0] * sx, b[1] * sy, (b[2] - b[0]) * sx, (b[3] - b[1]) * sy];
  }

  function draw() {
    g.clearRect(0, 0, canvas.width, canvas.height);
    const ratio = window.devicePixelRatio || 1;
    g.font = Math.round(12 * ratio) + "px sans-serif";
    artifacts.forEach((a, i) => {
      if (!a.bbox) return;
      const [x, y, w, h] = rectOf(a.bbox);
      const color = COLORS[i % COLORS.length];
      g.lineWidth = (i === selected ? 3 : 2) * ratio;
      g.strokeStyle = color;
      g.setLineDash([]);
      g.strokeRect(x, y, w, h);
      if (i === selected) { g.fillStyle = color + "33"; g.fillRect(x, y, w, h); }
      const tag = String(i + 1);
      g.fillStyle = color;
      g.fillRect(x, y, g.measureText(tag).width + 8 * ratio, 16 * ratio);
      g.fillStyle = "#fff";
      g.fillText(tag, x + 4 * ratio, y + 12 * ratio);
    });
    if (drag && drag.end) {
      const b = normalised(drag.start, drag.end);
      const [x, y, w, h] = rectOf(b);
      g.setLineDash([6 * ratio, 4 * ratio]);
      g.lineWidth = 2 * ratio;
      g.strokeStyle = "#ffd400";
      g.strokeRect(x, y, w, h);
    }
  }
  function normalised(p, q) {
    return [Math.floor(Math.min(p[0], q[0])), Math.floor(Math.min(p[1], q[1])),
            Math.ceil(Math.max(p[0], q[0])), Math.ceil(Math.max(p[1], q[1]))];
  }

  // --- the artifact list
  function showHelp(name) { help.textContent = name ? name + ": " + (defs[name] || "") : ""; }
  function render() {
    list.replaceChildren();
    artifacts.forEach((a, i) => {
      const li = document.createElement("li");
      li.className = "artifact" + (i === selected ? " selected" : "");
      li.dataset.index = String(i);
      const sw = document.createElement("span");
      sw.className = "swatch c" + (i % COLORS.length);
      sw.textContent = String(i + 1);
      const sel = document.createElement("select");
      sel.className = "cat";
      sel.setAttribute("aria-label", "category of artifact " + (i + 1));
      names.forEach((n) => {
        const o = document.createElement("option");
        o.value = n; o.textContent = n; o.title = defs[n];
        if (n === a.category) o.selected = true;
        sel.appendChild(o);
      });
      sel.addEventListener("change", () => { a.category = sel.value; showHelp(sel.value); changed(); });
      sel.addEventListener("focus", () => { select(i, false); showHelp(a.category); });
      const expr = document.createElement("input");
      expr.type = "text";
      expr.className = "expr";
      expr.maxLength = 500;
      expr.placeholder = "referring expression, e.g. “the fused wheels in the upper right”";
      expr.setAttribute("aria-label", "referring expression of artifact " + (i + 1));
      expr.value = a.expression;
      expr.addEventListener("input", () => { a.expression = expr.value; changed(); });
      expr.addEventListener("focus", () => select(i, false));
      const coords = document.createElement("span");
      coords.className = "coords";
      coords.textContent = a.bbox ? "[" + a.bbox.map((v) => Math.round(v)).join(", ") + "]" : "no box";
      const del = document.createElement("button");
      del.type = "button";
      del.className = "del";
      del.textContent = "×";
      del.title = "remove this artifact";
      del.addEventListener("click", () => remove(i));
      li.append(sw, sel, coords, del, expr);
      li.addEventListener("click", (ev) => { if (ev.target === li || ev.target === sw || ev.target === coords) select(i, true); });
      list.appendChild(li);
    });
  }
  function select(i, rerender) {
    if (selected === i) return;
    selected = i;
    draw();
    if (rerender) render();
    else list.querySelectorAll("li").forEach((li) => li.classList.toggle("selected", Number(li.dataset.index) === i));
  }
  function add(bbox) {
    artifacts.push({ category: catSel.value, bbox: bbox, expression: "" });
    selected = artifacts.length - 1;
    render();
    draw();
    changed();
    const rows = list.querySelectorAll("input.expr");
    rows[rows.length - 1].focus();
  }
  function remove(i) {
    if (i < 0 || i >= artifacts.length) return;
    artifacts.splice(i, 1);
    selected = -1;
    render();
    draw();
    changed();
  }
  function hit(p) {
    let best = -1, area = Infinity;
    artifacts.forEach((a, i) => {
      const b = a.bbox;
      if (b && p[0] >= b[0] && p[0] <= b[2] && p[1] >= b[1] && p[1] <= b[3]) {
        const s = (b[2] - b[0]) * (b[3] - b[1]);
        if (s < area) { area = s; best = i; }
      }
    });
    return best;
  }

  // --- mouse
  canvas.addEventListener("mousedown", (ev) => {
    if (ev.button !== 0) return;
    ev.preventDefault();
    drag = { start: toImage(ev), end: null };
  });
  document.addEventListener("mousemove", (ev) => {
    if (!drag) return;
    drag.end = toImage(ev);
    draw();
  });
  document.addEventListener("mouseup", (ev) => {
    if (!drag) return;
    const start = drag.start, end = toImage(ev);
    drag = null;
    const b = normalised(start, end);
    if (b[2] - b[0] >= MIN_SIZE && b[3] - b[1] >= MIN_SIZE) add(b);
    else { select(hit(start), true); draw(); }
  });

  function leave(which) {
    autosave.cancel();
    if (!DFJ.isDirty()) { DFJ.go(which); return; }
    saver.save(payload(status)).then((ok) => ok && DFJ.go(which));
  }

  // --- other controls
  document.querySelectorAll("input[name=label]").forEach((r) =>
    r.addEventListener("change", () => { label = r.value; changed(); }));
  function setLabel(value) {
    label = value;
    document.querySelector("input[name=label][value=" + value + "]").checked = true;
    changed();
  }
  catSel.addEventListener("change", () => showHelp(catSel.value));
  document.getElementById("add-unboxed").addEventListener("click", () => add(null));
  rationale.addEventListener("input", changed);
  note.addEventListener("input", changed);
  document.getElementById("done").addEventListener("click", () => finish("done"));
  document.getElementById("skip").addEventListener("click", () => finish("skipped"));
  document.getElementById("flag").addEventListener("click", () => finish("flagged"));

  document.addEventListener("keydown", (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && ev.key === "Enter") { ev.preventDefault(); finish("done"); return; }
    if (ev.key === "Escape") {
      if (drag) { drag = null; draw(); }
      if (DFJ.typing(ev)) ev.target.blur();
      return;
    }
    if (DFJ.typing(ev) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    switch (ev.key) {
      case "r": setLabel("real"); break;
      case "f": setLabel("fake"); break;
      case "e": setLabel("edited"); break;
      case "c": catSel.selectedIndex = (catSel.selectedIndex + 1) % catSel.options.length; showHelp(catSel.value); break;
      case "Delete": case "Backspace": remove(selected); break;
      case "k": finish("skipped"); break;
      case "g": finish("flagged"); break;
      case "n": leave("next"); break;
      case "p": leave("prev"); break;
      default: return;
    }
    ev.preventDefault();
  });

  showHelp(catSel.value);
  render();
  if (img.complete) fit(); else img.addEventListener("load", fit);
  window.addEventListener("resize", fit);
})();
