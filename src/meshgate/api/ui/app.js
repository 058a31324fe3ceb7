// meshgate dashboard: reads the gateway's API with the credential of whoever signed in, and
// redraws a view when what it shows has changed (ETags: an unchanged answer is a bodiless 304).
"use strict";

const API = "../api/v1";
const TOKEN_KEY = "meshgate.token";
const POLL_MS = 1000;

// ---------------------------------------------------------------------------------------------
// Small helpers

const $ = (sel, root = document) => root.querySelector(sel);

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => (
    { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]
  ));
}

function fmtNum(n, digits = 1) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  if (Math.abs(n) >= 1000) return Math.round(n).toLocaleString("en");
  return Number(n).toFixed(digits).replace(/\.0+$/, "");
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms >= 1000) return `${fmtNum(ms / 1000, 2)} s`;
  return `${fmtNum(ms, ms < 10 ? 2 : 1)} ms`;
}

function fmtPct(r) {
  return r === null || r === undefined ? "–" : `${fmtNum(r * 100, 1)} %`;
}

function toMillis(t) {
  if (t === null || t === undefined) return null;
  return typeof t === "number" ? t * 1000 : Date.parse(t);
}

function ago(t) {
  const ms = toMillis(t);
  if (ms === null || Number.isNaN(ms)) return "–";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${fmtNum(s / 3600, 1)} h ago`;
}

function timeOfDay(t) {
  const ms = toMillis(t);
  return ms === null ? "–" : new Date(ms).toISOString().slice(11, 19);
}

function clock(t) {
  const ms = toMillis(t);
  return ms === null ? "–" : new Date(ms).toISOString().replace("T", " ").slice(0, 23);
}

// Coarse on purpose: a view is redrawn only when its text changes, not every second.
function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return "< 1 min";
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${fmtNum(s / 3600, 1)} h`;
  return `${fmtNum(s / 86400, 1)} d`;
}

// State words and their look: the word is always shown; colour and shape only repeat it.
const LOOKS = {
  healthy: ["ok", "●"], passing: ["ok", "●"], closed: ["ok", "●"], succeeded: ["ok", "✔"],
  live: ["ok", "●"], ready: ["ok", "●"],
  starting: ["info", "◌"], queued: ["info", "◌"], running: ["info", "▶"], draining: ["info", "◐"],
  "half-open": ["warn", "◐"], half_open: ["warn", "◐"], degraded: ["warn", "▲"],
  unhealthy: ["bad", "▲"], warning: ["warn", "▲"], cancelled: ["none", "■"],
  stopped: ["bad", "✖"], restarting: ["bad", "↻"], restarted: ["bad", "↻"], failed: ["bad", "✖"], dead: ["bad", "✖"], open: ["bad", "✖"],
  critical: ["bad", "✖"], unreachable: ["bad", "✖"],
};

function badge(word, label) {
  const [tone, mark] = LOOKS[word] || ["none", "○"];
  return `<span class="badge ${tone}" data-state="${esc(word)}"><span aria-hidden="true">${mark}</span>${esc(label ?? word)}</span>`;
}

function tone(word) {
  return (LOOKS[word] || ["none"])[0];
}

// ---------------------------------------------------------------------------------------------
// The API, with the signed-in credential and conditional reads

class Unauthorized extends Error {}

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

const cache = new Map(); // url -> {etag, data}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function request(method, path, body) {
  const url = `${API}${path}`;
  const headers = { Accept: "application/json", ...authHeaders() };
  const cached = method === "GET" ? cache.get(url) : undefined;
  if (cached) headers["If-None-Match"] = cached.etag;
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(url, init);
  if (res.status === 304 && cached) return { data: cached.data, changed: false };
  if (res.status === 401) throw new Unauthorized();
  let data = null;
  const text = await res.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = { detail: text }; }
  }
  if (!res.ok) throw new ApiError(res.status, data);
  const etag = res.headers.get("ETag");
  if (method === "GET" && etag) cache.set(url, { etag, data });
  return { data, changed: true };
}

const get = (path) => request("GET", path);

// Several reads at once; `changed` when any of them changed. An optional read that the
// gateway does not answer (404) or the caller may not make (403) gives null.
async function getAll(paths, optional = []) {
  const results = await Promise.all(paths.map(async (p) => {
    try {
      return await get(p);
    } catch (e) {
      if (optional.includes(p) && e instanceof ApiError && [403, 404].includes(e.status)) {
        return { data: null, changed: false };
      }
      throw e;
    }
  }));
  return { data: results.map((r) => r.data), changed: results.some((r) => r.changed) };
}

// ---------------------------------------------------------------------------------------------
// Sign-in

let signingIn = null;

function signIn(message) {
  const dialog = $("#signin");
  $("#signin-error").textContent = message || "";
  if (!dialog.open) dialog.showModal();
  $("#token").focus();
  if (!signingIn) {
    signingIn = new Promise((resolve) => {
      $("#signin-form").onsubmit = (ev) => {
        ev.preventDefault();
        const token = $("#token").value.trim();
        if (!token) return;
        sessionStorage.setItem(TOKEN_KEY, token);
        cache.clear();
        dialog.close();
        $("#token").value = "";
        signingIn = null;
        resolve();
      };
    });
  }
  return signingIn;
}

