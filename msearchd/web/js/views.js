// Drawing: the table's rows, the counts at the top, the task's detail, the batch summary. Text from
// tasks always goes in as text, never as HTML.

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

/** "3 分钟前" with the exact time on hover. */
export function timeCell(seconds) {
  const cell = el("td", { class: "time" });
  if (!seconds) {
    cell.textContent = "–";
    return cell;
  }
  cell.dataset.time = String(seconds);
  cell.title = exact.format(new Date(seconds * 1000));
  cell.textContent = ago(seconds);
  return cell;
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

export function refreshTimes(root) {
  for (const cell of root.querySelectorAll("td.time[data-time]")) {
    cell.textContent = ago(Number(cell.dataset.time));
  }
}

export function statusBadge(status) {
  return el("span", { class: `status status-${status}`, text: t.status[status] ?? status });
}

function progressBar(task) {
  const value = task.status === "completed" ? 1 : task.progress || 0;
  const shown = task.status === "running" || task.status === "completed" || value > 0;
  const percent = Math.round(value * 100);
  const bar = el("div", {
    class: `bar status-${task.status}`,
    role: "progressbar",
    "aria-valuemin": "0",
    "aria-valuemax": "100",
    "aria-valuenow": String(percent),
    "aria-label": `${task.id} ${percent}%`,
  });
  bar.append(el("div", { class: "fill", style: `width: ${percent}%` }), el("span", { text: `${percent}%` }));
  bar.hidden = !shown;
  return bar;
}

/** One task as a table row; `selected` ticks its box. */
export function row(task, selected, onOpen) {
  const operation = task.status === "running" ? task.current_operation || "" : "";
  const tr = el(
    "tr",
    { "data-id": task.id, class: `row-${task.status}` },
    el(
      "td",
      { class: "check" },
      el("input", { type: "checkbox", "aria-label": task.id, checked: selected, "data-id": task.id }),
    ),
    el("td", {}, el("button", { class: "link", onclick: () => onOpen(task.id), text: task.id })),
    el("td", { class: "type", title: task.type, text: task.type }),
    el("td", {}, statusBadge(task.status)),
    el("td", { class: "num", title: band(task.priority), text: String(task.priority) }),
    el("td", { class: "progress-col" }, progressBar(task)),
    el("td", { class: "operation-col", title: operation, text: operation }),
    el("td", { class: "num", text: String(task.attempts) }),
    timeCell(task.created_at),
    timeCell(task.started_at),
    timeCell(task.finished_at),
    el("td", { class: "error-col", title: task.error || "", text: task.error || "" }),
  );
  return tr;
}

export function counts(container, stats, onPick) {
  container.replaceChildren();
  for (const [status, n] of Object.entries(stats.by_status)) {
    container.append(
      el(
        "button",
        { class: `count status-${status}`, onclick: () => onPick(status), "aria-label": `${t.status[status]} ${n}` },
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
    .map(([type, byStatus]) => `${type} ${Object.values(byStatus).reduce((a, b) => a + b, 0)}`)
    .join(" · ");
  container.replaceChildren(
    el("span", { text: t.workers(busy, total) }),
    stats.paused ? el("span", { class: "paused", text: ` (${t.paused})` }) : null,
    el("span", { class: "types", title: types, text: types }),
  );
}

export function summary(dialog, title, answer) {
  dialog.querySelector("#summary-title").textContent = title;
  dialog.querySelector("#summary-counts").textContent = t.summary_counts(answer.succeeded, answer.failed);
  const list = dialog.querySelector("#summary-list");
  list.replaceChildren(
    ...answer.results.map((r) =>
      el("li", {
        class: r.success ? "ok" : "bad",
        text: r.success
          ? r.new_task_id
            ? t.retried_as(r.task_id, r.new_task_id)
            : `${r.task_id}: ${r.status ?? r.priority ?? "✓"}`
          : `${r.task_id}: ${r.error}`,
      }),
    ),
  );
  dialog.showModal();
}
