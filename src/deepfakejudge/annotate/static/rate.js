// Rate page: a 1-5 score (pointwise) or the better of two explanations (pairwise, in the order
// drawn for this annotator). A choice is saved at once; Done moves to the next item.
(function () {
  "use strict";
  const D = DFJ.pageData();
  const item = D.item;
  const note = document.getElementById("note");
  const field = item.kind === "pointwise" ? "score" : "shown_choice";
  const radios = Array.from(document.querySelectorAll(item.kind === "pointwise" ? "input[name=score]" : "input[name=choice]"));
  let value = item.kind === "pointwise" ? D.annotation.score : D.annotation.shown_choice;
  let status = D.annotation.status === "todo" ? "draft" : D.annotation.status;
  const saver = DFJ.Saver(item.id, D.annotation.version);

  function payload(st) {
    const p = { status: st, note: note.value || null };
    p[field] = value;
    return p;
  }
  const autosave = DFJ.debounce(() => saver.save(payload(status)), 600);
  function choose(v) {
    value = item.kind === "pointwise" ? Number(v) : v;
    radios.forEach((r) => { r.checked = r.value === String(v); });
    autosave.cancel();
    status = "done"; // the choice is the whole task
    return saver.save(payload(status));
  }
  function finish(st) {
    autosave.cancel();
    status = st;
    return saver.save(payload(st)).then((ok) => { if (ok) DFJ.go("next"); return ok; });
  }
  function leave(which) {
    autosave.cancel();
    if (!DFJ.isDirty()) { DFJ.go(which); return; }
    saver.save(payload(status)).then((ok) => ok && DFJ.go(which));
  }

  radios.forEach((r) => r.addEventListener("change", () => choose(r.value)));
  note.addEventListener("input", () => { DFJ.markDirty(); autosave(); });
  document.getElementById("done").addEventListener("click", () => finish("done"));
  document.getElementById("skip").addEventListener("click", () => finish("skipped"));
  document.getElementById("flag").addEventListener("click", () => finish("flagged"));

  document.addEventListener("keydown", (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && ev.key === "Enter") { ev.preventDefault(); finish("done"); return; }
    if (ev.key === "Escape") { if (DFJ.typing(ev)) ev.target.blur(); return; }
    if (DFJ.typing(ev) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const k = ev.key;
    if (item.kind === "pointwise" && ["1", "2", "3", "4", "5"].includes(k)) choose(k);
    else if (item.kind === "pairwise" && (k === "a" || k === "ArrowLeft")) choose("A");
    else if (item.kind === "pairwise" && (k === "b" || k === "ArrowRight")) choose("B");
    else if (k === "k") finish("skipped");
    else if (k === "g") finish("flagged");
    else if (k === "n") leave("next");
    else if (k === "p") leave("prev");
    else return;
    ev.preventDefault();
  });
})();
