// hookledger console: progressive enhancement only. Every page works without this file;
// with it, the log tails itself and rebuild/verify progress updates in place.
"use strict";

(function () {
  const MAX_ROWS = 500;

  async function getJSON(url) {
    const response = await fetch(url, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      redirect: "error", // a redirect means the session ended: stop, don't parse a page
    });
    if (!response.ok) throw new Error("HTTP " + response.status);
    return response.json();
  }

  function clock() {
    return new Date().toLocaleTimeString();
  }

  // --- the log's live tail: new rows are prepended every 2 seconds ----------------------
  function liveTail(tbody) {
    const box = document.getElementById("live");
    const label = box && box.closest("label");
    const status = document.getElementById("live-status");
    if (!box || !label) return;
    label.hidden = false;
    let after = Number(tbody.dataset.after || 0);
    let timer = null;
    const base = tbody.dataset.tailUrl;
    const sep = base.includes("?") ? "&" : "?";

    async function poll() {
      try {
        const data = await getJSON(base + sep + "after=" + after);
        if (data.count > 0) {
          tbody.insertAdjacentHTML("afterbegin", data.html); // escaped by the server
          while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(-1);
          const empty = document.querySelector(".empty");
          if (empty) empty.remove();
        }
        after = Math.max(after, data.last);
        status.textContent = "· updated " + clock();
        schedule();
      } catch (err) {
        status.textContent = "· stopped (" + err.message + "); reload the page";
        box.checked = false;
      }
    }
    function schedule() {
      clearTimeout(timer);
      if (box.checked) timer = setTimeout(poll, 2000);
    }
    box.addEventListener("change", function () {
      status.textContent = box.checked ? "· on" : "· paused";
      schedule();
    });
    schedule();
  }

  // --- projections: state, lag, rows and rebuild progress refresh in place --------------
  function swapText(s) {
    if (!s) return "—";
    let text = "v" + s.version + " live since " + s.at.slice(0, 19).replace("T", " ") + " UTC";
    if (s.reason) text += " (" + s.reason + ")";
    if (s.diff) {
      text += ": " + s.diff.added + " added, " + s.diff.removed + " removed, " +
        s.diff.changed + " changed";
    }
    return text;
  }

  function progressText(r) {
    if (!r) return "not rebuilding";
    let text = "v" + r.version + ": " + r.done.toLocaleString("en") + " / " +
      r.total.toLocaleString("en") + " events (" + r.percent + "%)";
    if (r.rate) text += ", " + Math.round(r.rate).toLocaleString("en") + "/s";
    if (r.eta_seconds !== null) text += ", ETA " + r.eta_seconds + " s";
    if (r.state === "failed") text += ", failed";
    return text;
  }

  function updateProjection(row, p) {
    const field = (name) => row.querySelector('[data-field="' + name + '"]');
    const set = (name, value) => { const el = field(name); if (el) el.textContent = value; };
    const state = field("state");
    state.textContent = p.state;
    state.className = "badge " + ({ live: "ok", catching_up: "warn", failed: "bad" }[p.state] || "");
    row.className = "state-" + p.state;
    set("version", p.version === null ? "—" : p.version);
    set("position", p.position.toLocaleString("en"));
    set("head", p.head.toLocaleString("en"));
    set("lag", p.lag.toLocaleString("en"));
    set("rows", p.rows.toLocaleString("en"));
    set("errors", p.errors.toLocaleString("en"));
    set("swap", swapText(p.last_swap));
    set("progress-text", progressText(p.rebuild));
    const bar = field("progress");
    bar.hidden = !p.rebuild;
    if (p.rebuild) {
      bar.max = Math.max(p.rebuild.total, 1);
      bar.value = p.rebuild.done;
      bar.textContent = p.rebuild.percent + "%";
    }
  }

  function liveProjections(tbody) {
    const url = tbody.dataset.statusUrl;
    async function poll() {
      let running = false;
      try {
        const data = await getJSON(url);
        for (const p of data.projections) {
          const row = tbody.querySelector('tr[data-projection="' + CSS.escape(p.name) + '"]');
          if (!row) continue;
          updateProjection(row, p);
          running = running || p.rebuild !== null || p.state === "catching_up";
        }
      } catch (err) {
        return; // signed out or server gone: the page still works by reloading
      }
      setTimeout(poll, running ? 700 : 4000);
    }
    setTimeout(poll, 500);
  }

  // --- chain verification progress ---------------------------------------------------
  function liveVerify(card) {
    if (card.dataset.running !== "true") return;
    async function poll() {
      let data;
      try {
        data = await getJSON(card.dataset.statusUrl);
      } catch (err) {
        return;
      }
      if (!data.running) { window.location.reload(); return; }
      const bar = document.getElementById("verify-progress");
      const text = document.getElementById("verify-text");
      if (bar) { bar.max = Math.max(data.total, 1); bar.value = data.checked; }
      if (text) {
        text.textContent = "verifying: " + data.checked.toLocaleString("en") + " / " +
          data.total.toLocaleString("en") + " events";
      }
      setTimeout(poll, 700);
    }
    setTimeout(poll, 500);
  }

  document.addEventListener("DOMContentLoaded", function () {
    const tail = document.querySelector("tbody[data-tail-url]");
    if (tail) liveTail(tail);
    const projections = document.querySelector("tbody[data-status-url]");
    if (projections) liveProjections(projections);
    const chain = document.getElementById("chain");
    if (chain) liveVerify(chain);
  });
})();
