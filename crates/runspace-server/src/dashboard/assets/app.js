// The rsp dashboard's script: live updates over Server-Sent Events (closed
// while the tab is hidden), confirmations for actions, and two small SVG
// charts. Plain JavaScript, no build step; every value from the server is
// put into the page as text (textContent), never as markup.
(() => {
  "use strict";
  const body = document.body;
  const page = body.dataset.page;
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : "";
  const SVG = "http://www.w3.org/2000/svg";
  const FINISHED = ["Completed", "CompletedWithErrors", "Failed", "Stopped", "Interrupted", "Removed"];

  // What the tests (and the curious) can read: events received, stream open.
  const status = { events: 0, open: false, paused: false };
  window.rspDashboard = status;

  const fmtRate = (r) => (r == null || !isFinite(r) || r < 0 ? "—" : r >= 100 ? Math.round(r) + "/s" : r.toFixed(1) + "/s");
  const fmtDuration = (s) => {
    if (s == null || !isFinite(s) || s < 0) return "—";
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " m " + String(Math.floor(s % 60)).padStart(2, "0") + " s";
    return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " m";
  };
  const setText = (el, text) => { if (el && el.textContent !== text) el.textContent = text; };
  const setLive = (text) => setText(document.getElementById("live"), text);

  function setState(el, state) {
    if (!el) return;
    el.textContent = state;
    el.className = "state s-" + state;
  }

  // ---- the event stream ------------------------------------------------
  let source = null;
  function connect() {
    const url = body.dataset.events;
    if (!url || source) return;
    source = new EventSource(url);
    status.paused = false;
    source.addEventListener("summary", (e) => { status.events++; onSummary(JSON.parse(e.data)); });
    source.addEventListener("job", (e) => { status.events++; onJob(JSON.parse(e.data)); });
    source.onopen = () => { status.open = true; setLive("● live"); };
    // EventSource reconnects by itself; say so meanwhile.
    source.onerror = () => { status.open = false; setLive("reconnecting…"); };
  }
  function disconnect() {
    if (!source) return;
    source.close();
    source = null;
    status.open = false;
    status.paused = true;
    setLive("paused");
  }
  document.addEventListener("visibilitychange", () => (document.hidden ? disconnect() : connect()));
  if (!document.hidden) connect();

  // ---- job rows (overview and list) -------------------------------------
  function updateRow(tr, job, at) {
    setState(tr.querySelector("[data-state]"), job.state);
    const bar = tr.querySelector("progress");
    if (bar) { bar.max = Math.max(job.total, 1); bar.value = job.done; bar.setAttribute("aria-label", job.done + " of " + job.total + " items"); }
    setText(tr.querySelector("[data-count]"), job.done + "/" + job.total);
    if (job.rate != null) setText(tr.querySelector("[data-rate]"), fmtRate(job.rate));
    if (job.started != null) setText(tr.querySelector("[data-duration]"), fmtDuration((job.ended || at) - job.started));
  }

  function newRow(job, at) {
    const tr = document.createElement("tr");
    tr.dataset.job = job.name;
    const th = document.createElement("th");
    th.scope = "row";
    const a = document.createElement("a");
    a.href = "/jobs/" + encodeURIComponent(job.name);
    a.textContent = job.name;
    th.appendChild(a);
    tr.appendChild(th);
    const cell = (html) => { const td = document.createElement("td"); if (html) td.appendChild(html); tr.appendChild(td); return td; };
    const badge = document.createElement("span");
    badge.dataset.state = "";
    cell(badge);
    const td = cell(null);
    td.className = "progress";
    const bar = document.createElement("progress");
    const count = document.createElement("span");
    count.className = "count";
    count.dataset.count = "";
    td.append(bar, " ", count);
    cell(null).dataset.rate = "";
    const started = cell(null);
    started.className = "wide";
    started.textContent = job.started ? new Date(job.started * 1000).toISOString().slice(0, 19).replace("T", " ") : "—";
    cell(null).dataset.duration = "";
    cell(null).textContent = "";
    updateRow(tr, job, at);
    return tr;
  }

  function wanted(job) {
    // Would the first page of the list, as filtered, show this job?
    const params = new URLSearchParams(location.search);
    const state = params.get("state");
    const q = (params.get("q") || "").trim().toLowerCase();
    return (!state || state === job.state) && (!q || job.name.toLowerCase().includes(q));
  }

  function onSummary(s) {
    status.last = s;
    const counts = s.counts || {};
    const all = Object.values(counts).reduce((a, b) => a + b, 0);
    document.querySelectorAll("[data-tab]").forEach((tab) => {
      const key = tab.dataset.tab;
      setText(tab.querySelector(".n"), String(key === "all" ? all : counts[key] || 0));
    });
    const finished = ["Completed", "CompletedWithErrors", "Failed", "Stopped", "Interrupted"].reduce((a, k) => a + (counts[k] || 0), 0);
    document.querySelectorAll("[data-card]").forEach((card) => {
      const key = card.dataset.card;
      setText(card, String(key === "finished" ? finished : counts[key] || 0));
    });
    const jobs = new Map();
    (s.ended || []).forEach((j) => jobs.set(j.name, j));
    (s.active || []).forEach((j) => jobs.set(j.name, j));
    document.querySelectorAll("tr[data-job]").forEach((tr) => {
      const job = jobs.get(tr.dataset.job);
      if (job) updateRow(tr, job, s.at);
    });
    if (page === "jobs") {
      const shown = new Set(Array.from(document.querySelectorAll("#jobs tr[data-job]"), (tr) => tr.dataset.job));
      const fresh = (s.active || []).some((j) => !shown.has(j.name) && wanted(j));
      const notice = document.getElementById("new-jobs");
      if (notice && fresh) notice.hidden = false;
    }
    if (page === "overview") overview(s);
  }

  function overview(s) {
    const tbody = document.querySelector("#active tbody");
    if (tbody) {
      const rows = new Map(Array.from(tbody.querySelectorAll("tr[data-job]"), (tr) => [tr.dataset.job, tr]));
      const keep = new Set();
      (s.active || []).forEach((job) => {
        keep.add(job.name);
        const tr = rows.get(job.name);
        if (tr) updateRow(tr, job, s.at); else tbody.appendChild(newRow(job, s.at));
      });
      rows.forEach((tr, name) => { if (!keep.has(name)) tr.remove(); });
      const empty = document.getElementById("active-empty");
      if (empty) empty.hidden = keep.size > 0;
    }
    const wbody = document.querySelector("#workers tbody");
    if (wbody) {
      wbody.replaceChildren(...(s.workers || []).map((w) => {
        const tr = document.createElement("tr");
        [w.id, fmtDuration(w.heartbeat_age_s), String(w.slots), String(w.items_done)].forEach((text) => {
          const td = document.createElement("td");
          td.textContent = text;
          tr.appendChild(td);
        });
        return tr;
      }));
      const empty = document.getElementById("workers-empty");
      if (empty) empty.hidden = (s.workers || []).length > 0;
    }
    setText(document.getElementById("hour-total"), String((s.per_minute || []).reduce((a, b) => a + b, 0)));
    setText(document.getElementById("rate-now"), fmtRate(s.rate));
    const chart = document.getElementById("throughput");
    if (chart) bars(chart, s.per_minute || []);
  }

  // ---- a job's page ----------------------------------------------------
  let points = [];
  function onJob(j) {
    status.last = j;
    const bar = document.getElementById("bar");
    if (bar && j.total != null) { bar.max = Math.max(j.total, 1); bar.value = j.done; }
    if (j.total != null) setText(document.getElementById("done"), j.done + "/" + j.total);
    const running = j.state === "Running";
    setText(document.getElementById("rate"), running ? fmtRate(j.rate) : "—");
    setText(document.getElementById("eta"), running ? fmtDuration(j.eta_s) : "—");
    if (j.duration_s != null) setText(document.getElementById("duration"), fmtDuration(j.duration_s));
    setState(document.querySelector("main .sub [data-state]"), j.state);
    const error = document.getElementById("job-error");
    if (error) { error.hidden = !j.error; setText(error, j.error || ""); }
    const finished = FINISHED.includes(j.state);
    const refresh = document.getElementById("refresh-results");
    if (refresh && (running || (finished && status.wasRunning))) {
      // The results table is read at load: say when it is behind.
      setText(refresh, finished ? "Refresh: the job has ended" : "Refresh");
    }
    status.wasRunning = running || status.wasRunning;
    document.querySelectorAll("form[data-when]").forEach((form) => {
      const when = form.dataset.when;
      form.hidden = j.state === "Removed" || (when === "active" && finished) || (when === "finished" && !finished);
    });
    if (running && j.rate != null) {
      points.push([j.at, j.rate]);
      if (points.length > 1200) points.shift();
      const chart = document.getElementById("rate-chart");
      if (chart) line(chart, points);
    }
  }

  // ---- actions: confirmed, then posted with the CSRF token --------------
  const dialog = document.getElementById("confirm");
  function confirmThen(question, go) {
    if (!dialog || typeof dialog.showModal !== "function") { if (window.confirm(question)) go(); return; }
    setText(document.getElementById("confirm-text"), question);
    dialog.returnValue = "";
    dialog.onclose = () => { if (dialog.returnValue === "ok") go(); };
    dialog.showModal();
    const cancel = dialog.querySelector('button[value="cancel"]');
    if (cancel) cancel.focus();
  }

  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      confirmThen(form.dataset.confirm, () => act(form));
    });
  });

  async function act(form) {
    const result = document.getElementById("action-result");
    const action = form.querySelector("[data-action]").dataset.action;
    setText(result, "Working…");
    try {
      const response = await fetch(form.action, {
        method: "POST",
        headers: { "X-CSRF-Token": csrf, Accept: "application/json", "Content-Type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams(new FormData(form)),
        credentials: "same-origin",
      });
      const text = await response.text();
      let answer = null;
      try { answer = text ? JSON.parse(text) : null; } catch (_) { answer = null; }
      if (!response.ok) {
        setText(result, "Refused: " + ((answer && answer.error) || text || response.status));
        return;
      }
      if (action === "remove") { location.assign("/jobs"); return; }
      if ((action === "restart" || action === "rerun-failed") && answer && answer.name) {
        location.assign("/jobs/" + encodeURIComponent(answer.name));
        return;
      }
      if (action === "rerun-failed") { setText(result, "Nothing to re-run: every item completed."); return; }
      setText(result, answer && answer.stopping ? "Stopping…" : "Done.");
    } catch (e) {
      setText(result, "Failed: " + e);
    }
  }

  // ---- charts ---------------------------------------------------------
  // Drawn at the element's own size (so text is not stretched).
  function svg(el) {
    const s = document.createElementNS(SVG, "svg");
    const width = Math.max(el.clientWidth - 12, 100), height = Math.max(el.clientHeight - 12, 60);
    s.setAttribute("viewBox", "0 0 " + width + " " + height);
    s.setAttribute("aria-hidden", "true");
    el.replaceChildren(s);
    return [s, width, height];
  }
  function label(s, x, y, text, anchor) {
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", x);
    t.setAttribute("y", y);
    t.setAttribute("class", "axis");
    if (anchor) t.setAttribute("text-anchor", anchor);
    t.textContent = text;
    s.appendChild(t);
  }

  function line(el, pts) {
    const [s, W, H] = svg(el);
    if (pts.length < 2) { label(s, W / 2, H / 2, "waiting for data…", "middle"); return; }
    const t0 = pts[0][0], t1 = pts[pts.length - 1][0];
    const max = Math.max(...pts.map((p) => p[1]), 1e-9);
    const x = (t) => ((t - t0) / Math.max(t1 - t0, 1e-9)) * (W - 10) + 5;
    const y = (r) => H - 18 - (r / max) * (H - 36);
    const path = document.createElementNS(SVG, "polyline");
    path.setAttribute("points", pts.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" "));
    path.setAttribute("class", "line");
    s.appendChild(path);
    label(s, 5, 12, "max " + fmtRate(max));
    label(s, W - 5, H - 4, fmtDuration(t1 - t0) + " shown", "end");
  }

  function bars(el, values) {
    const [s, W, H] = svg(el);
    const max = Math.max(...values, 1);
    const w = W / Math.max(values.length, 1);
    values.forEach((v, i) => {
      const r = document.createElementNS(SVG, "rect");
      const h = (v / max) * (H - 30);
      r.setAttribute("x", (i * w + 1).toFixed(1));
      r.setAttribute("y", (H - 16 - h).toFixed(1));
      r.setAttribute("width", Math.max(w - 2, 1).toFixed(1));
      r.setAttribute("height", Math.max(h, v > 0 ? 1 : 0).toFixed(1));
      r.setAttribute("class", "bar");
      const title = document.createElementNS(SVG, "title");
      title.textContent = v + " items, " + (values.length - 1 - i) + " min ago";
      r.appendChild(title);
      s.appendChild(r);
    });
    label(s, 5, 12, "max " + max + "/min");
    label(s, 2, H - 3, "−60 min");
    label(s, W - 2, H - 3, "now", "end");
  }

  const initial = (id, key) => {
    const el = document.getElementById(id);
    if (!el) return null;
    try { return JSON.parse(el.dataset[key] || "[]"); } catch (_) { return []; }
  };
  const rates = initial("rate-chart", "points");
  if (rates) { points = rates; line(document.getElementById("rate-chart"), points); }
  const minutes = initial("throughput", "values");
  if (minutes) bars(document.getElementById("throughput"), minutes);
})();
