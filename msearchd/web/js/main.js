// The task manager: state, filters, paging, selection and actions, kept live by the event stream.

import * as api from "./api.js";
import { band, t, translatePage } from "./i18n.js";
import { follow } from "./stream.js";
import * as view from "./views.js";

const STATUSES = ["pending", "blocked", "running", "completed", "failed", "cancelled"];
const $ = (selector) => document.querySelector(selector);

const state = {
  status: "",
  type: "",
  limit: 100,
  offset: 0, // from the newest task
  total: 0,
  tasks: new Map(), // id -> task, of the rows shown
  selection: new Set(),
  lastClicked: null,
  detail: null, // the task id whose detail is open
};

// --- loading ---------------------------------------------------------------------------------------

let reloading = null;
let reloadAgain = false;

/** Load the page of tasks and the counts; calls made meanwhile fold into one more load. */
async function reload() {
  if (reloading) {
    reloadAgain = true;
    return reloading;
  }
  reloading = (async () => {
    do {
      reloadAgain = false;
      const [page, stats] = await Promise.all([
        api.listTasks({ status: state.status, type: state.type, limit: state.limit, offset: state.offset, order: "newest" }),
        api.stats(),
      ]);
      state.total = page.total;
      state.tasks = new Map(page.tasks.map((task) => [task.id, task]));
      drawTable();
      drawStats(stats);
    } while (reloadAgain);
  })();
  try {
    await reloading;
  } catch (error) {
    if (!(error instanceof api.ApiError && error.status === 401)) show(error);
  } finally {
    reloading = null;
  }
}

let statsTimer = null;
function refreshStatsSoon() {
  statsTimer ??= setTimeout(async () => {
    statsTimer = null;
    try {
      drawStats(await api.stats());
    } catch {
      /* the stream's state says what is wrong */
    }
  }, 300);
}

let reloadTimer = null;
function reloadSoon() {
  reloadTimer ??= setTimeout(() => {
    reloadTimer = null;
    reload();
  }, 300);
}

// --- drawing ---------------------------------------------------------------------------------------

function drawTable() {
  const body = $("#tasks tbody");
  if (state.tasks.size === 0) {
    body.replaceChildren(view.el("tr", {}, view.el("td", { colspan: "12", class: "empty", text: t.no_tasks })));
  } else {
    body.replaceChildren(
      ...[...state.tasks.values()].map((task) => view.row(task, state.selection.has(task.id), openDetail)),
    );
  }
  const from = state.total ? state.offset + 1 : 0;
  const to = Math.min(state.offset + state.limit, state.total);
  $("#page-info").textContent = t.page_info(from, to, state.total);
  $("#prev-page").disabled = state.offset === 0;
  $("#next-page").disabled = to >= state.total;
  drawSelection();
}

let knownTypes = new Set();
function drawStats(stats) {
  view.counts($("#counts"), stats, (status) => {
    $("#status-filter").value = status;
    applyFilters();
  });
  view.workers($("#workers"), stats);
  const types = new Set(Object.keys(stats.by_type));
  if ([...types].some((type) => !knownTypes.has(type))) {
    knownTypes = new Set([...knownTypes, ...types]);
    const select = $("#type-filter");
    const current = select.value;
    select.replaceChildren(
      new Option(t.all, ""),
      ...[...knownTypes].sort().map((type) => new Option(type, type)),
    );
    select.value = current;
  }
}

function drawSelection() {
  $("#selection-count").textContent = t.selected(state.selection.size);
  for (const id of ["#batch-retry", "#batch-cancel", "#batch-priority", "#clear-selection"]) {
    $(id).disabled = state.selection.size === 0;
  }
  const boxes = [...document.querySelectorAll("#tasks tbody input[type=checkbox]")];
  $("#select-page").checked = boxes.length > 0 && boxes.every((box) => box.checked);
}

