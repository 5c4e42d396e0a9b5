// Agreement page: refresh the figures every few seconds while people work.
(function () {
  "use strict";
  const live = document.getElementById("live");
  function lookup(obj, path) {
    return path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
  }
  async function refresh() {
    try {
      const res = await fetch("/api/agreement", { credentials: "same-origin" });
      if (!res.ok) throw new Error("HTTP " + res.status);
      const report = await res.json();
      document.querySelectorAll("[data-key]").forEach((el) => {
        const v = lookup(report, el.dataset.key);
        el.textContent = v == null ? "–" : el.dataset.int ? String(v) : Number(v).toFixed(3);
      });
      live.textContent = "live · " + new Date().toLocaleTimeString();
      live.className = "chip st-done";
    } catch (err) {
      live.textContent = "not updating (" + err.message + ")";
      live.className = "chip st-flagged";
    }
  }
  refresh();
  setInterval(refresh, 5000);
})();
