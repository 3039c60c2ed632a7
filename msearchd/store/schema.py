"""The SQLite schema of the task store, and the migrations that bring an older store up to it."""

from msearchd.model import StopReason, TaskStatus

_SCHEMA_V1 = """
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    data BLOB NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    current_operation TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    blocked_reason TEXT,
    stop_reason TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    retry_of INTEGER,
    retried_as INTEGER,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    worker_pid INTEGER,
    bulk_request INTEGER
);
-- The queue: the next task is the first entry. Statements that pick from it say INDEXED BY, since the
-- planner would rather use tasks_status and sort every pending row.
CREATE INDEX tasks_queue ON tasks(priority, id) WHERE status = 'pending';
-- Within one status, or one (type, status), entries are in id order: listing needs no sort.
CREATE INDEX tasks_status ON tasks(status);
CREATE INDEX tasks_type_status ON tasks(type, status);
CREATE TABLE deps (
    task_id INTEGER NOT NULL,
    depends_on INTEGER NOT NULL,
    PRIMARY KEY (task_id, depends_on)
) WITHOUT ROWID;
CREATE INDEX deps_reverse ON deps(depends_on, task_id);
-- What was asked of a task and by whom. A bulk request (cancel-all) is one row without a task_id,
-- which the tasks it cancelled point at (tasks.bulk_request); lifecycle times live in the task row.
CREATE TABLE task_events (
    id INTEGER PRIMARY KEY,
    task_id INTEGER,
    time REAL NOT NULL,
    event TEXT NOT NULL,
    detail BLOB,
    uid INTEGER,
    pid INTEGER
);
CREATE INDEX task_events_task ON task_events(task_id, id);
"""

# Who submitted a task (the uid and pid of the client), written with the task itself.
_SUBMITTER_V2 = """
ALTER TABLE tasks ADD COLUMN submitted_uid INTEGER;
ALTER TABLE tasks ADD COLUMN submitted_pid INTEGER;
"""

# Keys: at most one unfinished task per key, held by the index itself, so that no two submits can both
# win. Paused types ('*': all) outlive the daemon.
_CONTROL_V3 = """
ALTER TABLE tasks ADD COLUMN key TEXT;
CREATE UNIQUE INDEX tasks_key ON tasks(key)
    WHERE key IS NOT NULL AND status IN ('pending', 'blocked', 'running');
CREATE TABLE queue_pauses (
    type TEXT PRIMARY KEY,
    time REAL NOT NULL,
    uid INTEGER,
    pid INTEGER
) WITHOUT ROWID;
"""

# What a completed task's handler returned (msgpack; NULL for none), shown with the task.
_RESULT_V4 = """
ALTER TABLE tasks ADD COLUMN result BLOB;
"""

# Whether a finished task's run left a log (0 or 1), as its worker said; NULL where none said, and the
# log file is looked for. Answers about many finished tasks need no look at the disk for each.
_LOGGED_V5 = """
ALTER TABLE tasks ADD COLUMN logged INTEGER;
"""

# Migration N brings a store from schema version N to N + 1; the version is SQLite's user_version.
MIGRATIONS = (_SCHEMA_V1, _SUBMITTER_V2, _CONTROL_V3, _RESULT_V4, _LOGGED_V5)
SCHEMA_VERSION = len(MIGRATIONS)


# What both stores share about the tasks table: the fields an update may set, the waiting statuses,
# and a column's text to its enum member (a dict lookup costs a fraction of calling the enum).
UPDATABLE = frozenset(
    {
        "status",
        "priority",
        "progress",
        "current_operation",
        "attempts",
        "error",
        "blocked_reason",
        "stop_reason",
        "cancel_requested",
        "retried_as",
        "started_at",
        "finished_at",
        "worker_pid",
        "result",
        "logged",
    }
)
WAITING = (str(TaskStatus.PENDING), str(TaskStatus.BLOCKED))
STATUS_BY_NAME = {str(s): s for s in TaskStatus}
STOP_REASON_BY_NAME = {str(r): r for r in StopReason}
