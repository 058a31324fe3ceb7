// Small helpers of the dashboard: escaping, formats, state badges.

export const $ = (sel, root = document) => root.querySelector(sel);

export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => (
    { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]
  ));
}

export function fmtNum(n, digits = 1) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  if (Math.abs(n) >= 1000) return Math.round(n).toLocaleString("en");
  return Number(n).toFixed(digits).replace(/\.0+$/, "");
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms >= 1000) return `${fmtNum(ms / 1000, 2)} s`;
  return `${fmtNum(ms, ms < 10 ? 2 : 1)} ms`;
}

export function fmtPct(r) {
  return r === null || r === undefined ? "–" : `${fmtNum(r * 100, 1)} %`;
}

export function toMillis(t) {
  if (t === null || t === undefined) return null;
  return typeof t === "number" ? t * 1000 : Date.parse(t);
}

export function ago(t) {
  const ms = toMillis(t);
  if (ms === null || Number.isNaN(ms)) return "–";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${fmtNum(s / 3600, 1)} h ago`;
}

export function timeOfDay(t) {
  const ms = toMillis(t);
  return ms === null ? "–" : new Date(ms).toISOString().slice(11, 19);
}

export function clock(t) {
  const ms = toMillis(t);
  return ms === null ? "–" : new Date(ms).toISOString().replace("T", " ").slice(0, 23);
}

// Coarse on purpose: a view is redrawn only when its text changes, not every second.
export function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return "< 1 min";
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${fmtNum(s / 3600, 1)} h`;
  return `${fmtNum(s / 86400, 1)} d`;
}

// State words and their look: the word is always shown; colour and shape only repeat it.
export const LOOKS = {
  healthy: ["ok", "●"], passing: ["ok", "●"], closed: ["ok", "●"], succeeded: ["ok", "✔"],
  live: ["ok", "●"], ready: ["ok", "●"],
  starting: ["info", "◌"], queued: ["info", "◌"], running: ["info", "▶"], draining: ["info", "◐"],
  "half-open": ["warn", "◐"], half_open: ["warn", "◐"], degraded: ["warn", "▲"],
  unhealthy: ["bad", "▲"], warning: ["warn", "▲"], cancelled: ["none", "■"],
  stopped: ["bad", "✖"], restarting: ["bad", "↻"], restarted: ["bad", "↻"], failed: ["bad", "✖"], dead: ["bad", "✖"], open: ["bad", "✖"],
  critical: ["bad", "✖"], unreachable: ["bad", "✖"],
};

export function badge(word, label) {
  const [tone, mark] = LOOKS[word] || ["none", "○"];
  return `<span class="badge ${tone}" data-state="${esc(word)}"><span aria-hidden="true">${mark}</span>${esc(label ?? word)}</span>`;
}

export function tone(word) {
  return (LOOKS[word] || ["none"])[0];
}

export function sparkline(series, key, cls = "") {
  if (!series || series.length < 2) return "";
  const values = series.map((b) => b[key] || 0);
  const max = Math.max(1, ...values);
  const w = 90, h = 22;
  const pts = values.map((v, i) => `${(i / (values.length - 1)) * w},${h - 2 - (v / max) * (h - 4)}`);
  return `<svg class="spark" width="${w}" height="${h}" aria-hidden="true"><polyline class="${cls}" points="${pts.join(" ")}"/></svg>`;
}