function showSignOut() {
  $("#signout").hidden = !sessionStorage.getItem(TOKEN_KEY);
}

$("#signout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  cache.clear();
  showSignOut();
  refresh(true);
});

// ---------------------------------------------------------------------------------------------
// Views: each has a `load` (what to read; `changed` says whether to redraw) and a `render`.

function sparkline(series, key, cls = "") {
  if (!series || series.length < 2) return "";
  const values = series.map((b) => b[key] || 0);
  const max = Math.max(1, ...values);
  const w = 90, h = 22;
  const pts = values.map((v, i) => `${(i / (values.length - 1)) * w},${h - 2 - (v / max) * (h - 4)}`);
  return `<svg class="spark" width="${w}" height="${h}" aria-hidden="true"><polyline class="${cls}" points="${pts.join(" ")}"/></svg>`;
}

// A crashed instance being started again is shown as the fault it is, and for its first
// seconds back too: a replacement quicker than the page's reading would otherwise pass
// unseen, the crash with it.
const RESTARTED_SHOWN_S = 5;

function shownState(inst) {
  if (inst.restarts > 0 && inst.state === "starting") return "restarting";
  if (inst.restarts > 0 && inst.state === "healthy" && inst.uptime_s < RESTARTED_SHOWN_S) return "restarted";
  return inst.state;
}

