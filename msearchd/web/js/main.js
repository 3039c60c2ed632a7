// The task manager: state, filters, paging, selection and actions, kept live by the event stream.

import * as api from "./api.js";
import { band, t, translatePage } from "./i18n.js";
import { follow } from "./stream.js";
import * as view from "./views.js";

const STATUSES = ["pending", "blocked", "running", "completed", "failed", "cancelled"];
const ACTIVE = ["pending", "blocked", "running"];
const BATCH_MAX = 10000; // ids one batch request may carry
const $ = (selector) => document.querySelector(selector);

const state = {
  status: "",
  type: "",
  limit: 100,
  offset: 0, // from the newest task
  total: 0,
  tasks: new Map(), // id -> task, of the rows shown, newest first
  rows: new Map(), // id -> its <tr>
  selection: new Set(),
  lastClicked: null,
  detail: null, // the task id whose detail is open
  missed: null, // events that arrive while a reload is under way, replayed on its answer
};

let stream = null;

// --- loading ---------------------------------------------------------------------------------------

let reloading = null;
let reloadAgain = false;

/** Load the page of tasks and the counts; calls made meanwhile fold into one more load. Every caller
 * gets the same promise, which does not reject: a failure is shown once, here, and a caller that does
 * not wait for the load (an event, a click) must not turn it into an uncaught error. */
function reload() {
  if (reloading) {
    reloadAgain = true;
    return reloading;
  }
  reloading = (async () => {
    do {
      reloadAgain = false;
      state.missed = [];
      const [page, stats] = await Promise.all([
        api.listTasks({
          status: state.status,
          type: state.type,
          limit: state.limit,
          offset: state.offset,
          order: "newest",
        }),
        api.stats(),
      ]);
      state.total = page.total;
      state.tasks = new Map(page.tasks.map((task) => [task.id, task]));
      // What changed between the daemon's answer and now came as events: apply them again.
      for (const event of state.missed) apply(event);
      state.missed = null;
      drawTable();
      drawStats(stats);
    } while (reloadAgain);
  })()
    .catch((error) => {
      state.missed = null;
      if (!(error instanceof api.ApiError && error.status === 401)) show(error);
    })
    .finally(() => {
      reloading = null;
    });
  return reloading;
}

let statsTimer = null;
function refreshStatsSoon() {
  statsTimer ??= setTimeout(async () => {
    try {
      drawStats(await api.stats());
    } catch {
      /* the connection banner says what is wrong */
    } finally {
      statsTimer = null;
    }
  }, 500);
}

let reloadTimer = null;
function reloadSoon() {
  reloadTimer ??= setTimeout(() => {
    reloadTimer = null;
    reload();
  }, 250);
}

// --- drawing ---------------------------------------------------------------------------------------

