// dfj annotate: helpers shared by the pages. No framework, no network but this server.
"use strict";
window.DFJ = (function () {
  let dirty = false;

  function pageData() {
    return JSON.parse(document.getElementById("page-data").textContent);
  }

  // True when a key press belongs to a text field (shortcuts must not fire while typing).
  function typing(ev) {
    const t = ev.target;
    if (!t || !t.tagName) return false;
    if (t.tagName === "TEXTAREA" || t.tagName === "SELECT") return true;
    return t.tagName === "INPUT" && !["radio", "checkbox", "button", "submit"].includes(t.type);
  }

  function debounce(fn, ms) {
    let timer = null;
    const wrapped = function () {
      clearTimeout(timer);
      timer = setTimeout(() => { timer = null; fn(); }, ms);
    };
    wrapped.cancel = () => { clearTimeout(timer); timer = null; };
    return wrapped;
  }

  function showBanner(text, offerReload) {
    const banner = document.getElementById("banner");
    document.getElementById("banner-text").textContent = text;
    document.getElementById("reload").hidden = !offerReload;
    banner.hidden = false;
  }

  function hideBanner() {
    document.getElementById("banner").hidden = true;
  }

  // Saves one item's annotation, one request at a time, each naming the version it was based
  // on. A 409 (someone saved this item elsewhere meanwhile) stops further saves and shows the
  // conflict; nothing is overwritten silently.
  function Saver(itemId, version) {
    let chain = Promise.resolve(true);
    let current = version;
    let blocked = false;
    const savedEl = document.getElementById("saved");
    const statusEl = document.getElementById("status");
    document.getElementById("reload").addEventListener("click", () => { dirty = false; location.reload(); });

    async function put(payload) {
      if (blocked) return false;
      savedEl.textContent = "saving…";
      let res;
      try {
        res = await fetch("/api/items/" + itemId + "/annotation", {
          method: "PUT",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify(Object.assign({}, payload, { version: current })),
        });
      } catch (err) {
        savedEl.textContent = "not saved";
        showBanner("Could not reach the server (" + err + "); your change will be sent with the next one.", false);
        return false;
      }
      const body = await res.json().catch(() => ({ error: "HTTP " + res.status }));
      if (res.ok) {
        current = body.annotation.version;
        dirty = false;
        savedEl.textContent = "saved · version " + current;
        statusEl.textContent = body.annotation.status;
        statusEl.className = "chip st-" + body.annotation.status;
        hideBanner();
        return true;
      }
      savedEl.textContent = "not saved";
      if (res.status === 409) {
        blocked = true;
        showBanner("Conflict: " + body.error, true);
      } else {
        showBanner("Not saved: " + (body.error || "HTTP " + res.status), false);
      }
      return false;
    }

    return {
      save(payload) {
        dirty = true;
        chain = chain.then(() => put(payload));
        return chain;
      },
      get version() { return current; },
    };
  }

  function go(which) {
    const link = document.getElementById(which);
    if (link) location.href = link.href;
  }

  window.addEventListener("beforeunload", (ev) => {
    if (dirty) { ev.preventDefault(); ev.returnValue = ""; }
  });

  return { pageData, typing, debounce, Saver, go, showBanner, markDirty() { dirty = true; }, isDirty() { return dirty; } };
})();
