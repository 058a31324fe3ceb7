// Tasks: a page at a time (the API pages forward by cursor; the way back is remembered).

import { Unauthorized, getAll, request, signIn } from "./api.js";
import { $, badge, clock, esc, toMillis } from "./util.js";

const taskFilter = { status: "", limit: 25, cursors: [null] };

function taskTarget(t) {
  const g = t.target || {};
  if (g.server) return `${g.server} · ${g.tool}`;
  if (g.service) return `${g.service} · ${g.method || "POST"} ${g.path || "/"}`;
  return "–";
}

export const tasksView = {
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
  bind(root, ctx) {
    const reset = () => { taskFilter.cursors = [null]; ctx.refresh(true); };
    $("#f-status", root).addEventListener("change", (e) => { taskFilter.status = e.target.value; reset(); });
    $("#f-limit", root).addEventListener("change", (e) => { taskFilter.limit = Number(e.target.value); reset(); });
    $("#prev", root).addEventListener("click", () => { taskFilter.cursors.pop(); ctx.refresh(true, "#prev"); });
    $("#next", root).addEventListener("click", (e) => {
      taskFilter.cursors.push(e.currentTarget.dataset.cursor);
      ctx.refresh(true, "#next");
    });
  },
};

export function taskDetail(id) {
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
    bind(root, ctx) {
      const act = async (method, path, done) => {
        try {
          await request(method, path);
          ctx.notify({ text: done });
        } catch (e) {
          if (e instanceof Unauthorized) { await signIn("Sign in to do that."); return; }
          // Someone else's task answers 404 to whoever may not change it: the page can see
          // the task, so the missing right is what the answer means.
          const why = e.status === 404 ? "your roles do not allow changing this task" : e.message;
          ctx.notify({ text: `Refused: ${why}.`.replace(/\.\.$/, "."), error: true });
        }
        ctx.refresh(true);
      };
      const base = `/mesh/v2/task/${encodeURIComponent(id)}`;
      $("#cancel", root).addEventListener("click", () => act("DELETE", base, "Task cancelled."));
      $("#retry", root).addEventListener("click", () => act("POST", `${base}/retry`, "Task queued again."));
    },
  };
}
