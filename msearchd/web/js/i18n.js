// The page speaks the API document's language (Chinese), and English to a browser that prefers it.

const zh = {
  title: "📋 任务管理器",
  filters: "筛选",
  selection: "所选任务",
  pages: "分页",
  select_page: "选择本页",
  select_task: (id) => `选择 ${id}`,
  show_status: (status, n) => `${status} ${n} 个，只显示这些`,
  retried_n: (n) => `已重试 ${n} 个任务`,
  lost_at: (time) => `连接中断（${time}），正在重连…`,
  signed_out: "需要登录",
  log_follow: "（任务运行中，日志实时更新）",
  overview: "概览",
  token_label: "访问令牌",
  sign_in: "登录",
  signin_failed: "令牌无效",
  status_filter: "状态",
  type_filter: "类型",
  all: "全部",
  cancel_by_type: "按类型取消",
  cancel_all: "全部取消",
  select_failed: "选中本筛选下全部失败任务",
  clear_selection: "清除选择",
  batch_retry: "🔄 批量重试",
  batch_cancel: "取消所选",
  batch_priority: "设置优先级",
  priority: "优先级",
  col_id: "ID", col_type: "类型", col_status: "状态", col_priority: "优先级", col_progress: "进度",
  col_operation: "当前操作", col_attempts: "尝试", col_created: "创建", col_started: "开始",
  col_finished: "结束", col_error: "错误",
  newer: "‹ 较新", older: "较旧 ›", page_size: "每页",
  page_info: (from, to, total) => `第 ${from}–${to} 条，共 ${total} 条`,
  no_tasks: "没有任务",
  selected: (n) => `已选 ${n} 个`,
  workers: (busy, total) => `工作进程：${busy} 忙 / ${total - busy} 闲`,
  connected: "实时",
  connecting: "正在连接…",
  reconnecting: "连接中断，正在重连…",
  resynced: "已重新连接，数据已同步",
  yes: "确定", no: "取消", close: "关闭",
  status: {
    pending: "等待", blocked: "阻塞", running: "运行中", completed: "已完成", failed: "失败",
    cancelled: "已取消",
  },
  bands: {
    0: "最高（搜索查询、手动操作）", 1: "高（向量化）", 6: "中（预处理）", 9: "低（缩略图、预览）",
    11: "最低",
  },
  confirm_cancel_running: (n, total) => `所选 ${total} 个任务中有 ${n} 个正在运行，确定要停止它们吗？`,
  confirm_cancel: (n) => `确定取消所选的 ${n} 个任务吗？`,
  confirm_stop: (id) => `任务 ${id} 正在运行，确定要停止它吗？`,
  confirm_cancel_all: (n) => `将取消全部 ${n} 个等待中的任务（及依赖它们的任务）。确定吗？`,
  confirm_cancel_type: (type, n) => `将取消 ${n} 个等待中的 ${type} 任务（及依赖它们的任务）。确定吗？`,
  also_running: (n) => `同时停止正在运行的 ${n} 个任务`,
  choose_type: "请先在“类型”中选择一个类型",
  nothing_selected: "请先选择任务",
  summary_retry: "批量重试结果",
  summary_cancel: "批量取消结果",
  summary_priority: "设置优先级结果",
  summary_counts: (ok, bad) => `成功 ${ok} 个，失败 ${bad} 个`,
  retried_as: (id, next) => `${id} → ${next}`,
  detail: "任务详情",
  data: "数据",
  depends_on: "依赖",
  dependents: "被依赖",
  retry_of: "重试自",
  retried_as_label: "重试为",
  history: "历史",
  log: "日志",
  log_empty: "（无输出）",
  cancel: "取消",
  stop: "停止",
  retry: "重试",
  set_priority: "设置优先级",
  who: (uid, pid) => (uid == null ? "" : `uid ${uid} pid ${pid}`),
  error_prefix: "操作失败：",
};

