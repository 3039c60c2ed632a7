// Every call the page makes goes through the REST paths that curl uses: nothing here is page-only
// except signing in, which turns a token into a cookie for this origin.

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export const auth = new EventTarget(); // "required": a request was refused for want of a token

async function call(method, path, body) {
  const options = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  if (response.status === 204) return null;
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    payload = { detail: `${response.status} ${response.statusText}` };
  }
  if (!response.ok) {
    if (response.status === 401) auth.dispatchEvent(new Event("required"));
    throw new ApiError(response.status, payload.detail ?? String(response.status));
  }
  return payload;
}

const base = "/api/v1";
const id = (taskId) => encodeURIComponent(taskId);

export function listTasks({ status, type, limit, offset, order = "oldest" }) {
  const query = new URLSearchParams({ limit: String(limit), offset: String(offset), order });
  if (status) query.set("status", status);
  if (type) query.set("task_type", type);
  return call("GET", `${base}/tasks?${query}`);
}

export const stats = () => call("GET", `${base}/tasks/stats`);
export const getTask = (taskId) => call("GET", `${base}/tasks/${id(taskId)}`);
export const history = (taskId) => call("GET", `${base}/tasks/${id(taskId)}/history`);
export const readLog = (taskId, offset) =>
  call("GET", `${base}/tasks/${id(taskId)}/log?offset=${offset}`);

export const cancel = (taskId, running) =>
  call("POST", `${base}/tasks/${id(taskId)}/cancel`, running ? { cancel_running: true } : {});
export const setPriority = (taskId, priority) =>
  call("POST", `${base}/tasks/${id(taskId)}/priority`, { priority });
export const retry = (taskId) => call("POST", `${base}/tasks/${id(taskId)}/retry`, {});

// One request for a whole selection, answered with a result per task.
export const retryMany = (taskIds) => call("POST", `${base}/tasks/retry`, { task_ids: taskIds });
export const cancelMany = (taskIds, running) =>
  call("POST", `${base}/tasks/cancel`, { task_ids: taskIds, cancel_running: running });
export const setPriorityMany = (taskIds, priority) =>
  call("POST", `${base}/tasks/priority`, { task_ids: taskIds, priority });

export const cancelAll = (running) => call("POST", `${base}/tasks/cancel-all`, { cancel_running: running });
export const cancelByType = (type, running) =>
  call("POST", `${base}/tasks/cancel-by-type`, { task_type: type, cancel_running: running });

export const signIn = (token) => call("POST", `${base}/session`, { token });

/** Every id of the tasks a filter matches, a page of 10,000 at a time. */
export async function allIds({ status, type }) {
  const ids = [];
  for (let offset = 0; ; offset += 10000) {
    const page = await listTasks({ status, type, limit: 10000, offset });
    ids.push(...page.tasks.map((task) => task.id));
    if (offset + page.tasks.length >= page.total || page.tasks.length === 0) return ids;
  }
}
