// Overview page: add an annotator (shows the login link once), top up assignments, import.
(function () {
  "use strict";
  function show(id, text) {
    const el = document.getElementById(id);
    el.textContent = text;
    el.hidden = false;
  }
  async function send(url, options) {
    const res = await fetch(url, Object.assign({ credentials: "same-origin" }, options));
    const body = await res.json().catch(() => ({ error: "HTTP " + res.status }));
    if (!res.ok) throw new Error(body.error || "HTTP " + res.status);
    return body;
  }
  const json = (data) => ({ method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(data) });

  document.getElementById("add-annotator").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    try {
      const r = await send("/api/annotators", json({ name: f.get("name"), role: f.get("role") }));
      show("add-result", "Login link for " + r.name + " (shown once): " + location.origin + r.login +
        " — " + r.new_assignments + " item(s) assigned. Reload to see the table.");
    } catch (err) { show("add-result", "Not added: " + err.message); }
  });
  document.getElementById("assign").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const share = Number(new FormData(ev.target).get("double_share"));
    try {
      const r = await send("/api/assign", json({ double_share: share }));
      show("assign-result", r.new_assignments + " new assignment(s); " + r.double_items + " of " + r.items + " items double-annotated.");
    } catch (err) { show("assign-result", "Not done: " + err.message); }
  });
  document.getElementById("import").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    try {
      const r = await send("/api/import?annotator=" + encodeURIComponent(f.get("annotator")), { method: "POST", body: f });
      show("import-result", r.imported + " row(s) imported." + (r.problems.length ? "\n" + r.problems.join("\n") : ""));
    } catch (err) { show("import-result", "Not imported: " + err.message); }
  });
})();
