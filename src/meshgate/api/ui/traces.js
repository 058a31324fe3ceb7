// Recent traces. A read of the API (this page's own, among others) is one span; the calls worth
// a look have more, so one-span reads are left out unless asked for.

import { getAll } from "./api.js";
import { $, badge, clock, esc, fmtMs, toMillis } from "./util.js";

const traceFilter = { text: "", reads: false };

export const tracesView = {
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
  bind(root, ctx) {
    const form = $("#trace-filter", root);
    form.addEventListener("submit", (e) => e.preventDefault());
    $("#f-text", root).addEventListener("input", (e) => { traceFilter.text = e.target.value; ctx.refresh(true, "#f-text"); });
    $("#f-reads", root).addEventListener("change", (e) => { traceFilter.reads = e.target.checked; ctx.refresh(true, "#f-reads"); });
  },
};

export function traceDetail(id) {
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
    bind(root, ctx) {
      root.querySelectorAll(".span").forEach((el) => el.addEventListener("click", () => {
        const sid = el.dataset.span;
        if (open.has(sid)) open.delete(sid); else open.add(sid);
        ctx.refresh(true, `.span[data-span="${CSS.escape(sid)}"]`);
      }));
    },
  };
}
