// The llmedge status page: polls /status (and /usage) and redraws. Everything is built with
// DOM calls and textContent, never parsed as HTML, so nothing in the data can become markup.
"use strict";

(function () {
  const POLL_MS = 5000;
  const SVG = "http://www.w3.org/2000/svg";
  // Nodes seen since the page loaded, so one that disconnects is shown as gone rather than
  // silently dropped from its region.
  const seen = new Map(); // node id -> {node, region, lastSeen}

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else e.setAttribute(k, v);
    }
    for (const k of kids) {
      if (k === null || k === undefined || k === false) continue;
      e.append(k instanceof Node ? k : String(k));
    }
    return e;
  }
  function badge(ok, yes, no, cls) {
    return el("span", { class: "badge " + (cls || (ok ? "ok" : "bad")) }, ok ? yes : no);
  }
  function ago(ts) {
    if (!ts) return "never";
    const s = Math.round((Date.now() - new Date(ts).getTime()) / 1000);
    if (s < 60) return s + "s ago";
    if (s < 3600) return Math.round(s / 60) + "m ago";
    if (s < 86400) return Math.round(s / 3600) + "h ago";
    return Math.round(s / 86400) + "d ago";
  }
  function when(ts) {
    return ts ? new Date(ts).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "—";
  }
  function kind(n) {
    const s = n.subscribed || [];
    if (s.includes("authz_policy")) return "extauthz";
    if (s.includes("ratelimit_config")) return "ratelimit";
    if (s.includes("listeners") || s.includes("clusters")) return "envoy";
    return "node";
  }
  // table draws rows under a header; "stack" tables become one block per row on a phone,
  // each cell labelled by its column.
  function table(head, rows, stack) {
    const t = el("table", stack ? { class: "stack" } : {}, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))));
    const b = el("tbody");
    for (const r of rows) b.append(el("tr", {}, ...r.map((c, i) => el("td", { "data-label": head[i] }, c))));
    t.append(b);
    return el("div", { class: "scroll" }, t);
  }

  function renderAlerts(st) {
    const sec = document.getElementById("alerts");
    const list = document.getElementById("alert-list");
    let alerts = st.alerts;
    if (alerts && !Array.isArray(alerts)) alerts = alerts.active || alerts.firing || [];
    if (!Array.isArray(alerts) || alerts.length === 0) {
      sec.hidden = true;
      list.replaceChildren();
      return;
    }
    sec.hidden = false;
    list.replaceChildren(...alerts.map((a) => {
      const name = a.rule || a.name || a.id || "alert";
      const text = a.summary || a.message || a.description || a.text || "";
      const since = a.since || a.started_at || a.fired_at || a.at;
      return el("li", { class: "alert" }, el("strong", {}, name), text ? " — " + text : "", since ? el("span", { class: "muted" }, " (since " + ago(since) + ")") : null);
    }));
  }

  function renderConfig(st) {
    const c = st.config;
    const body = document.getElementById("config-body");
    body.className = "";
    const kids = [
      el("p", {}, badge(c.valid, "last edit applied", "last edit rejected"), " ",
        c.source === "saved" ? badge(false, "", "serving the saved copy", "warn") : null),
      table(["serving", "applied", "checked", "files"], [[
        c.hash ? c.hash.slice(0, 12) : "nothing", when(c.applied_at) + " (" + ago(c.applied_at) + ")",
        when(c.checked_at), (c.files || []).join(", ") || c.path,
      ]], true),
    ];
    if (c.errors && c.errors.length) {
      kids.push(el("h3", {}, "Errors of the last edit (the previous config keeps serving)"),
        el("ul", { class: "errors", id: "config-errors" }, ...c.errors.map((e) => el("li", {}, el("code", {}, e.path || "(file)"), ": " + e.message))));
    }
    if (c.pending) {
      kids.push(el("p", { class: "warnline" }, "A destructive edit waits until " + when(c.pending.applies_at) + ": " + (c.pending.reasons || []).join("; ")));
    }
    if (c.warnings && c.warnings.length) {
      kids.push(el("details", {}, el("summary", {}, c.warnings.length + " warning(s)"), el("ul", {}, ...c.warnings.map((w) => el("li", {}, w)))));
    }
    body.replaceChildren(...kids);
  }

  function renderRegions(st) {
    const now = Date.now();
    const live = new Set();
    for (const r of st.regions) for (const n of r.nodes) {
      live.add(n.id);
      seen.set(n.id, { node: n, region: r.name, lastSeen: now });
    }
    const cards = st.regions.map((r) => {
      const kinds = new Set(r.nodes.map(kind));
      const missing = ["envoy", "extauthz"].concat((r.limits || []).length ? ["ratelimit"] : []).filter((k) => !kinds.has(k));
      const gone = [...seen.entries()].filter(([id, s]) => s.region === r.name && !live.has(id));
      const healthy = r.in_sync && missing.length === 0 && gone.length === 0;
      const rows = r.nodes.map((n) => [
        kind(n), el("code", {}, n.id), ago(n.connected_at),
        n.in_sync ? badge(true, "in sync") : badge(false, "", "out of sync"),
        n.last_nack ? "NACK " + n.last_nack.type + ": " + n.last_nack.error : "",
      ]);
      for (const [id, s] of gone) {
        rows.push([kind(s.node), el("code", {}, id), "last seen " + ago(s.lastSeen), badge(false, "", "disconnected"), ""]);
      }
      const problems = [];
      if (!r.in_sync) problems.push("not every node runs the served config");
      for (const k of missing) problems.push("no " + k + " connected");
      if (gone.length) problems.push(gone.length + " node(s) disconnected");
      return el("article", { class: "card region", "data-region": r.name, "data-in-sync": String(healthy) },
        el("h3", {}, r.name, " ", healthy ? badge(true, "in sync") : badge(false, "", "out of sync")),
        el("p", { class: "muted" }, "listen " + r.listen + " · upstreams " + (r.upstreams.join(", ") || "none")),
        problems.length ? el("p", { class: "warnline" }, problems.join("; ")) : null,
        table(["kind", "node", "connected", "state", ""], rows));
    });
    if (st.unassigned_nodes && st.unassigned_nodes.length) {
      cards.push(el("article", { class: "card" }, el("h3", {}, "Unassigned"),
        el("p", { class: "warnline" }, "Connected nodes of regions the config does not define: " + st.unassigned_nodes.map((n) => n.id + " (" + n.region + ")").join(", "))));
    }
    document.getElementById("region-list").replaceChildren(...cards);
    return st.regions.every((r) => r.in_sync);
  }

  function renderUpstreams(st) {
    const probes = (st.probes && st.probes.results) || [];
    const rows = st.upstreams.map((u) => {
      const rs = probes.filter((p) => p.upstream === u.name);
      const health = rs.length ? el("div", {}, ...rs.map((p) => el("div", { class: "probe", "data-probe": p.region + "/" + p.upstream, "data-ok": String(p.ok) },
        p.ok ? badge(true, p.region + " ok") : badge(false, "", p.region + " failing"),
        " " + (p.status || "—") + " · " + Math.round(p.latency_ms) + " ms (first byte " + Math.round(p.ttfb_ms) + " ms) · " + ago(p.at),
        p.error ? el("div", { class: "muted small" }, p.error) : null))) : el("span", { class: "muted" }, st.probes && st.probes.enabled ? "not probed yet" : "no probes");
      const certAt = rs.map((p) => p.cert_not_after).find(Boolean);
      let cert = el("span", { class: "muted" }, u.url.startsWith("https:") ? "unknown" : "plain http");
      if (certAt) {
        const days = Math.floor((new Date(certAt).getTime() - Date.now()) / 86400000);
        cert = el("span", { class: days < 14 ? "badge bad" : days < 30 ? "badge warn" : "" }, when(certAt).slice(0, 10) + " (" + days + " days)");
      }
      const dns = rs.map((p) => p.dns).find((d) => d && d.length);
      return [el("strong", {}, u.name), el("span", {}, u.url, el("div", { class: "muted small" }, (u.api || "") + (u.connect ? " · connect " + u.connect : "") + (dns ? " · DNS " + dns.join(", ") : ""))), health, cert];
    });
    const intro = st.probes && st.probes.enabled
      ? el("p", { class: "muted" }, "Probed every " + st.probes.interval + " through each region's edge as caller " + st.probes.caller + ".")
      : el("p", { class: "muted" }, "Probes are off (no probes section in the routes YAML).");
    document.getElementById("upstream-list").replaceChildren(intro, table(["upstream", "where", "probe", "certificate expires"], rows, true));
    return probes.every((p) => p.ok);
  }

  // barChart draws one horizontal bar per row as inline SVG.
  function barChart(title, rows, fmt) {
    const w = 380, bar = 18, gap = 6, label = 170;
    const h = Math.max(1, rows.length) * (bar + gap) + 4;
    const max = Math.max(1e-12, ...rows.map((r) => r.value));
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + w + " " + h);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", title);
    rows.forEach((r, i) => {
      const y = i * (bar + gap) + 2;
      const t = document.createElementNS(SVG, "text");
      t.setAttribute("x", "0"); t.setAttribute("y", String(y + bar - 5)); t.setAttribute("class", "lbl");
      t.textContent = r.label.length > 28 ? r.label.slice(0, 27) + "…" : r.label;
      const rect = document.createElementNS(SVG, "rect");
      const bw = Math.max(1, ((w - label - 70) * r.value) / max);
      rect.setAttribute("x", String(label)); rect.setAttribute("y", String(y));
      rect.setAttribute("width", String(bw)); rect.setAttribute("height", String(bar)); rect.setAttribute("class", "bar");
      const v = document.createElementNS(SVG, "text");
      v.setAttribute("x", String(label + bw + 4)); v.setAttribute("y", String(y + bar - 5)); v.setAttribute("class", "val");
      v.textContent = fmt(r.value);
      svg.append(t, rect, v);
    });
    return el("figure", { class: "chart" }, el("figcaption", {}, title), rows.length ? svg : el("p", { class: "muted" }, "no requests"));
  }

  function renderUsage(u) {
    const sec = document.getElementById("usage");
    if (!u) {
      sec.hidden = true;
      return;
    }
    sec.hidden = false;
    const totals = u.totals || [];
    const label = (t) => (t.group.caller || "?") + " · " + (t.group.model || "?");
    const top = (f) => totals.map((t) => ({ label: label(t), value: f(t) })).sort((a, b) => b.value - a.value).slice(0, 12);
    const n = (v) => v.toLocaleString("en");
    const charts = [
      barChart("Requests per caller · model", top((t) => t.requests), n),
      barChart("Tokens (input + output)", top((t) => t.input_tokens + t.output_tokens), n),
    ];
    const currencies = [...new Set(totals.filter((t) => t.currency).map((t) => t.currency))];
    for (const c of currencies) {
      charts.push(barChart("Cost (" + c + ")", totals.filter((t) => t.currency === c).map((t) => ({ label: label(t), value: t.cost })).sort((a, b) => b.value - a.value).slice(0, 12), (v) => v.toFixed(4)));
    }
    const unpriced = totals.reduce((s, t) => s + (t.price_missing || 0), 0);
    if (unpriced) charts.push(el("p", { class: "muted" }, unpriced + " request(s) have no price."));
    document.getElementById("usage-charts").replaceChildren(...charts);
  }

  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store", credentials: "same-origin" });
    if (r.status === 503 && url.startsWith("/usage")) return null; // the ledger is off
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    return r.json();
  }

  async function poll() {
    const overall = document.getElementById("overall");
    try {
      const st = await getJSON("/status");
      renderAlerts(st);
      renderConfig(st);
      const synced = renderRegions(st);
      const probed = renderUpstreams(st);
      const ok = st.config.valid && synced && probed && !document.querySelector(".region[data-in-sync=false]");
      overall.className = "badge " + (ok ? "ok" : "bad");
      overall.textContent = ok ? "all good" : "attention";
      document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
      try {
        renderUsage(await getJSON("/usage?since=24h&by=caller,model"));
      } catch (e) {
        renderUsage(null);
      }
    } catch (e) {
      overall.className = "badge bad";
      overall.textContent = "control plane unreachable";
      document.getElementById("updated").textContent = String(e.message || e);
    }
  }

  poll();
  setInterval(poll, POLL_MS);
})();