/** Patch one row in place, batched to one paint: a thousand events a second cost one frame each. */
const dirty = new Set();
let frame = null;
function redrawRow(id) {
  dirty.add(id);
  frame ??= requestAnimationFrame(() => {
    frame = null;
    for (const taskId of dirty) {
      const task = state.tasks.get(taskId);
      const old = document.querySelector(`#tasks tbody tr[data-id="${CSS.escape(taskId)}"]`);
      if (task && old) old.replaceWith(view.row(task, state.selection.has(taskId), openDetail));
    }
    dirty.clear();
  });
}

// --- live events -----------------------------------------------------------------------------------

const STATE_EVENTS = new Set(["started", "cancelled", "completed", "failed", "requeued", "unblocked"]);

function onEvent(event) {
  const task = state.tasks.get(event.task_id);
  if (event.event === "submitted" || event.event === "retried") {
    if (state.offset === 0) reloadSoon(); // a new task belongs on the first page
    refreshStatsSoon();
  }
  if (event.event === "shutdown") return;
  if (task) {
    if (event.status) task.status = event.status;
    switch (event.event) {
      case "progress":
        if (event.progress !== undefined) task.progress = event.progress;
        if (event.current_operation !== undefined) task.current_operation = event.current_operation;
        break;
      case "started":
        task.started_at = event.time;
        task.finished_at = null;
        if (event.attempt !== undefined) task.attempts = event.attempt;
        task.progress = 0;
        task.current_operation = null;
        break;
      case "requeued":
        task.started_at = null;
        break;
      case "priority_changed":
        task.priority = event.priority;
        break;
      case "completed":
        task.progress = 1;
      // fall through
      case "failed":
      case "cancelled":
        task.finished_at = event.time;
        task.error = event.error ?? task.error;
        task.stop_reason = event.stop_reason ?? null;
        break;
      default:
    }
    if (state.status && !state.status.split(",").includes(task.status)) reloadSoon(); // left the filter
    redrawRow(task.id);
  }
  if (STATE_EVENTS.has(event.event) || event.event === "priority_changed") refreshStatsSoon();
  if (state.detail === event.task_id && event.event !== "progress") openDetail(event.task_id, true);
}

function onStreamState(kind) {
  const banner = $("#connection");
  banner.className = `connection ${kind}`;
  banner.textContent = kind === "live" ? t.connected : t.reconnecting;
}

// --- actions ---------------------------------------------------------------------------------------

function show(error) {
  alert(t.error_prefix + (error.message || String(error)));
}

function confirmDialog(text) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

async function batch(kind) {
  const ids = [...state.selection];
  if (ids.length === 0) return show(new Error(t.nothing_selected));
  try {
    let answer;
    if (kind === "retry") {
      answer = await api.retryMany(ids);
      view.summary($("#summary"), t.summary_retry, answer);
    } else if (kind === "cancel") {
      const running = ids.filter((id) => state.tasks.get(id)?.status === "running").length;
      const ok = await confirmDialog(running ? t.confirm_cancel_running(running, ids.length) : t.confirm_cancel(ids.length));
      if (!ok) return;
      answer = await api.cancelMany(ids, running > 0);
      view.summary($("#summary"), t.summary_cancel, answer);
    } else {
      const priority = Number($("#batch-priority-value").value);
      answer = await api.setPriorityMany(ids, priority);
      view.summary($("#summary"), t.summary_priority, answer);
    }
    state.selection.clear();
    await reload();
  } catch (error) {
    show(error);
  }
}

async function bulkCancel(byType) {
  const type = $("#type-filter").value;
  if (byType && !type) return show(new Error(t.choose_type));
  const stats = await api.stats();
  const of = byType ? stats.by_type[type] || {} : stats.by_status;
  const waiting = (of.pending || 0) + (of.blocked || 0);
  const running = of.running || 0;
  const withRunning = running > 0 && (await confirmDialog(`${t.also_running}? (${running})`));
  const text = byType ? t.confirm_cancel_type(type, waiting, withRunning ? running : 0) : t.confirm_cancel_all(waiting, withRunning ? running : 0);
  if (!(await confirmDialog(text))) return;
  try {
    const answer = byType ? await api.cancelByType(type, withRunning) : await api.cancelAll(withRunning);
    view.summary($("#summary"), t.summary_cancel, {
      succeeded: answer.result.cancelled,
      failed: answer.result.failed,
      results: [],
    });
    await reload();
  } catch (error) {
    show(error);
  }
}

