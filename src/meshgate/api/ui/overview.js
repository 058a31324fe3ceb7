// The overview: every server and service with its instances and figures, and the nodes.

import { API, cache, getAll } from "./api.js";
import { $, badge, duration, esc, fmtMs, fmtNum, fmtPct, sparkline, timeOfDay, tone } from "./util.js";

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

export const overview = {
  title: "Overview",
  async load() {
    const reads = ["/mesh/v2/services?limit=1000", "/mesh/v2/nodes"];
    // The window's buckets are 10 s wide: read it every few seconds, not every second (at 300
    // services its answer is half a megabyte; bench/RESULTS.md).
    const stats = "/mesh/v2/stats?window_s=300";
    const fresh = cache.get(`${API}${stats}`);
    if (fresh && Date.now() - statsReadAt < STATS_EVERY_MS) {
      const { data, changed } = await getAll(reads, ["/mesh/v2/nodes"]);
      return { data: [...data, fresh.data], changed };
    }
    statsReadAt = Date.now();
    return getAll([...reads, stats], [stats, "/mesh/v2/nodes"]);
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
  bind(root, ctx) {
    $("#service-filter", root).addEventListener("submit", (e) => e.preventDefault());
    $("#f-service", root).addEventListener("input", (e) => { serviceFilter.text = e.target.value; ctx.refresh(true, "#f-service"); });
    $("#f-problems", root).addEventListener("change", (e) => { serviceFilter.problems = e.target.checked; ctx.refresh(true, "#f-problems"); });
  },
};
