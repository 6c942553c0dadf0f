// Operator dashboard: plain DOM + SVG, no dependencies, no build step.
// Figures refresh every few seconds; the live feed reads the SSE stream with fetch() (it can
// send the Authorization header, which EventSource cannot) and renders in batches, so
// thousands of changes per second stay usable.
"use strict";
(() => {
  const KEY = "segments.apiKey";
  const REFRESH_MS = 5000;
  const RENDER_MS = 500;
  const FEED_ROWS = 200;       // rows kept in the feed table
  const ROWS_PER_RENDER = 40;  // newest rows drawn per render; the rest are counted, not drawn
  const PENDING_MAX = 5000;    // changes buffered between renders; beyond it the oldest are dropped
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  let key = sessionStorage.getItem(KEY);
  let stream = null;           // AbortController of the live feed
  let lastEventId = null;      // resume position of the live feed
  let paused = false;
  let pending = [];
  let dropped = 0;
  const arrivals = [];         // [time ms, count] of recent batches, for the rate
  let refreshTimer = null;

  class AuthError extends Error {}

  async function api(path) {
    const r = await fetch(path, { headers: { Authorization: "Bearer " + key } });
    if (r.status === 401 || r.status === 403) throw new AuthError("key refused");
    const body = await r.json();
    if (!r.ok) throw new Error(body && body.error ? body.error.message : r.statusText);
    return body;
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function svgEl(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  function setStatus(text, ok) {
    const s = $("status");
    s.textContent = text;
    s.className = ok ? "ok" : "bad";
  }

  const fmt = new Intl.NumberFormat("en");

  // --- segment sizes and KPIs -----------------------------------------------------------------
  function drawSizes(rows) {
    const svg = $("sizes");
    svg.replaceChildren();
    const rowH = 22, labelW = 170, valueW = 80, width = 800;
    const max = Math.max(1, ...rows.map((r) => r.members));
    svg.setAttribute("viewBox", `0 0 ${width} ${rows.length * rowH + 4}`);
    svg.setAttribute("height", String(rows.length * rowH + 4));
    rows.forEach((r, i) => {
      const y = i * rowH + 2;
      const w = Math.max(r.members > 0 ? 2 : 0, ((width - labelW - valueW) * r.members) / max);
      svg.append(svgEl("text", { x: labelW - 6, y: y + 15, "text-anchor": "end", class: "label" }, r.segment));
      const bar = svgEl("rect", { x: labelW, y: y + 3, width: w, height: rowH - 6, class: "bar" });
      bar.append(svgEl("title", {}, `${r.segment}: ${fmt.format(r.members)}`));
      svg.append(bar);
      svg.append(svgEl("text", { x: labelW + w + 6, y: y + 15, class: "value" }, fmt.format(r.members)));
    });
    svg.dataset.total = String(rows.reduce((a, r) => a + r.members, 0));
  }

  function drawKpis(body) {
    const tbody = $("kpis").tBodies[0];
    tbody.replaceChildren();
    for (const r of body.segments) {
      const tr = el("tr");
      tr.append(el("td", r.segment), el("td", fmt.format(r.members), "num"),
        el("td", r.net_spend_30d, "num"), el("td", r.lost_to_churn_24h, "num"),
        el("td", r.won_back_24h, "num"));
      tbody.append(tr);
    }
    $("kpi-note").textContent = body.exact
      ? `net spend summed over all ${fmt.format(body.customers_read)} customers`
      : `net spend extrapolated from ${fmt.format(body.customers_read)} customers read`;
    $("rules").textContent = "rules " + body.rules_version;
  }

  // --- migrations and changes per minute --------------------------------------------------------
  function drawMatrix(body) {
    const table = $("matrix");
    table.replaceChildren();
    const froms = [...new Set(body.migrations.map((m) => m.from_segment))].sort();
    const tos = [...new Set(body.migrations.map((m) => m.to_segment))].sort();
    const cell = new Map(body.migrations.map((m) => [m.from_segment + ">" + m.to_segment, m.changes]));
    const max = Math.max(1, ...body.migrations.map((m) => m.changes));
    const head = el("tr");
    head.append(el("th", "from \\ to"), ...tos.map((t) => el("th", t, "num")));
    table.append(el("thead"));
    table.tHead.append(head);
    const tbody = el("tbody");
    for (const f of froms) {
      const tr = el("tr");
      tr.append(el("th", f));
      for (const t of tos) {
        const n = cell.get(f + ">" + t) || 0;
        tr.append(el("td", n ? fmt.format(n) : "", "num" + (n > max / 2 ? " hot" : n > max / 8 ? " warm" : "")));
      }
      tbody.append(tr);
    }
    table.append(tbody);
    const causes = Object.entries(body.by_cause).map(([c, n]) => `${c} ${fmt.format(n)}`).join(", ");
    $("matrix-note").textContent = `${fmt.format(body.total)} changes` + (causes ? ` (${causes})` : "");
  }

  function drawPerMinute(points) {
    const svg = $("per-minute");
    svg.replaceChildren();
    const width = 600, height = 100, gap = 2;
    const max = Math.max(1, ...points.map((p) => p.changes));
    const w = width / points.length;
    svg.setAttribute("viewBox", `0 0 ${width} ${height + 14}`);
    points.forEach((p, i) => {
      const h = (height * p.changes) / max;
      const bar = svgEl("rect", { x: i * w, y: height - h, width: Math.max(1, w - gap), height: h, class: "bar" });
      bar.append(svgEl("title", {}, `${p.minute.slice(11, 16)} UTC: ${p.changes}`));
      svg.append(bar);
    });
    svg.append(svgEl("text", { x: 0, y: height + 12, class: "value" }, "-60 min"));
    svg.append(svgEl("text", { x: width, y: height + 12, "text-anchor": "end", class: "value" }, `now · max ${fmt.format(max)}/min`));
    const last = points.length > 1 ? points[points.length - 2].changes : 0;
    $("per-minute-total").textContent = `last full minute: ${fmt.format(last)} changes`;
  }

  // --- pipeline health ---------------------------------------------------------------------------
  function drawHealth(h) {
    const dl = $("health");
    dl.replaceChildren();
    const lag = h.consumer_lag;
    const rows = [
      ["consumer lag", lag.total === null ? `unknown${lag.error ? " (" + lag.error + ")" : ""}` : fmt.format(lag.total) + " records", lag.total !== null && lag.total > 10000],
      ["events/s", fmt.format(h.events_per_s), false],
      ["applied/s", fmt.format(h.applied_per_s), false],
      ["dead letters/min", fmt.format(h.dead_letters_per_min), h.dead_letters_per_min > 0],
      ["changes/min (consumer)", fmt.format(h.changes_per_min), false],
      ["sweeper: overdue customers", fmt.format(h.sweeper_lag.overdue_customers), h.sweeper_lag.oldest_overdue_s > 300],
      ["sweeper: oldest overdue", h.sweeper_lag.oldest_overdue_s + " s", h.sweeper_lag.oldest_overdue_s > 300],
      ["live viewers (this worker)", fmt.format(h.stream_viewers), false],
    ];
    const reasons = Object.entries(h.dead_letter_reasons);
    if (reasons.length) rows.push(["dead letters by reason (1 h)", reasons.map(([r, n]) => `${r} ${n}`).join(", "), true]);
    for (const [name, value, bad] of rows) dl.append(el("dt", name), el("dd", value, bad ? "bad" : ""));
  }

  async function refresh() {
    try {
      const [kpis, changes, health] = await Promise.all([
        api("/v1/stats/segments"),
        api("/v1/stats/changes?window=" + $("window").value),
        api("/v1/stats/pipeline"),
      ]);
      drawSizes(kpis.segments);
      drawKpis(kpis);
      drawMatrix(changes);
      drawPerMinute(changes.per_minute);
      drawHealth(health);
      setStatus("updated " + new Date().toLocaleTimeString(), true);
    } catch (e) {
      if (e instanceof AuthError) return logout("The API refused the key.");
      setStatus("figures unavailable: " + e.message, false);
    }
  }

  // --- live feed -------------------------------------------------------------------------------
  function feedQuery() {
    const q = new URLSearchParams();
    const from = $("f-from").value.trim(), to = $("f-to").value.trim(), cause = $("f-cause").value;
    if (from) q.set("from", from);
    if (to) q.set("to", to);
    if (cause) q.set("cause", cause);
    return q.toString();
  }

  function handleBlock(block) {
    let event = "message", data = "";
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "id") lastEventId = value;
      else if (field === "event") event = value;
      else if (field === "data") data += (data ? "\n" : "") + value;
    }
    if (event === "change" && data) {
      pending.push(JSON.parse(data));
      if (pending.length > PENDING_MAX) {
        dropped += pending.length - PENDING_MAX;
        pending = pending.slice(-PENDING_MAX);
      }
    } else if (event === "overflow") {
      $("feed-rate").textContent = "fell behind; resuming";
    }
  }

  async function runStream() {
    const ctrl = new AbortController();
    stream = ctrl;
    const headers = { Authorization: "Bearer " + key, Accept: "text/event-stream" };
    if (lastEventId) headers["Last-Event-ID"] = lastEventId;
    try {
      const r = await fetch("/v1/segment-changes/stream?" + feedQuery(), { headers, signal: ctrl.signal });
      if (r.status === 401 || r.status === 403) return logout("The API refused the key.");
      if (!r.ok) throw new Error("stream answered " + r.status);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          handleBlock(buf.slice(0, end));
          buf = buf.slice(end + 2);
        }
      }
    } catch (e) {
      if (ctrl.signal.aborted) return;
      $("feed-rate").textContent = "reconnecting…";
    }
    if (stream === ctrl) setTimeout(() => { if (stream === ctrl) runStream(); }, 1000);
  }

  function restartStream(resetPosition) {
    if (stream) stream.abort();
    stream = null;
    if (resetPosition) lastEventId = null;
    pending = [];
    runStream();
  }

  function render() {
    const batch = pending;
    pending = [];
    const now = Date.now();
    arrivals.push([now, batch.length]);
    while (arrivals.length && arrivals[0][0] < now - 10000) arrivals.shift();
    const span = Math.max(1, (now - arrivals[0][0]) / 1000);
    const rate = arrivals.reduce((a, [, n]) => a + n, 0) / Math.max(span, RENDER_MS / 1000);
    $("feed-rate").textContent = `${fmt.format(Math.round(rate))}/s` + (dropped ? ` · ${fmt.format(dropped)} not drawn` : "");
    if (paused || !batch.length) return;
    const shown = batch.slice(-ROWS_PER_RENDER);
    dropped += batch.length - shown.length;
    const tbody = $("feed").tBodies[0];
    const frag = document.createDocumentFragment();
    for (let i = shown.length - 1; i >= 0; i--) {
      const c = shown[i];
      const tr = el("tr");
      tr.append(el("td", c.as_of.slice(11, 19)), el("td", c.customer_id),
        el("td", c.previous ? c.previous.segment : "none"), el("td", c.current.segment), el("td", c.cause));
      frag.append(tr);
    }
    tbody.prepend(frag);
    while (tbody.rows.length > FEED_ROWS) tbody.deleteRow(-1);
  }

  // --- customer lookup ---------------------------------------------------------------------------
  async function lookup(id) {
    const out = $("customer-result");
    out.replaceChildren(el("p", "…", "muted"));
    let body;
    try {
      const r = await fetch("/v1/customers/" + encodeURIComponent(id) + "/segment", { headers: { Authorization: "Bearer " + key } });
      body = await r.json();
      if (r.status === 404) return out.replaceChildren(el("p", `No customer ${id}.`, "error"));
      if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
    } catch (e) {
      return out.replaceChildren(el("p", "Lookup failed: " + e.message, "error"));
    }
    const dl = el("dl");
    const a = body.axes, t = body.treatment;
    const rows = [
      ["customer", body.customer_id], ["segment", body.segment],
      ["lifecycle", a.lifecycle], ["value tier", a.value_tier], ["loyalty", a.loyalty], ["needs", a.needs],
      ["RFM", `R${a.rfm.r} F${a.rfm.f} M${a.rfm.m}` + (a.rfm_segment ? ` (${a.rfm_segment})` : "")],
      ["key account", a.key_account ? "yes" : "no"],
      ["treatment", [t.id, t.discount_pct ? t.discount_pct + "% discount" : null, t.free_shipping ? "free shipping" : null,
        "support " + t.support_queue, t.campaign ? "campaign " + t.campaign : null, "channel " + t.channel, t.offer].filter(Boolean).join(" · ")],
      ["rules version", body.rules_version], ["as of", body.as_of], ["next review", body.next_review_at || "—"],
    ];
    for (const [k, v] of rows) dl.append(el("dt", k), el("dd", v));
    const reasons = el("ul");
    reasons.id = "reasons";
    for (const r of body.reasons) reasons.append(el("li", r));
    dl.append(el("dt", "reasons"), (() => { const dd = el("dd"); dd.append(reasons); return dd; })());
    out.replaceChildren(dl);
  }

  // --- session -----------------------------------------------------------------------------------
  function logout(message) {
    sessionStorage.removeItem(KEY);
    key = null;
    if (stream) stream.abort();
    stream = null;
    clearInterval(refreshTimer);
    $("board").hidden = true;
    $("forget").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    setStatus("not connected", false);
  }

  function start() {
    $("login").hidden = true;
    $("board").hidden = false;
    $("forget").hidden = false;
    refresh();
    refreshTimer = setInterval(refresh, REFRESH_MS);
    restartStream(true);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", (e) => {
      e.preventDefault();
      key = $("key").value.trim();
      sessionStorage.setItem(KEY, key);
      $("key").value = "";
      start();
    });
    $("forget").addEventListener("click", () => logout());
    $("window").addEventListener("change", refresh);
    $("feed-filter").addEventListener("submit", (e) => {
      e.preventDefault();
      $("feed").tBodies[0].replaceChildren();
      restartStream(true);
    });
    $("feed-pause").addEventListener("click", () => {
      paused = !paused;
      $("feed-pause").textContent = paused ? "Resume" : "Pause";
    });
    $("lookup").addEventListener("submit", (e) => {
      e.preventDefault();
      lookup($("customer").value.trim());
    });
    setInterval(render, RENDER_MS);
    if (key) start(); else logout();
  });
})();
