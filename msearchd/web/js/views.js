// Drawing: the table's rows, the counts at the top, the batch summary. Text from tasks always goes in
// as text, never as HTML. A row is built once and then patched in place as events arrive, so that a
// thousand progress reports a second cost a few property writes each, and focus stays where it is.

import { band, lang, t } from "./i18n.js";

const relative = new Intl.RelativeTimeFormat(lang === "en" ? "en" : "zh-CN", { numeric: "auto" });
const exact = new Intl.DateTimeFormat(lang === "en" ? "en-GB" : "zh-CN", {
  dateStyle: "medium",
  timeStyle: "medium",
});

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

export function ago(seconds) {
  const delta = seconds - Date.now() / 1000;
  const steps = [
    [60, "second"],
    [3600, "minute"],
    [86400, "hour"],
    [Infinity, "day"],
  ];
  let unit = 1;
  for (const [limit, name] of steps) {
    if (Math.abs(delta) < limit) return relative.format(Math.round(delta / unit), name);
    unit = limit;
  }
  return "";
}

export const exactTime = (seconds) => exact.format(new Date(seconds * 1000));

/** "3 分钟前", with the exact time on hover. */
function setTime(cell, seconds) {
  if (!seconds) {
    delete cell.dataset.time;
    cell.title = "";
    cell.textContent = "–";
    return;
  }
  if (cell.dataset.time === String(seconds)) return;
  cell.dataset.time = String(seconds);
  cell.title = exactTime(seconds);
  cell.textContent = ago(seconds);
}

export function refreshTimes(root) {
  for (const cell of root.querySelectorAll("td.time[data-time]")) {
    cell.textContent = ago(Number(cell.dataset.time));
  }
}

export function statusBadge(status) {
  return el("span", { class: `status status-${status}`, text: t.status[status] ?? status });
}

function setStatus(badge, status) {
  badge.className = `status status-${status}`;
  badge.textContent = t.status[status] ?? status;
}

function setProgress(meter, task) {
  const value = task.status === "completed" ? 1 : Math.min(1, Math.max(0, task.progress || 0));
  const percent = Math.round(value * 100);
  meter.className = `meter status-${task.status}`;
  meter.hidden = !(task.status === "running" || task.status === "completed" || value > 0);
  meter.setAttribute("aria-valuenow", String(percent));
  meter.setAttribute("aria-label", `${task.id} ${t.col_progress} ${percent}%`);
  meter.firstChild.style.width = `${percent}%`; // CSSOM, which the page's CSP allows
  meter.lastChild.textContent = `${percent}%`;
}

function setText(cell, text) {
  if (cell.textContent !== text) {
    cell.textContent = text;
    cell.title = text;
  }
}

/** One task as a table row; `selected` ticks its box. */
export function row(task, selected, onOpen) {
  const meter = el(
    "div",
    { role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" },
    el("div", { class: "fill" }),
    el("span"),
  );
  const tr = el(
    "tr",
    { "data-id": task.id },
    el(
      "td",
      { class: "check" },
      el("input", { type: "checkbox", "aria-label": t.select_task(task.id), "data-id": task.id }),
    ),
    el("td", {}, el("button", { type: "button", class: "link", onclick: () => onOpen(task.id), text: task.id })),
    el("td", { class: "type", title: task.type, text: task.type }),
    el("td", {}, statusBadge(task.status)),
    el("td", { class: "num priority" }),
    el("td", { class: "progress-col" }, meter),
    el("td", { class: "operation-col" }),
    el("td", { class: "num minor" }),
    el("td", { class: "time minor" }),
    el("td", { class: "time minor" }),
    el("td", { class: "time minor" }),
    el("td", { class: "error-col" }),
  );
  patchRow(tr, task, selected);
  return tr;
}

/** Bring a row up to date with its task. */
export function patchRow(tr, task, selected) {
  const cells = tr.cells;
  tr.className = `row-${task.status}${selected ? " selected" : ""}`;
  const box = cells[0].firstChild;
  if (box.checked !== selected) box.checked = selected;
  setStatus(cells[3].firstChild, task.status);
  cells[4].textContent = String(task.priority);
  cells[4].title = band(task.priority);
  setProgress(cells[5].firstChild, task);
  setText(cells[6], task.status === "running" ? task.current_operation || "" : "");
  cells[7].textContent = String(task.attempts);
  setTime(cells[8], task.created_at);
  setTime(cells[9], task.started_at);
  setTime(cells[10], task.finished_at);
  setText(cells[11], task.error || (task.status === "blocked" ? task.blocked_reason || "" : ""));
}

export function counts(container, stats, onPick) {
  container.replaceChildren();
  for (const [status, n] of Object.entries(stats.by_status)) {
    container.append(
      el(
        "button",
        {
          type: "button",
          class: `count status-${status}`,
          onclick: () => onPick(status),
          "aria-label": t.show_status(t.status[status] ?? status, n),
        },
        el("span", { class: "n", text: String(n) }),
        el("span", { text: t.status[status] ?? status }),
      ),
    );
  }
}

export function workers(container, stats) {
  const busy = stats.workers?.busy ?? 0;
  const total = stats.workers?.total ?? 0;
  const types = Object.entries(stats.by_type)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([type, byStatus]) => {
      const parts = Object.entries(byStatus).map(([status, n]) => `${t.status[status] ?? status} ${n}`);
      return `${type}: ${parts.join(" ")}`;
    })
    .join(" · ");
  container.replaceChildren(
    el("span", { class: "busy", text: t.workers(busy, total) }),
    el("span", { class: "types", title: types, text: types }),
  );
}

export function summary(dialog, title, answer) {
  dialog.querySelector("#summary-title").textContent = title;
  dialog.querySelector("#summary-counts").textContent = t.summary_counts(answer.succeeded, answer.failed);
  const list = dialog.querySelector("#summary-list");
  // Failures first: they are what needs reading.
  const results = [...answer.results].sort((a, b) => Number(a.success) - Number(b.success));
  list.replaceChildren(
    ...results.map((r) =>
      el("li", {
        class: r.success ? "ok" : "bad",
        text: r.success
          ? r.new_task_id
            ? t.retried_as(r.task_id, r.new_task_id)
            : `${r.task_id}: ${r.priority ?? (t.status[r.status] || r.status || "✓")}`
          : `${r.task_id}: ${r.error}`,
      }),
    ),
  );
  if (!dialog.open) dialog.showModal();
}