// --- the detail view -------------------------------------------------------------------------------

let logTimer = null;

async function openDetail(taskId, refresh = false) {
  const dialog = $("#detail");
  state.detail = taskId;
  let task;
  let record;
  try {
    [task, record] = await Promise.all([api.getTask(taskId), api.history(taskId)]);
  } catch (error) {
    return show(error);
  }
  $("#detail-title").textContent = `${t.detail} ${task.id}`;
  const link = (id) => view.el("button", { class: "link", onclick: () => openDetail(id), text: id });
  const field = (name, value) => view.el("div", { class: "field" }, view.el("dt", { text: name }), view.el("dd", {}, value ?? "–"));
  const actions = $("#detail-actions");
  actions.replaceChildren();
  if (["pending", "blocked", "running"].includes(task.status)) {
    actions.append(
      view.el("button", {
        class: "danger",
        text: task.status === "running" ? t.stop : t.cancel,
        onclick: async () => {
          if (task.status === "running" && !(await confirmDialog(t.confirm_cancel_running(1, 1)))) return;
          try {
            await api.cancel(task.id, task.status === "running");
            openDetail(task.id, true);
          } catch (error) {
            show(error);
          }
        },
      }),
    );
  }
  if (["pending", "blocked"].includes(task.status)) {
    const select = prioritySelect(task.priority, `${task.id} ${t.priority}`);
    actions.append(
      select,
      view.el("button", {
        text: t.set_priority,
        onclick: async () => {
          try {
            await api.setPriority(task.id, Number(select.value));
            openDetail(task.id, true);
          } catch (error) {
            show(error);
          }
        },
      }),
    );
  }
  if (task.status === "failed" && !task.retried_as) {
    actions.append(
      view.el("button", {
        text: t.retry,
        onclick: async () => {
          try {
            const answer = await api.retry(task.id);
            openDetail(answer.data.new_task_id);
          } catch (error) {
            show(error);
          }
        },
      }),
    );
  }
  const fields = view.el(
    "dl",
    { class: "fields" },
    field(t.col_type, task.type),
    field(t.col_status, view.statusBadge(task.status)),
    field(t.col_priority, `${task.priority} · ${band(task.priority)}`),
    field(t.col_progress, `${Math.round((task.status === "completed" ? 1 : task.progress) * 100)}%`),
    field(t.col_operation, task.current_operation),
    field(t.col_attempts, String(task.attempts)),
    field(t.col_error, task.error || task.blocked_reason),
    field(t.depends_on, task.depends_on.length ? view.el("span", {}, ...task.depends_on.map(link)) : null),
    field(t.dependents, record.dependents?.length ? view.el("span", {}, ...record.dependents.map(link)) : null),
    field(t.retry_of, task.retry_of ? link(task.retry_of) : null),
    field(t.retried_as_label, task.retried_as ? link(task.retried_as) : null),
  );
  const history = view.el(
    "ol",
    { class: "history" },
    ...record.history.map((entry) =>
      view.el(
        "li",
        {},
        view.el("time", { title: new Date(entry.time * 1000).toISOString(), text: view.ago(entry.time) }),
        ` ${entry.event} `,
        view.el("span", { class: "who", text: t.who(entry.uid, entry.pid) }),
      ),
    ),
  );
  const body = [
    fields,
    view.el("h3", { text: t.data }),
    view.el("pre", { class: "data", text: JSON.stringify(task.data, null, 2) }),
    view.el("h3", { text: t.history }),
    history,
  ];
  if (task.type === "command") body.push(view.el("h3", { text: t.log }), view.el("pre", { class: "log", id: "log" }));
  $("#detail-body").replaceChildren(...body);
  if (!refresh) dialog.showModal();
  clearInterval(logTimer);
  if (task.type === "command") followLog(task);
}