const en = {
  title: "📋 Task manager",
  filters: "Filters",
  selection: "Selection",
  pages: "Pages",
  select_page: "Select this page",
  select_task: (id) => `Select ${id}`,
  show_status: (status, n) => `${n} ${status}: show only these`,
  retried_n: (n) => `${n} tasks retried`,
  lost_at: (time) => `Connection lost (${time}), reconnecting…`,
  signed_out: "Sign-in needed",
  log_follow: "(running: the log follows)",
  overview: "Overview",
  token_label: "Access token",
  sign_in: "Sign in",
  signin_failed: "Invalid token",
  status_filter: "Status",
  type_filter: "Type",
  all: "All",
  cancel_by_type: "Cancel by type",
  cancel_all: "Cancel all",
  select_failed: "Select all failed on this filter",
  clear_selection: "Clear selection",
  batch_retry: "🔄 Retry selected",
  batch_cancel: "Cancel selected",
  batch_priority: "Set priority",
  priority: "Priority",
  col_id: "ID", col_type: "Type", col_status: "Status", col_priority: "Priority", col_progress: "Progress",
  col_operation: "Current operation", col_attempts: "Attempts", col_created: "Created",
  col_started: "Started", col_finished: "Finished", col_error: "Error",
  newer: "‹ Newer", older: "Older ›", page_size: "Per page",
  page_info: (from, to, total) => `${from}–${to} of ${total}`,
  no_tasks: "No tasks",
  selected: (n) => `${n} selected`,
  workers: (busy, total) => `Workers: ${busy} busy / ${total - busy} idle`,
  connected: "live",
  connecting: "Connecting…",
  reconnecting: "Connection lost, reconnecting…",
  resynced: "Reconnected; the table is up to date",
  yes: "OK", no: "Cancel", close: "Close",
  status: {
    pending: "pending", blocked: "blocked", running: "running", completed: "completed", failed: "failed",
    cancelled: "cancelled",
  },
  bands: {
    0: "highest (search, manual)", 1: "high (embeddings)", 6: "medium (preprocessing)",
    9: "low (thumbnails, previews)", 11: "lowest",
  },
  confirm_cancel_running: (n, total) => `${n} of the ${total} selected tasks are running. Stop them?`,
  confirm_cancel: (n) => `Cancel the ${n} selected tasks?`,
  confirm_stop: (id) => `${id} is running. Stop it?`,
  confirm_cancel_all: (n) => `This cancels all ${n} waiting tasks (and those that depend on them). Go on?`,
  confirm_cancel_type: (type, n) =>
    `This cancels ${n} waiting ${type} tasks (and those that depend on them). Go on?`,
  also_running: (n) => `Also stop the ${n} running tasks`,
  choose_type: "Choose a type in the Type filter first",
  nothing_selected: "Select tasks first",
  summary_retry: "Retry results",
  summary_cancel: "Cancel results",
  summary_priority: "Priority results",
  summary_counts: (ok, bad) => `${ok} succeeded, ${bad} failed`,
  retried_as: (id, next) => `${id} → ${next}`,
  detail: "Task",
  data: "Data",
  depends_on: "Depends on",
  dependents: "Dependents",
  retry_of: "Retry of",
  retried_as_label: "Retried as",
  history: "History",
  log: "Log",
  log_empty: "(no output)",
  cancel: "Cancel",
  stop: "Stop",
  retry: "Retry",
  set_priority: "Set priority",
  who: (uid, pid) => (uid == null ? "" : `uid ${uid} pid ${pid}`),
  error_prefix: "Failed: ",
};

function preferred() {
  for (const lang of navigator.languages || [navigator.language || "zh"]) {
    const code = lang.toLowerCase();
    if (code.startsWith("zh")) return "zh";
    if (code.startsWith("en")) return "en";
  }
  return "zh";
}

export const lang = preferred();
export const t = lang === "en" ? en : zh;

/** Put the chosen language's words into the static page (elements marked data-t). */
export function translatePage() {
  document.documentElement.lang = lang === "en" ? "en" : "zh-CN";
  document.title = `${t.title} · msearch`;
  for (const el of document.querySelectorAll("[data-t]")) {
    const value = t[el.dataset.t];
    if (typeof value === "string") el.textContent = value;
  }
  for (const el of document.querySelectorAll("[data-t-label]")) {
    const value = t[el.dataset.tLabel];
    if (typeof value === "string") el.setAttribute("aria-label", value);
  }
}

/** What a priority means, as the document describes its bands. */
export function band(priority) {
  let found = t.bands[0];
  for (const [from, text] of Object.entries(t.bands)) if (priority >= Number(from)) found = text;
  return found;
}