function drawTable() {
  const body = $("#tasks tbody");
  state.rows = new Map();
  if (state.tasks.size === 0) {
    body.replaceChildren(view.el("tr", {}, view.el("td", { colspan: "12", class: "empty", text: t.no_tasks })));
  } else {
    const rows = [];
    for (const task of state.tasks.values()) {
      const tr = view.row(task, state.selection.has(task.id), openDetail);
      state.rows.set(task.id, tr);
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }
  const from = state.total ? state.offset + 1 : 0;
  const to = Math.min(state.offset + state.limit, state.total);
  $("#page-info").textContent = t.page_info(from, to, state.total);
  $("#prev-page").disabled = state.offset === 0;
  $("#next-page").disabled = to >= state.total;
  $("#tasks").setAttribute("aria-busy", "false");
  drawSelection();
}

let knownTypes = new Set();
function drawStats(stats) {
  view.counts($("#counts"), stats, (status) => {
    $("#status-filter").value = status;
    applyFilters();
  });
  view.workers($("#workers"), stats);
  const types = Object.keys(stats.by_type);
  if (types.some((type) => !knownTypes.has(type))) {
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
  const n = state.selection.size;
  $("#selection-count").textContent = t.selected(n);
  for (const id of ["#batch-retry", "#batch-cancel", "#batch-priority", "#clear-selection"]) {
    $(id).disabled = n === 0;
  }
  const shown = [...state.tasks.keys()];
  $("#select-page").checked = shown.length > 0 && shown.every((id) => state.selection.has(id));
}

/** Patch rows in place, at most once a frame: a thousand events a second cost one paint. */
const dirty = new Set();
let frame = null;
function redrawRow(id) {
  dirty.add(id);
  frame ??= requestAnimationFrame(() => {
    frame = null;
    for (const taskId of dirty) {
      const task = state.tasks.get(taskId);
      const tr = state.rows.get(taskId);
      if (task && tr) view.patchRow(tr, task, state.selection.has(taskId));
    }
    dirty.clear();
  });
}

// --- live events -----------------------------------------------------------------------------------

const COUNTED = new Set(["submitted", "started", "cancelled", "completed", "failed", "requeued", "unblocked"]);

/** Change the shown task an event is about; whether it is still shown. */
function apply(event) {
  const task = state.tasks.get(event.task_id);
  if (!task) return false;
  if (event.status) task.status = event.status;
  switch (event.event) {
    case "progress":
      task.progress = event.progress ?? task.progress;
      task.current_operation = event.current_operation ?? task.current_operation;
      break;
    case "started":
      task.started_at = event.time;
      task.finished_at = null;
      task.attempts = event.attempt ?? task.attempts;
      task.progress = 0;
      task.current_operation = null;
      task.error = null;
      break;
    case "requeued":
      task.started_at = null;
      break;
    case "priority_changed":
      task.priority = event.priority;
      break;
    case "retried":
      task.retried_as = event.new_task_id;
      break;
    case "completed":
      task.progress = 1;
      task.finished_at = event.time;
      break;
    case "failed":
    case "cancelled":
      task.finished_at = event.time;
      task.error = event.error ?? task.error;
      task.stop_reason = event.stop_reason ?? null;
      break;
    default:
  }
  return true;
}

function onEvent(event) {
  state.missed?.push(event);
  if (event.event === "submitted" && state.offset === 0) reloadSoon(); // new tasks go on the first page
  if (apply(event)) {
    if (state.status && !state.status.split(",").includes(event.status)) reloadSoon(); // left the filter
    redrawRow(event.task_id);
  }
  if (COUNTED.has(event.event)) refreshStatsSoon();
  if (state.detail === event.task_id && event.event !== "progress") openDetail(event.task_id, true);
}

function onStreamState(kind) {
  const banner = $("#connection");
  banner.className = `connection ${kind}`;
  banner.textContent = kind === "live" ? t.connected : t.lost_at(new Date().toLocaleTimeString());
}

// --- messages and confirmations ----------------------------------------------------------------------

function show(error) {
  const notice = $("#notice");
  notice.className = "notice";
  notice.textContent = t.error_prefix + (error.message || String(error));
  notice.hidden = false;
}

function hideNotice() {
  $("#notice").hidden = true;
}

/** Ask before doing something that cannot be undone; `running` adds "also stop the N running". */
function confirmDialog(text, running = 0) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  $("#confirm-running-label").hidden = running === 0;
  $("#confirm-running").checked = false;
  $("#confirm-running-text").textContent = running ? t.also_running(running) : "";
  dialog.returnValue = "";
  dialog.showModal();
  $("#confirm-ok").focus();
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => resolve({ ok: dialog.returnValue === "ok", running: $("#confirm-running").checked }),
      { once: true },
    );
  });
}

// --- actions ---------------------------------------------------------------------------------------

/** One request per 10,000 ids (one request for any selection a page shows), answers merged. */
async function inBatches(ids, send) {
  const merged = { results: [], succeeded: 0, failed: 0 };
  for (let i = 0; i < ids.length; i += BATCH_MAX) {
    const answer = await send(ids.slice(i, i + BATCH_MAX));
    merged.results.push(...answer.results);
    merged.succeeded += answer.succeeded;
    merged.failed += answer.failed;
  }
  return merged;
}

async function batch(kind) {
  const ids = [...state.selection];
  if (ids.length === 0) return show(new Error(t.nothing_selected));
  hideNotice();
  try {
    let answer;
    let title;
    if (kind === "retry") {
      answer = await inBatches(ids, api.retryMany);
      title = t.summary_retry;
    } else if (kind === "cancel") {
      const running = ids.filter((id) => state.tasks.get(id)?.status === "running").length;
      const text = running ? t.confirm_cancel_running(running, ids.length) : t.confirm_cancel(ids.length);
      if (!(await confirmDialog(text)).ok) return;
      answer = await inBatches(ids, (part) => api.cancelMany(part, running > 0));
      title = t.summary_cancel;
    } else {
      const priority = Number($("#batch-priority-value").value);
      answer = await inBatches(ids, (part) => api.setPriorityMany(part, priority));
      title = t.summary_priority;
    }
    state.selection.clear();
    view.summary($("#summary"), title, answer);
    await reload();
  } catch (error) {
    show(error);
  }
}

