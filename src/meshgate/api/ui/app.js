// meshgate dashboard: reads the gateway's API with the credential of whoever signed in, and
// redraws a view when what it shows has changed (ETags: an unchanged answer is a bodiless 304).

import { ApiError, TOKEN_KEY, Unauthorized, cache, showSignOut, signIn } from "./api.js";
import { overview } from "./overview.js";
import { taskDetail, tasksView } from "./tasks.js";
import { topology } from "./topology.js";
import { traceDetail, tracesView } from "./traces.js";
import { $, esc } from "./util.js";

const POLL_MS = 1000;

$("#signout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  cache.clear();
  showSignOut();
  refresh(true);
});

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
let notice = null; // a message shown once on the next drawing of a view: {text, error}
// What a view's controls may ask of the page.
const ctx = {
  refresh: (force, focusSel) => refresh(force, focusSel),
  notify: (message) => { notice = message; },
};

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
  if (view.bind) view.bind(root, ctx);
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