function instanceRow(inst) {
  const state = shownState(inst);
  const failed = ["failed", "stopped", "unhealthy", "restarting", "restarted"].includes(state);
  const health = inst.last_health || inst.last_check; // MCP instances, HTTP instances
  const check = health
    ? `${health.ok ? "passed" : "failed"} at ${timeOfDay(health.at)}${health.latency_ms != null ? `, ${fmtMs(health.latency_ms)}` : ""}`
    : "–";
  const where = inst.pid != null ? String(inst.pid) : (inst.url || inst.address || "–").replace(/^https?:\/\//, "");
  let detail = "";
  const why = inst.last_error || (failed && health && !health.ok ? health.error : null);
  const lines = Array.isArray(inst.last_stderr) ? inst.last_stderr.join("\n") : (inst.last_stderr || "");
  if (failed && (why || lines)) {
    detail = `<tr class="failed"><td colspan="9">${why ? `<span class="error">${esc(why)}</span>` : ""}${lines ? `<pre class="stderr" aria-label="Last lines ${esc(inst.id)} wrote to stderr">${esc(lines)}</pre>` : ""}</td></tr>`;
  }
  return `<tr class="${failed ? "failed" : ""}" data-instance="${esc(inst.id)}">
    <td class="mono" title="${esc(inst.id)}">${esc(inst.id)}</td>
    <td class="state">${badge(state)}</td>
    <td class="num mono" title="${esc(inst.url || inst.address || "")}">${esc(where)}</td>
    <td>${esc(inst.node ?? "–")}${inst.remote ? " (remote)" : ""}</td>
    <td>${badge(inst.breaker || "closed", `breaker ${inst.breaker || "closed"}`)}</td>
    <td class="num">${esc(inst.in_flight ?? 0)}</td>
    <td class="num">${esc(inst.restarts ?? "–")}</td>
    <td>${esc(check)}</td>
    <td class="num">${inst.uptime_s != null ? esc(duration(inst.uptime_s)) : "–"}</td>
  </tr>${detail}`;
}

function serviceCard(svc, stats) {
  const s = stats || {};
  const instances = svc.instances || [];
  const healthy = instances.filter((i) => i.state === "healthy").length;
  const state = svc.state || (healthy ? "healthy" : "unhealthy");
  const bad = instances.some((i) => ["failed", "stopped", "restarting", "restarted"].includes(shownState(i))) || state !== "healthy";
  const scaling = svc.scaling && svc.scaling.min !== svc.scaling.max
    ? `<span class="stat">scale <b>${esc(svc.scaling.min)}–${esc(svc.scaling.max)}</b>, wants <b>${esc(svc.scaling.desired)}</b></span>` : "";
  const rows = instances.map(instanceRow).join("") ||
    `<tr><td colspan="9" class="muted">No instance running${svc.scaling && svc.scaling.desired === 0 ? " (scaled to zero)" : ""}.</td></tr>`;
  return `<section class="svc ${bad ? (tone(state) === "bad" ? "bad" : "warn") : ""}" data-service="${esc(svc.name)}" aria-labelledby="svc-${esc(svc.name)}">
    <header>
      <h3 class="name" id="svc-${esc(svc.name)}">${esc(svc.name)}</h3>
      ${badge(state)}
      <span class="stat">${esc(svc.kind === "mcp" ? "MCP server" : "HTTP service")}</span>
      <span class="stat"><b>${healthy}</b>/${instances.length} healthy</span>
      <span class="stat"><b>${fmtNum(s.calls_per_s, 2)}</b> calls/s ${sparkline(s.series, "calls")}</span>
      <span class="stat">errors <b>${fmtPct(s.calls ? s.error_rate : null)}</b></span>
      <span class="stat">p95 <b>${fmtMs(s.p95_ms)}</b></span>
      ${scaling}
    </header>
    <div class="table-wrap flush">
    <table class="instances">
      <caption class="muted" hidden>Instances of ${esc(svc.name)}</caption>
      <thead><tr><th scope="col">Instance</th><th scope="col">State</th><th scope="col" class="num">PID or URL</th><th scope="col">Node</th><th scope="col">Breaker</th><th scope="col" class="num">In flight</th><th scope="col" class="num">Restarts</th><th scope="col">Last health check</th><th scope="col" class="num">Up</th></tr></thead>
      <tbody>${rows}</tbody>
    </table></div>
  </section>`;
}

// What the overview lists: a name filter, and only the services with something wrong.
const serviceFilter = { text: "", problems: false };
const STATS_EVERY_MS = 5000;
let statsReadAt = 0;

function hasProblem(svc) {
  return svc.state !== "healthy"
    || (svc.instances || []).some((i) => shownState(i) !== "healthy" || (i.breaker && i.breaker !== "closed"));
}

const overview = {
  title: "Overview",
  async load() {
    const reads = ["/mesh/v2/services?limit=1000", "/mesh/v2/nodes"];
    // The window's buckets are 10 s wide: read it every few seconds, not every second (at 300
    // services its answer is half a megabyte; bench/RESULTS.md).
    const stats = "/mesh/v2/stats?window_s=300";
    const fresh = cache.get(`${API}${stats}`);
    if (!fresh || Date.now() - statsReadAt >= STATS_EVERY_MS) {
      statsReadAt = Date.now();
      const { data, changed } = await getAll([...reads, stats], [stats, "/mesh/v2/nodes"]);
      return { data, changed };
    }
    const { data, changed } = await getAll(reads, ["/mesh/v2/nodes"]);
    return { data: [...data, fresh.data], changed };
  },
  render([services, nodes, stats]) {
    const items = (services && services.items) || [];
    const byStats = (stats && stats.services) || {};
    const mcp = items.filter((s) => s.kind === "mcp");
    const http = items.filter((s) => s.kind !== "mcp");
    const all = items.flatMap((s) => s.instances || []);
    const healthy = all.filter((i) => i.state === "healthy").length;
    const openBreakers = all.filter((i) => i.breaker && i.breaker !== "closed").length;
    const calls = Object.values(byStats).reduce((a, s) => a + (s.calls_per_s || 0), 0);
    const nodeList = (nodes && nodes.items) || [];
    const over = stats ? `over the last ${Math.round(stats.window_s / 60)} min` : "";
    const card = (n, k, cls = "") => `<div class="card ${cls}"><div class="n">${n}</div><div class="k">${k}</div></div>`;
    let html = `<h1>Overview</h1>
      <div class="cards">
        ${card(`${mcp.filter((s) => s.state === "healthy").length}/${mcp.length}`, "MCP servers healthy")}
        ${card(`${http.filter((s) => s.state === "healthy").length}/${http.length}`, "HTTP services healthy")}
        ${card(`${healthy}/${all.length}`, "instances healthy")}
        ${card(openBreakers, "breakers not closed")}
        ${card(fmtNum(calls, 2), `calls/s ${over}`)}
        ${nodeList.length ? card(nodeList.length, nodeList.length === 1 ? "node" : "nodes in the mesh") : ""}
      </div>`;
    if (nodeList.length > 1) {
      html += `<h2>Nodes</h2><div class="table-wrap"><table>
        <thead><tr><th scope="col">Node</th><th scope="col">URL</th><th scope="col">Reachable</th><th scope="col" class="num">Load</th><th scope="col">Servers (healthy/total)</th><th scope="col">Version</th><th scope="col">Up</th></tr></thead><tbody>
        ${nodeList.map((n) => `<tr data-node="${esc(n.id)}"><td>${esc(n.id)}${n.self ? " <span class=\"muted\">(this one)</span>" : ""}</td><td class="mono">${esc(n.url)}</td>
          <td>${badge(n.reachable ? "live" : "unreachable", n.reachable ? "reachable" : "unreachable")}</td><td class="num">${esc(n.load)}</td>
          <td>${Object.entries(n.servers || {}).map(([k, v]) => `${esc(k)} ${v.healthy}/${v.total}`).join(", ") || "–"}</td>
          <td>${esc(n.version)}</td><td>${n.started_at ? esc(duration(Date.now() / 1000 - n.started_at)) : "–"}</td></tr>`).join("")}
        </tbody></table></div>`;
    }
    const text = serviceFilter.text.toLowerCase();
    const shown = (list) => list.filter((s) => (!text || s.name.toLowerCase().includes(text))
      && (!serviceFilter.problems || hasProblem(s)));
    const section = (list, none) => {
      const cards = shown(list).map((s) => serviceCard(s, byStats[s.name])).join("");
      if (cards) return cards;
      return `<p class="muted">${list.length ? "None matches the filter." : none}</p>`;
    };
    html += `<form class="toolbar" id="service-filter">
        <div class="field"><label for="f-service">Service name contains</label>
          <input id="f-service" type="search" value="${esc(serviceFilter.text)}"></div>
        <div class="field"><label><input id="f-problems" type="checkbox"${serviceFilter.problems ? " checked" : ""}> Only services with a problem</label></div>
      </form>`;
    html += `<h2>MCP servers</h2>${section(mcp, "No MCP server is configured.")}`;
    html += `<h2>HTTP services</h2>${section(http, "No HTTP service is registered.")}`;
    return html;
  },
  bind(root) {
    $("#service-filter", root).addEventListener("submit", (e) => e.preventDefault());
    $("#f-service", root).addEventListener("input", (e) => { serviceFilter.text = e.target.value; refresh(true, "#f-service"); });
    $("#f-problems", root).addEventListener("change", (e) => { serviceFilter.problems = e.target.checked; refresh(true, "#f-problems"); });
  },
};

// Topology: services in columns by how deep they sit in the dependency graph (callers left,
// what they call right), so at 30 services the lines run one way and rarely cross.
const topology = {
  title: "Topology",
  async load() {
    return getAll(["/mesh/v2/topology"]);
  },
  render([topo]) {
    const services = Object.values(topo.services || {});
    const edges = (topo.edges || []).filter((e) => topo.services[e.from] && topo.services[e.to]);
    const names = services.map((s) => s.name).sort();
    const out = new Map(names.map((n) => [n, []]));
    edges.forEach((e) => { if (e.from !== e.to) out.get(e.from).push(e.to); });
    // Column: how far a service is from the end of its chains (the longest path to one that
    // calls nothing; cycles cut by the round limit), so that a tier of services shares a
    // column and what is called sits right of its callers.
    const rank = new Map(names.map((n) => [n, 0]));
    for (let round = 0; round < names.length; round++) {
      let moved = false;
      edges.forEach((e) => {
        if (e.from === e.to) return;
        const h = rank.get(e.to) + 1;
        if (h > rank.get(e.from) && h < names.length) { rank.set(e.from, h); moved = true; }
      });
      if (!moved) break;
    }
    const tallest = Math.max(0, ...names.map((n) => rank.get(n)));
    const depth = new Map(names.map((n) => [n, tallest - rank.get(n)]));
    // A service that calls nothing sits just right of its nearest caller, not at the far end.
    names.forEach((n) => {
      const from = edges.filter((e) => e.to === n && e.from !== n).map((e) => depth.get(e.from));
      if (!out.get(n).length && from.length) depth.set(n, Math.max(...from) + 1);
    });
    const linked = new Set(edges.flatMap((e) => [e.from, e.to]));
    const columns = [];
    names.filter((n) => linked.has(n)).forEach((n) => {
      const d = depth.get(n);
      (columns[d] = columns[d] || []).push(n);
    });
    // Rows: each service near the mean row of its neighbours in the columns either side
    // (a few sweeps of the barycentre method), so that lines cross less.
    const neighbours = new Map(names.map((n) => [n, []]));
    edges.forEach((e) => { if (e.from !== e.to) { neighbours.get(e.from).push(e.to); neighbours.get(e.to).push(e.from); } });
    for (let sweep = 0; sweep < 4; sweep++) {
      const row = new Map();
      columns.forEach((col) => (col || []).forEach((n, i) => row.set(n, i)));
      columns.forEach((col, c) => {
        if (!col) return;
        const centre = (n) => {
          const near = neighbours.get(n).filter((m) => Math.abs(depth.get(m) - c) === 1);
          return near.length ? near.reduce((a, m) => a + row.get(m), 0) / near.length : row.get(n);
        };
        col.sort((a, b) => centre(a) - centre(b) || a.localeCompare(b));
      });
    }
    const alone = names.filter((n) => !linked.has(n));
    const W = 176, H = 46, GX = 84, GY = 20, PAD = 20;
    const pos = new Map();
    columns.forEach((col, c) => (col || []).forEach((n, r) => pos.set(n, [PAD + c * (W + GX), PAD + r * (H + GY)])));
    const linkedRows = Math.max(0, ...columns.map((c) => (c || []).length));
    const top = PAD + linkedRows * (H + GY) + (linkedRows ? 30 : 0);
    const perRow = Math.max(4, columns.length || 4);
    alone.forEach((n, i) => pos.set(n, [PAD + (i % perRow) * (W + 30), top + Math.floor(i / perRow) * (H + GY)]));
    const width = Math.max(...[...pos.values()].map(([x]) => x + W + PAD), 400);
    const height = Math.max(...[...pos.values()].map(([, y]) => y + H + PAD), 120);
    const edgeSvg = edges.map((e) => {
      const [x1, y1] = pos.get(e.from), [x2, y2] = pos.get(e.to);
      const failing = e.kind === "observed" && e.errors > 0;
      const sx = x1 + W, sy = y1 + H / 2, tx = x2, ty = y2 + H / 2;
      const path = e.from === e.to
        ? `M${x1 + W - 30},${y1} c 0,-30 40,-30 30,0`
        : tx > sx
          ? `M${sx},${sy} C${sx + GX / 2},${sy} ${tx - GX / 2},${ty} ${tx},${ty}`
          : `M${x1 + W / 2},${y1 + H} C${x1 + W / 2},${y1 + H + 40} ${x2 + W / 2},${y2 + H + 40} ${x2 + W / 2},${y2 + H}`;
      const label = e.kind === "observed" ? `${e.calls} calls${e.errors ? `, ${e.errors} errors` : ""}` : "";
      return `<path class="edge ${esc(e.kind)}${failing ? " failing" : ""}" d="${path}" marker-end="url(#arrow)"><title>${esc(e.from)} → ${esc(e.to)} (${esc(e.kind)}${label ? `: ${esc(label)}` : ""})</title></path>
        ${label && tx > sx ? `<text class="elabel" x="${(sx + tx) / 2}" y="${(sy + ty) / 2 - 4}" text-anchor="middle">${esc(label)}</text>` : ""}`;
    }).join("");
    const nodeSvg = services.map((s) => {
      const [x, y] = pos.get(s.name);
      const status = s.status || s.state;
      const cls = tone(status) === "ok" ? "ok" : tone(status) === "bad" ? "bad" : tone(status) === "warn" ? "warn" : "";
      const name = s.name.length > 24 ? `${s.name.slice(0, 23)}…` : s.name;
      return `<g class="node ${cls}" transform="translate(${x},${y})" data-service="${esc(s.name)}">
        <title>${esc(s.name)}: ${esc(status)}, ${s.healthy}/${s.instances} healthy</title>
        <rect width="${W}" height="${H}"></rect>
        <text x="10" y="19">${esc(name)}</text>
        <text class="sub" x="10" y="36">${esc(s.kind)} · ${esc(status)} · ${s.healthy}/${s.instances}</text>
      </g>`;
    }).join("");
    const rows = edges.map((e) => `<tr><td>${esc(e.from)}</td><td>${esc(e.to)}</td><td>${esc(e.kind)}</td><td class="num">${e.calls ?? "–"}</td><td class="num">${e.errors ?? "–"}</td><td>${e.last_seen ? esc(ago(e.last_seen)) : "–"}</td></tr>`).join("");
    const degraded = services.filter((s) => s.status && s.status !== "healthy");
    return `<h1>Topology</h1>
      <div class="legend">
        <span>─── observed calls</span><span>- - - declared dependency</span>
        <span>${badge("degraded")} a dependency is down</span><span>${badge("unhealthy")} no healthy instance</span>
      </div>
      ${degraded.length ? `<p class="notice error" role="status">Not healthy: ${degraded.map((s) => `${esc(s.name)} (${esc(s.status)})`).join(", ")}</p>` : ""}
      <div class="graph"><svg role="img" aria-label="Dependency map of ${services.length} services and ${edges.length} edges" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">
        <defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#7d889c"/></marker></defs>
        ${edgeSvg}${nodeSvg}
      </svg></div>
      ${rows ? `<details class="edges"><summary>Edges as a table (${edges.length})</summary><div class="table-wrap"><table><thead><tr><th scope="col">From</th><th scope="col">To</th><th scope="col">Kind</th><th scope="col" class="num">Calls</th><th scope="col" class="num">Errors</th><th scope="col">Last seen</th></tr></thead><tbody>${rows}</tbody></table></div></details>`
        : "<p class=\"muted\">No edges yet: services declare theirs with <code>depends_on</code>, and calls through the gateway add observed ones.</p>"}`;
  },
};

// Tasks: a page at a time (the API pages forward by cursor; the way back is remembered).
const taskFilter = { status: "", limit: 25, cursors: [null] };

function taskTarget(t) {
  const g = t.target || {};
  if (g.server) return `${g.server} · ${g.tool}`;
  if (g.service) return `${g.service} · ${g.method || "POST"} ${g.path || "/"}`;
  return "–";
}

const tasksView = {
  title: "Tasks",
  async load() {
    const q = new URLSearchParams({ limit: taskFilter.limit });
    if (taskFilter.status) q.set("status", taskFilter.status);
    const cursor = taskFilter.cursors[taskFilter.cursors.length - 1];
    if (cursor) q.set("cursor", cursor);
    return getAll([`/mesh/v2/tasks?${q}`]);
  },
  render([page]) {
    const items = [...(page.items || [])].sort((a, b) => (toMillis(b.created_at) || 0) - (toMillis(a.created_at) || 0));
    const statuses = ["", "queued", "running", "succeeded", "failed", "dead", "cancelled"];
    const rows = items.map((t) => `<tr data-task="${esc(t.id)}">
      <td><a class="mono" href="#/tasks/${encodeURIComponent(t.id)}">${esc(t.id)}</a></td>
      <td>${esc(taskTarget(t))}</td><td>${badge(t.status)}</td>
      <td class="num">${esc(t.attempts ?? 0)}/${esc(t.max_attempts ?? "–")}</td>
      <td>${esc(clock(t.created_at))}</td><td>${esc(t.finished_at ? clock(t.finished_at) : "–")}</td></tr>`).join("");
    const pageNo = taskFilter.cursors.length;
    return `<h1>Tasks</h1>
      <form class="toolbar" id="task-filter">
        <div class="field"><label for="f-status">Status</label>
          <select id="f-status">${statuses.map((s) => `<option value="${s}"${s === taskFilter.status ? " selected" : ""}>${s || "any"}</option>`).join("")}</select></div>
        <div class="field"><label for="f-limit">Per page</label>
          <select id="f-limit">${[25, 50, 100].map((n) => `<option${n === taskFilter.limit ? " selected" : ""}>${n}</option>`).join("")}</select></div>
      </form>
      ${rows ? `<div class="table-wrap"><table><thead><tr><th scope="col">Task</th><th scope="col">Target</th><th scope="col">Status</th><th scope="col" class="num">Attempts</th><th scope="col">Created (UTC)</th><th scope="col">Finished (UTC)</th></tr></thead><tbody>${rows}</tbody></table></div>`
        : `<p class="muted">No task${taskFilter.status ? ` is ${esc(taskFilter.status)}` : " here"}.</p>`}
      <div class="pager"><button type="button" id="prev"${pageNo > 1 ? "" : " disabled"}>← Previous page</button>
        <span class="muted">Page ${pageNo}</span>
        <button type="button" id="next"${page.next_cursor ? "" : " disabled"} data-cursor="${esc(page.next_cursor || "")}">Next page →</button></div>`;
  },
  bind(root) {
    const reset = () => { taskFilter.cursors = [null]; refresh(true); };
    $("#f-status", root).addEventListener("change", (e) => { taskFilter.status = e.target.value; reset(); });
    $("#f-limit", root).addEventListener("change", (e) => { taskFilter.limit = Number(e.target.value); reset(); });
    $("#prev", root).addEventListener("click", () => { taskFilter.cursors.pop(); refresh(true, "#prev"); });
    $("#next", root).addEventListener("click", (e) => {
      taskFilter.cursors.push(e.currentTarget.dataset.cursor);
      refresh(true, "#next");
    });
  },
};

let notice = null; // a message shown once on the next drawing of a view: {text, error}

function taskDetail(id) {
  return {
    title: `Task ${id}`,
    async load() {
      return getAll([`/mesh/v2/task/${encodeURIComponent(id)}`]);
    },
    render([t]) {
      const canCancel = ["queued", "running"].includes(t.status);
      const canRetry = ["failed", "dead"].includes(t.status);
      const prop = (k, v) => `<dt>${esc(k)}</dt><dd>${v}</dd>`;
      return `<p><a href="#/tasks">← Tasks</a></p>
        <h1>Task <span class="mono">${esc(t.id)}</span> ${badge(t.status)}</h1>
        <div class="actions">
          <button type="button" class="danger" id="cancel"${canCancel ? "" : " disabled"}>Cancel task</button>
          <button type="button" id="retry"${canRetry ? "" : " disabled"}>Retry task</button>
        </div>
        <dl class="props">
          ${prop("Target", esc(taskTarget(t)))}
          ${prop("Attempts", `${esc(t.attempts ?? 0)} of ${esc(t.max_attempts ?? "–")}`)}
          ${prop("Priority", esc(t.priority ?? 0))}
          ${prop("Created", esc(clock(t.created_at)))}
          ${prop("Started", esc(clock(t.started_at)))}
          ${prop("Finished", esc(clock(t.finished_at)))}
          ${prop("Deadline", esc(t.deadline_at ? clock(t.deadline_at) : "none"))}
          ${prop("Ran on node", esc(t.worker ?? "–"))}
          ${prop("Enqueued by", esc((t.target && t.target.principal && t.target.principal.name) || "–"))}
          ${t.idempotency_key ? prop("Idempotency key", `<span class="mono">${esc(t.idempotency_key)}</span>`) : ""}
        </dl>
        ${t.error ? `<h2>Error</h2><pre class="json">${esc(JSON.stringify(t.error, null, 2))}</pre>` : ""}
        ${t.result !== null && t.result !== undefined ? `<h2>Result</h2><pre class="json">${esc(JSON.stringify(t.result, null, 2))}</pre>` : ""}
        <h2>Arguments</h2><pre class="json">${esc(JSON.stringify((t.target || {}).arguments ?? (t.target || {}).body ?? null, null, 2))}</pre>`;
    },
    bind(root) {
      const act = async (method, path, done) => {
        try {
          await request(method, path);
          notice = { text: done };
        } catch (e) {
          if (e instanceof Unauthorized) { await signIn("Sign in to do that."); return; }
          // Someone else's task answers 404 to whoever may not change it: the page can see
          // the task, so the missing right is what the answer means.
          const why = e.status === 404 ? "your roles do not allow changing this task" : e.message;
          notice = { text: `Refused: ${why}.`.replace(/\.\.$/, "."), error: true };
        }
        refresh(true);
      };
      const base = `/mesh/v2/task/${encodeURIComponent(id)}`;
      $("#cancel", root).addEventListener("click", () => act("DELETE", base, "Task cancelled."));
      $("#retry", root).addEventListener("click", () => act("POST", `${base}/retry`, "Task queued again."));
    },
  };
}

// Recent traces. A read of the API (this page's own, among others) is one span; the calls worth
// a look have more, so one-span reads are left out unless asked for.
const traceFilter = { text: "", reads: false };

const tracesView = {
  title: "Traces",
  async load() {
    return getAll(["/mesh/v2/traces?limit=200"]);
  },
  render([traces]) {
    const all = traces.items || [];
    const text = traceFilter.text.toLowerCase();
    const items = all.filter((t) => (traceFilter.reads || t.spans > 1 || t.error)
      && (!text || `${t.name} ${t.trace_id}`.toLowerCase().includes(text)));
    const rows = items.map((t) => `<tr data-trace="${esc(t.trace_id)}">
      <td><a href="#/traces/${encodeURIComponent(t.trace_id)}">${esc(t.name)}</a></td>
      <td>${t.error ? badge("failed", "error") : badge("succeeded", "ok")}</td>
      <td class="num">${fmtMs(t.duration_ms)}</td><td class="num">${esc(t.spans)}</td>
      <td>${esc(clock(t.start))}</td><td class="mono">${esc(t.trace_id)}</td></tr>`).join("");
    const hidden = all.length - items.length;
    return `<h1>Traces</h1>
      ${traces.tracing === false ? "<p class=\"notice\">Tracing is off on this gateway (<code>mesh.tracing</code>).</p>" : ""}
      <form class="toolbar" id="trace-filter">
        <div class="field"><label for="f-text">Name or trace id contains</label>
          <input id="f-text" type="search" value="${esc(traceFilter.text)}"></div>
        <div class="field"><label><input id="f-reads" type="checkbox"${traceFilter.reads ? " checked" : ""}> Show one-span reads</label></div>
      </form>
      ${rows ? `<div class="table-wrap"><table><thead><tr><th scope="col">Trace</th><th scope="col">Outcome</th><th scope="col" class="num">Duration</th><th scope="col" class="num">Spans</th><th scope="col">Start (UTC)</th><th scope="col">Trace id</th></tr></thead><tbody>${rows}</tbody></table></div>`
        : "<p class=\"muted\">No trace to show. The gateway records a sampled share of requests (<code>trace_sample_ratio</code>), and every request whose <code>traceparent</code> is sampled.</p>"}
      ${hidden ? `<p class="muted">${hidden} of the ${all.length} recent traces are not shown by the filter.</p>` : ""}`;
  },
  bind(root) {
    const form = $("#trace-filter", root);
    form.addEventListener("submit", (e) => e.preventDefault());
    $("#f-text", root).addEventListener("input", (e) => { traceFilter.text = e.target.value; refresh(true, "#f-text"); });
    $("#f-reads", root).addEventListener("change", (e) => { traceFilter.reads = e.target.checked; refresh(true, "#f-reads"); });
  },
};

function traceDetail(id) {
  const open = new Set();
  return {
    title: "Trace",
    async load() {
      return getAll([`/mesh/v2/traces/${encodeURIComponent(id)}`]);
    },
    render([trace]) {
      const spans = trace.spans || [];
      const ids = new Set(spans.map((s) => s.span_id));
      const kids = new Map();
      spans.forEach((s) => {
        const parent = ids.has(s.parent_id) ? s.parent_id : null;
        if (!kids.has(parent)) kids.set(parent, []);
        kids.get(parent).push(s);
      });
      kids.forEach((list) => list.sort((a, b) => toMillis(a.start) - toMillis(b.start)));
      const t0 = Math.min(...spans.map((s) => toMillis(s.start)));
      const t1 = Math.max(...spans.map((s) => toMillis(s.start) + (s.duration_ms || 0)));
      const total = Math.max(t1 - t0, 0.001);
      const rows = [];
      const walk = (parent, depth) => (kids.get(parent) || []).forEach((s) => {
        const left = ((toMillis(s.start) - t0) / total) * 100;
        const width = Math.max(((s.duration_ms || 0) / total) * 100, 0.3);
        const error = s.status && /error/i.test(String(s.status.code ?? s.status));
        const expanded = open.has(s.span_id);
        rows.push(`<button type="button" class="span${error ? " error" : ""}" aria-expanded="${expanded}" data-span="${esc(s.span_id)}">
          <span class="label" data-css="padding-left:${depth * 16}px">${esc(s.name)} <span class="muted">${esc(s.kind || "")}</span></span>
          <span class="track" aria-hidden="true"><span class="bar" data-css="left:${left}%;width:${Math.min(width, 100 - left)}%"></span></span>
          <span class="dur">${fmtMs(s.duration_ms)}</span></button>`);
        if (expanded) {
          const attrs = Object.entries(s.attributes || {});
          rows.push(`<div class="attrs"><dl class="props">
            <dt>span</dt><dd class="mono">${esc(s.span_id)}</dd>
            <dt>status</dt><dd>${esc(typeof s.status === "object" ? JSON.stringify(s.status) : s.status)}</dd>
            ${attrs.map(([k, v]) => `<dt class="mono">${esc(k)}</dt><dd class="mono">${esc(typeof v === "object" ? JSON.stringify(v) : v)}</dd>`).join("")}
          </dl></div>`);
        }
        walk(s.span_id, depth + 1);
      });
      walk(null, 0);
      return `<p><a href="#/traces">← Traces</a></p>
        <h1>${esc(trace.name || spans[0]?.name || "Trace")} <span class="muted">${fmtMs(total)}</span></h1>
        <p class="muted mono">${esc(id)} · ${spans.length} spans · started ${esc(clock(t0 / 1000))} UTC</p>
        <p class="muted">Each bar is a span, placed in time within the whole trace. Choose a span to see its attributes.</p>
        <div class="waterfall">${rows.join("")}</div>`;
    },
    bind(root) {
      root.querySelectorAll(".span").forEach((el) => el.addEventListener("click", () => {
        const sid = el.dataset.span;
        if (open.has(sid)) open.delete(sid); else open.add(sid);
        refresh(true, `.span[data-span="${CSS.escape(sid)}"]`);
      }));
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Routing, drawing and the live loop

let current = null; // {key, view}
let timer = null;
let busy = false;

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const parts = hash.split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "topology") return ["topology", topology, "topology"];
  if (parts[0] === "tasks" && parts[1]) return [`task:${parts[1]}`, taskDetail(parts[1]), "tasks"];
  if (parts[0] === "tasks") return ["tasks", tasksView, "tasks"];
  if (parts[0] === "traces" && parts[1]) return [`trace:${parts[1]}`, traceDetail(parts[1]), "traces"];
  if (parts[0] === "traces") return ["traces", tracesView, "traces"];
  return ["overview", overview, "overview"];
}

function setLive(text, stale = false) {
  const el = $("#live");
  el.textContent = text;
  el.classList.toggle("stale", stale);
}

let drawnHtml = "";

function draw(view, data, focusSel, force) {
  const root = $("#view");
  const active = document.activeElement;
  const keep = focusSel || (active && active.id && root.contains(active) ? `#${CSS.escape(active.id)}` : null);
  const scroll = window.scrollY;
  let html = view.render(data);
  if (notice) {
    html = `<p class="notice${notice.error ? " error" : ""}" role="status">${esc(notice.text)}</p>${html}`;
    notice = null;
  }
  // The same text again (an answer that changed only in what is not shown): the page stays
  // as it is, with the reader's selection and focus.
  if (html === drawnHtml && !force) return;
  drawnHtml = html;
  root.innerHTML = html;
  // Positions computed here are set through the CSS object model: the page's policy allows
  // no style attributes in markup.
  root.querySelectorAll("[data-css]").forEach((el) => {
    el.dataset.css.split(";").forEach((decl) => {
      const [prop, value] = decl.split(":");
      if (prop && value) el.style.setProperty(prop.trim(), value.trim());
    });
  });
  if (view.bind) view.bind(root);
  window.scrollTo(0, scroll);
  if (keep) {
    const el = root.querySelector(keep);
    if (el) {
      el.focus();
      if (el.type === "search" || el.type === "text") el.setSelectionRange(el.value.length, el.value.length);
    }
  }
}

// Read the current view and redraw it if anything changed (or `force`).
async function refresh(force = false, focusSel = null) {
  if (busy && !force) return;
  busy = true;
  const [key, , nav] = route();
  if (!current || current.key !== key) {
    const [, view] = route();
    current = { key, view, drawn: false };
    document.querySelectorAll(".top nav a").forEach((a) => {
      if (a.dataset.view === nav) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    });
    document.title = `${view.title} · meshgate`;
  }
  const { view } = current;
  try {
    const { data, changed } = await view.load();
    if (current.view !== view) return; // the person moved on meanwhile
    if (changed || force || !current.drawn) {
      draw(view, data, focusSel, force);
      current.drawn = true;
    }
    setLive(`Live · ${new Date().toLocaleTimeString("en-GB")}`);
  } catch (e) {
    if (e instanceof Unauthorized) {
      setLive("Signed out", true);
      const had = sessionStorage.getItem(TOKEN_KEY);
      sessionStorage.removeItem(TOKEN_KEY);
      showSignOut();
      busy = false;
      await signIn(had ? "That credential was refused, or has expired." : "");
      showSignOut();
      return refresh(true);
    }
    if (e instanceof ApiError) {
      drawnHtml = "";
      $("#view").innerHTML = `<h1>${esc(view.title)}</h1><p class="notice error" role="alert">${e.status === 403 ? "Your roles do not allow this view: " : ""}${esc(e.message)}</p>`;
      current.drawn = false;
      setLive(`Live · ${new Date().toLocaleTimeString("en-GB")}`);
    } else {
      setLive("Cannot reach the gateway; retrying", true);
    }
  } finally {
    busy = false;
  }
}

function loop() {
  clearTimeout(timer);
  timer = setTimeout(async () => {
    if (!document.hidden && !$("#signin").open) await refresh();
    loop();
  }, POLL_MS);
}

window.addEventListener("hashchange", () => {
  refresh(true).then(() => $("#view").focus());
});
document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
showSignOut();
refresh(true);
loop();