async function bulkCancel(byType) {
  const type = $("#type-filter").value;
  if (byType && !type) return show(new Error(t.choose_type));
  hideNotice();
  try {
    const stats = await api.stats();
    const of = byType ? stats.by_type[type] || {} : stats.by_status;
    const waiting = (of.pending || 0) + (of.blocked || 0);
    const running = of.running || 0;
    const text = byType ? t.confirm_cancel_type(type, waiting) : t.confirm_cancel_all(waiting);
    const answer = await confirmDialog(text, running);
    if (!answer.ok) return;
    const done = byType ? await api.cancelByType(type, answer.running) : await api.cancelAll(answer.running);
    view.summary($("#summary"), t.summary_cancel, {
      succeeded: done.result.cancelled,
      failed: done.result.failed,
      results: [],
    });
    await reload();
  } catch (error) {
    show(error);
  }
}

// --- the detail view -------------------------------------------------------------------------------

let logTimer = null;

function act(run) {
  return async () => {
    try {
      await run();
    } catch (error) {
      show(error);
    }
  };
}

async function openDetail(taskId, refresh = false) {
  const dialog = $("#detail");
  let task;
  let record;
  try {
    [task, record] = await Promise.all([api.getTask(taskId), api.history(taskId)]);
  } catch (error) {
    return show(error);
  }
  state.detail = task.id;
  $("#detail-title").textContent = `${t.detail} ${task.id}`;
  const link = (id) => view.el("button", { type: "button", class: "link", onclick: () => openDetail(id), text: id });
  const links = (ids) => (ids.length ? view.el("span", {}, ...ids.map(link)) : null);
  const field = (name, value) =>
    view.el("div", { class: "field" }, view.el("dt", { text: name }), view.el("dd", {}, value ?? "–"));
  const actions = $("#detail-actions");
  actions.replaceChildren();
  if (ACTIVE.includes(task.status)) {
    const running = task.status === "running";
    actions.append(
      view.el("button", {
        type: "button",
        class: "danger",
        text: running ? t.stop : t.cancel,
        onclick: act(async () => {
          if (running && !(await confirmDialog(t.confirm_stop(task.id))).ok) return;
          await api.cancel(task.id, running);
          await openDetail(task.id, true);
        }),
      }),
    );
  }
  if (task.status === "pending" || task.status === "blocked") {
    const select = prioritySelect(task.priority, `${task.id} ${t.priority}`);
    actions.append(
      select,
      view.el("button", {
        type: "button",
        text: t.set_priority,
        onclick: act(async () => {
          await api.setPriority(task.id, Number(select.value));
          await openDetail(task.id, true);
        }),
      }),
    );
  }
  if (task.status === "failed" && !task.retried_as) {
    actions.append(
      view.el("button", {
        type: "button",
        text: t.retry,
        onclick: act(async () => {
          const answer = await api.retry(task.id);
          await openDetail(answer.data.new_task_id, true);
        }),
      }),
    );
  }
  const when = (seconds) =>
    seconds ? view.el("time", { title: view.exactTime(seconds), text: view.ago(seconds) }) : null;
  const fields = view.el(
    "dl",
    { class: "fields" },
    field(t.col_type, task.type),
    field(t.col_status, view.statusBadge(task.status)),
    field(t.col_priority, `${task.priority} · ${band(task.priority)}`),
    field(t.col_progress, `${Math.round((task.status === "completed" ? 1 : task.progress) * 100)}%`),
    field(t.col_operation, task.current_operation),
    field(t.col_attempts, String(task.attempts)),
    field(t.col_created, when(task.created_at)),
    field(t.col_started, when(task.started_at)),
    field(t.col_finished, when(task.finished_at)),
    field(t.col_error, task.error || task.blocked_reason),
    field(t.depends_on, links(task.depends_on)),
    field(t.dependents, links(record.dependents)),
    field(t.retry_of, task.retry_of ? link(task.retry_of) : null),
    field(t.retried_as_label, task.retried_as ? link(task.retried_as) : null),
  );
  const history = view.el(
    "ol",
    { class: "history" },
    ...record.history.map((entry) => {
      const { time, event, uid, pid, ...rest } = entry;
      const more = Object.entries(rest)
        .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)
        .join(" ");
      return view.el(
        "li",
        {},
        when(time),
        ` ${event} ${more} `,
        view.el("span", { class: "who", text: t.who(uid, pid) }),
      );
    }),
  );
  const body = [
    fields,
    view.el("h3", { text: t.data }),
    view.el("pre", { class: "data", text: JSON.stringify(task.data, null, 2) }),
    view.el("h3", { text: t.history }),
    history,
  ];
  if (task.type === "command") {
    body.push(
      view.el("h3", { text: t.log }),
      view.el("pre", { class: "log", id: "log", tabindex: "0", "aria-label": t.log }),
    );
  }
  $("#detail-body").replaceChildren(...body);
  if (!refresh || !dialog.open) dialog.showModal();
  clearTimeout(logTimer);
  if (task.type === "command") followLog(task.id);
}

