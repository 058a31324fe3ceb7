// Topology: services in columns by how deep they sit in the dependency graph (callers left,
// what they call right), so at 30 services the lines run one way and rarely cross.

import { getAll } from "./api.js";
import { ago, badge, esc, tone } from "./util.js";

export const topology = {
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
