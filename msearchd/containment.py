"""Finding everything a worker's tasks started, by something a task cannot shed, and killing it.

A task's processes can leave the worker's process group and session (setsid), lose their parent (a
double fork) and clear their environment (`env -i`). Two ways hold them anyway:

- **cgroup** (cgroup v2, where the daemon may make cgroups below its own: as root, or in a systemd
  user service with `Delegate=yes`): each worker runs in a cgroup of its own, below one of the
  daemon's. Whatever it starts stays there, whatever it does; `cgroup.kill` ends all of it at once.
- **processes** (anywhere else): each worker is a child subreaper, so that what its tasks orphan
  stays in its tree while it lives; what reaches the daemon (a subreaper too) once a worker died is
  a leftover of that worker.

A ledger in the state folder names the daemon's cgroup, or each worker's pid and start and, once a
second, the processes under a worker that left its session: a daemon started after a `kill -9` of
this one kills what is still in that cgroup, in those workers' sessions and process groups, or
listed (a process that escaped less than a second before the `kill -9` may be missed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("msearchd.containment")

LEDGER = "containment.json"
CGROUP_PREFIX = "msearchd-"
_POLL = 0.005
# How often, without a cgroup, the processes that left their worker's session are listed in the ledger.
LEDGER_PERIOD = 1.0


def start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot: with the pid, it names one process for good."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return None
    return int(fields[19])  # field 22 of the line, counted after the command name in parentheses


def children(pid: int) -> list[int]:
    """The children of `pid` (of each of its threads), read from /proc without scanning it."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")  # noqa: PTH208 - names only, often
    except OSError:
        return found
    for tid in tasks:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as listing:
            found += [int(child) for child in listing.read().split()]
    return found


def tree(pid: int) -> list[int]:
    """The descendants of `pid`."""
    found: list[int] = []
    todo = children(pid)
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children(child)
    return found


def cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on a hybrid system)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        before, _, after = line.partition(" - ")
        fields = before.split()
        if after.split(" ", 1)[0] == "cgroup2" and len(fields) > 4 and fields[3] == "/":
            return Path(fields[4].replace("\\040", " "))
    return None


def own_cgroup(root: Path) -> Path | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    return next((root / line[3:].lstrip("/") for line in lines if line.startswith("0::")), None)


def _populated(cgroup: Path) -> bool:
    try:
        return "populated 1" in (cgroup / "cgroup.events").read_text()
    except FileNotFoundError:
        return False


def _members(cgroup: Path) -> list[int]:
    pids: list[int] = []
    for procs in cgroup.glob("**/cgroup.procs"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in procs.read_text().split()]
    return pids