function followLog(task) {
  const out = $("#log");
  let offset = 0;
  const step = async () => {
    try {
      const chunk = await api.readLog(task.id, offset);
      if (chunk.text) out.append(chunk.text);
      offset = chunk.offset;
      if (!out.textContent && chunk.size === 0 && !["pending", "blocked", "running"].includes(chunk.status)) {
        out.textContent = t.log_empty;
      }
      if (!["pending", "blocked", "running"].includes(chunk.status)) clearInterval(logTimer);
    } catch {
      clearInterval(logTimer);
    }
  };
  step();
  logTimer = setInterval(step, 1000); // the log is a file the command writes; read what it added
}

function prioritySelect(value, label) {
  const select = view.el("select", { "aria-label": label });
  for (let p = 0; p <= 11; p++) select.append(new Option(`${p} · ${band(p)}`, String(p)));
  select.value = String(value);
  return select;
}

// --- wiring ----------------------------------------------------------------------------------------

function applyFilters() {
  state.status = $("#status-filter").value;
  state.type = $("#type-filter").value;
  state.offset = 0;
  reload();
}

function wire() {
  const statusFilter = $("#status-filter");
  statusFilter.replaceChildren(new Option(t.all, ""), ...STATUSES.map((s) => new Option(t.status[s], s)));
  statusFilter.addEventListener("change", applyFilters);
  $("#type-filter").replaceChildren(new Option(t.all, ""));
  $("#type-filter").addEventListener("change", applyFilters);
  $("#batch-priority-value").replaceWith(prioritySelect(11, t.priority));
  document.querySelector(".batch select").id = "batch-priority-value";
  $("#page-size").addEventListener("change", (e) => {
    state.limit = Number(e.target.value);
    state.offset = 0;
    reload();
  });
  $("#prev-page").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - state.limit);
    reload();
  });
  $("#next-page").addEventListener("click", () => {
    state.offset += state.limit;
    reload();
  });
  $("#tasks tbody").addEventListener("click", (event) => {
    const box = event.target.closest("input[type=checkbox]");
    if (!box) return;
    const ids = [...state.tasks.keys()];
    const id = box.dataset.id;
    if (event.shiftKey && state.lastClicked !== null) {
      const [a, b] = [ids.indexOf(state.lastClicked), ids.indexOf(id)].sort((x, y) => x - y);
      for (const other of ids.slice(a, b + 1)) box.checked ? state.selection.add(other) : state.selection.delete(other);
      for (const other of ids.slice(a, b + 1)) redrawRow(other);
    } else if (box.checked) state.selection.add(id);
    else state.selection.delete(id);
    state.lastClicked = id;
    drawSelection();
  });
  $("#select-page").addEventListener("change", (event) => {
    for (const id of state.tasks.keys()) event.target.checked ? state.selection.add(id) : state.selection.delete(id);
    drawTable();
  });
  $("#select-failed").addEventListener("click", async () => {
    try {
      for (const id of await api.allIds({ status: "failed", type: state.type })) state.selection.add(id);
      drawTable();
    } catch (error) {
      show(error);
    }
  });
  $("#clear-selection").addEventListener("click", () => {
    state.selection.clear();
    drawTable();
  });
  $("#batch-retry").addEventListener("click", () => batch("retry"));
  $("#batch-cancel").addEventListener("click", () => batch("cancel"));
  $("#batch-priority").addEventListener("click", () => batch("priority"));
  $("#cancel-all").addEventListener("click", () => bulkCancel(false));
  $("#cancel-by-type").addEventListener("click", () => bulkCancel(true));
  $("#detail").addEventListener("close", () => {
    state.detail = null;
    clearInterval(logTimer);
  });
  setInterval(() => view.refreshTimes($("#tasks")), 30000); // "3 分钟前" stays true
}

async function signInFlow() {
  $("#app").hidden = true;
  $("#signin").hidden = false;
  $("#token").focus();
}

async function start() {
  translatePage();
  wire();
  api.auth.addEventListener("required", signInFlow);
  $("#signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api.signIn($("#token").value);
      $("#signin").hidden = true;
      $("#app").hidden = false;
      await reload();
    } catch {
      $("#signin-error").textContent = t.signin_failed;
    }
  });
  $("#app").hidden = false;
  follow({ onEvent, onState: onStreamState, onResync: reload });
  await reload();
}

start();