/** Read the command's log, and what it adds while it runs (the daemon holds it; the page asks). */
function followLog(taskId) {
  const out = $("#log");
  let offset = 0;
  const step = async () => {
    if (state.detail !== taskId) return;
    try {
      const chunk = await api.readLog(taskId, offset);
      const atEnd = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
      if (chunk.text) out.append(chunk.text);
      if (atEnd) out.scrollTop = out.scrollHeight;
      offset = chunk.offset;
      if (offset < chunk.size) logTimer = setTimeout(step, 0); // more to read now
      else if (ACTIVE.includes(chunk.status)) logTimer = setTimeout(step, 1000);
      else if (!out.textContent) out.textContent = t.log_empty;
    } catch (error) {
      show(error);
    }
  };
  step();
}

function prioritySelect(value, label) {
  const select = view.el("select", { "aria-label": label });
  fillPriorities(select);
  select.value = String(value);
  return select;
}

function fillPriorities(select) {
  for (let p = 0; p <= 11; p++) select.append(new Option(`${p} · ${band(p)}`, String(p)));
}

// --- wiring ----------------------------------------------------------------------------------------

function applyFilters() {
  state.status = $("#status-filter").value;
  state.type = $("#type-filter").value;
  state.offset = 0;
  reload();
}

function select(ids, on) {
  for (const id of ids) {
    if (on) state.selection.add(id);
    else state.selection.delete(id);
    redrawRow(id);
  }
  drawSelection();
}

function wire() {
  const statusFilter = $("#status-filter");
  statusFilter.replaceChildren(new Option(t.all, ""), ...STATUSES.map((s) => new Option(t.status[s], s)));
  statusFilter.addEventListener("change", applyFilters);
  $("#type-filter").replaceChildren(new Option(t.all, ""));
  $("#type-filter").addEventListener("change", applyFilters);
  fillPriorities($("#batch-priority-value"));
  $("#batch-priority-value").value = "0";
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
    const id = box.dataset.id;
    const ids = [...state.tasks.keys()];
    if (event.shiftKey && state.lastClicked !== null && ids.includes(state.lastClicked)) {
      const [a, b] = [ids.indexOf(state.lastClicked), ids.indexOf(id)].sort((x, y) => x - y);
      select(ids.slice(a, b + 1), box.checked);
    } else {
      select([id], box.checked);
    }
    state.lastClicked = id;
  });
  $("#select-page").addEventListener("change", (event) => select([...state.tasks.keys()], event.target.checked));
  $("#select-failed").addEventListener(
    "click",
    act(async () => {
      select(await api.allIds({ status: "failed", type: state.type }), true);
    }),
  );
  $("#clear-selection").addEventListener("click", () => select([...state.selection], false));
  $("#batch-retry").addEventListener("click", () => batch("retry"));
  $("#batch-cancel").addEventListener("click", () => batch("cancel"));
  $("#batch-priority").addEventListener("click", () => batch("priority"));
  $("#cancel-all").addEventListener("click", () => bulkCancel(false));
  $("#cancel-by-type").addEventListener("click", () => bulkCancel(true));
  $("#notice").addEventListener("click", hideNotice);
  $("#detail").addEventListener("close", () => {
    state.detail = null;
    clearTimeout(logTimer);
  });
  setInterval(() => view.refreshTimes($("#tasks")), 5000); // "3 分钟前" stays true
}

function askToSignIn() {
  $("#app").hidden = true;
  $("#signin").hidden = false;
  $("#connection").textContent = t.signed_out;
  $("#token").focus();
}

function start() {
  translatePage();
  wire();
  api.auth.addEventListener("required", askToSignIn);
  $("#signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api.signIn($("#token").value);
    } catch {
      $("#signin-error").textContent = t.signin_failed;
      return;
    }
    $("#token").value = "";
    $("#signin-error").textContent = "";
    $("#signin").hidden = true;
    $("#app").hidden = false;
    stream.reconnect(); // its tries so far were refused: signed in, it opens and reloads the page
  });
  $("#app").hidden = false;
  onStreamState("connecting");
  $("#connection").textContent = t.connecting;
  stream = follow({ onEvent, onState: onStreamState, onResync: reload });
  reload(); // at once; the stream reloads again once subscribed, so that nothing falls between
}

start();