def _remove_tree(cgroup: Path) -> None:
    """rmdir a cgroup and those below it, deepest first (an empty cgroup goes with rmdir)."""
    for folder in sorted(cgroup.glob("**/"), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _cgroup_kill(cgroup: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (cgroup / "cgroup.kill").write_text("1")


def _kill(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _alive(pid: int, started: int | None) -> bool:
    """Whether the process `pid` that started at `started` still runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return False
    return fields[0] not in (b"Z", b"X") and (started is None or int(fields[19]) == started)


@dataclass
class Ledger:
    """What a later daemon on this state folder needs to kill what this one's workers left: its
    cgroup, or its workers and the processes that left their sessions (pid -> start ticks)."""

    path: Path
    cgroup: Path | None = None
    workers: dict[int, int] = field(default_factory=dict)
    escaped: dict[int, int] = field(default_factory=dict)

    def save(self) -> None:
        temporary = self.path.with_name(self.path.name + ".new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with open(fd, "w") as out:
            json.dump(
                {
                    "cgroup": str(self.cgroup) if self.cgroup else None,
                    "workers": list(self.workers.items()),
                    "escaped": list(self.escaped.items()),
                },
                out,
            )
        temporary.replace(self.path)

    @classmethod
    def load(cls, state_dir: Path) -> Ledger:
        ledger = cls(state_dir / LEDGER)
        try:
            raw = json.loads(ledger.path.read_text())
            ledger.cgroup = Path(raw["cgroup"]) if raw["cgroup"] else None
            ledger.workers = {int(pid): int(ticks) for pid, ticks in raw["workers"]}
            ledger.escaped = {int(pid): int(ticks) for pid, ticks in raw.get("escaped", [])}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the unreadable %s: %s", ledger.path, exc)
        return ledger

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _is_daemon_cgroup(path: Path) -> bool:
    """Whether a cgroup named in a ledger is one a daemon made: nothing else is killed for it."""
    root = cgroup2_root()
    return (
        root is not None
        and path.is_absolute()
        and ".." not in path.parts
        and path.is_relative_to(root)
        and path.name.startswith(CGROUP_PREFIX)
        and (path / "cgroup.kill").exists()
    )


def kill_left_behind(state_dir: Path, timeout: float) -> int:
    """At start: kill what the workers of an earlier daemon on this state folder left running, by its
    ledger. Returns how many processes were killed."""
    ledger = Ledger.load(state_dir)
    cgroup = ledger.cgroup
    killed = 0
    if cgroup is not None and _is_daemon_cgroup(cgroup):
        killed += len(_members(cgroup))
        _cgroup_kill(cgroup)
        deadline = time.monotonic() + timeout
        while _populated(cgroup) and time.monotonic() < deadline:
            time.sleep(_POLL)
        _remove_tree(cgroup)
    if ledger.workers:
        killed += _kill_sessions(ledger.workers)
    uid = os.getuid()
    for pid, ticks in ledger.escaped.items():
        with contextlib.suppress(OSError):
            if start_ticks(pid) == ticks and os.stat(f"/proc/{pid}").st_uid == uid:  # noqa: PTH116
                _kill(pid)
                killed += 1
    ledger.remove()
    return killed


def _kill_sessions(workers: dict[int, int]) -> int:
    """Kill this user's processes in the session or process group of a recorded worker, started
    after it. A worker that still runs under the recorded pid with another start is a new process
    that took the pid: its session is not ours."""
    gone_workers = {pid: ticks for pid, ticks in workers.items() if start_ticks(pid) in (None, ticks)}
    killed = 0
    me, uid = os.getpid(), os.getuid()
    for name in os.listdir("/proc"):  # noqa: PTH208 - thousands of names: no Path objects
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:  # noqa: PTH116 - one of thousands: no Path objects
                continue
            leader = next((w for w in (os.getsid(pid), os.getpgid(pid)) if w in gone_workers), None)
        except OSError:
            continue
        started = start_ticks(pid)
        if leader is not None and started is not None and started >= gone_workers[leader]:
            _kill(pid)
            killed += 1
    return killed


class Containment:
    """Where this daemon's workers run, and how everything one of them started is killed."""

    def __init__(self, state_dir: Path, use_cgroups: bool, known_child: Callable[[int], bool]) -> None:
        """`known_child(pid)`: whether a child of the daemon is one of its own (a worker, the shim),
        not a leftover."""
        self._known_child = known_child
        self.cgroup = self._make_cgroup() if use_cgroups else None
        if not use_cgroups:
            log.info("cgroups = false: workers' processes are followed by session and parent")
        self._ledger = Ledger(state_dir / LEDGER, self.cgroup)
        self._workers = self._ledger.workers  # pid -> start, without a cgroup
        self._ending: dict[int, asyncio.Future[list[int]]] = {}
        self._save_ledger()
        self._watching: asyncio.Task[None] | None = None
        if self.cgroup is None:
            self._watching = asyncio.get_running_loop().create_task(self._list_escaped())

    @staticmethod
    def _make_cgroup() -> Path | None:
        root = cgroup2_root()
        own = own_cgroup(root) if root is not None else None
        if root is None or own is None:
            log.info("no cgroup v2 here: workers' processes are followed by session and parent")
            return None
        cgroup = own / f"{CGROUP_PREFIX}{os.getpid()}"
        try:
            cgroup.mkdir()
        except OSError as exc:
            log.info(
                "cannot make a cgroup under %s (%s): workers' processes are followed by session and parent",
                own,
                exc.strerror,
            )
            return None
        log.info("workers run in cgroups under %s", cgroup)
        return cgroup

    def _save_ledger(self) -> None:
        """A ledger that cannot be written (a full disk) costs only what a daemon started after a
        kill -9 of this one could find: say so, and go on."""
        try:
            self._ledger.save()
        except OSError as exc:
            log.warning(
                "cannot write %s (%s): a later daemon may miss what this one leaves", self._ledger.path, exc
            )

    def _worker_cgroup(self, pid: int) -> Path:
        assert self.cgroup is not None
        return self.cgroup / f"worker-{pid}"

    def add_worker(self, pid: int) -> None:
        """Hold worker `pid` before it starts anything (it waits for its first task)."""
        if self.cgroup is not None:
            cgroup = self._worker_cgroup(pid)
            cgroup.mkdir(exist_ok=True)
            (cgroup / "cgroup.procs").write_text(str(pid))
            return
        ticks = start_ticks(pid)
        if ticks is not None:
            self._workers[pid] = ticks
            self._save_ledger()

    async def _list_escaped(self) -> None:
        """Keep the ledger's list of processes under the workers that left their sessions (which a
        later daemon could not find by session) up to date."""
        while True:
            await asyncio.sleep(LEDGER_PERIOD)
            escaped: dict[int, int] = {}
            for worker in list(self._workers):
                for pid in tree(worker):
                    with contextlib.suppress(OSError):
                        if os.getsid(pid) != worker and (ticks := start_ticks(pid)) is not None:
                            escaped[pid] = ticks
            if escaped != self._ledger.escaped:
                self._ledger.escaped = escaped
                self._save_ledger()
                log.debug("ledger: processes %s left their worker's session", sorted(escaped))

    def kill(self, pid: int) -> list[int]:
        """SIGKILL worker `pid` and all it started, now; returns what was found (without a cgroup)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        if self.cgroup is not None:
            _cgroup_kill(self._worker_cgroup(pid))
            return []
        found = [pid, *tree(pid)] if _alive(pid, self._workers.get(pid)) else []
        for stray in children(os.getpid()):
            if not self._known_child(stray):
                found += [stray, *tree(stray)]
        for each in found:
            _kill(each)
        return found

    async def end_worker(self, pid: int, timeout: float) -> list[int]:
        """Kill worker `pid` and everything it started, and wait until all of it is gone; returns
        the pids that outlived `timeout`. Callers at once share one end."""
        ending = self._ending.get(pid)
        if ending is None:
            ending = self._ending[pid] = asyncio.ensure_future(self._end(pid, timeout))
            ending.add_done_callback(lambda _: self._ending.pop(pid, None))
        return await asyncio.shield(ending)

    async def _end(self, pid: int, timeout: float) -> list[int]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.cgroup is not None:
            cgroup = self._worker_cgroup(pid)
            self.kill(pid)
            while _populated(cgroup) and loop.time() < deadline:
                await asyncio.sleep(_POLL)
            survivors = _members(cgroup)
            _remove_tree(cgroup)
            return survivors
        # Each round kills what is found; what a killed process had orphaned is found in the next.
        watched: dict[int, int | None] = {}
        while True:
            for found in self.kill(pid):
                watched.setdefault(found, start_ticks(found))
            watched = {p: t for p, t in watched.items() if _alive(p, t)}
            if not watched or loop.time() >= deadline:
                break
            await asyncio.sleep(_POLL)
        if pid in self._workers and not watched:
            del self._workers[pid]
            self._save_ledger()
        return list(watched)

    async def close(self, timeout: float) -> list[int]:
        """At stop, once every worker was ended: kill what is left anywhere; the ledger goes."""
        if self._watching is not None:
            self._watching.cancel()
        if self._ending:
            await asyncio.gather(*self._ending.values())
        survivors: list[int] = []
        if self.cgroup is not None:
            _cgroup_kill(self.cgroup)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while _populated(self.cgroup) and loop.time() < deadline:
                await asyncio.sleep(_POLL)
            survivors = _members(self.cgroup)
            _remove_tree(self.cgroup)
        else:
            for pid in list(self._workers):
                survivors += await self._end(pid, timeout)
        if not survivors:
            self._ledger.remove()
        return survivors
