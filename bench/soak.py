"""Crash soak: kill -9 the daemon at random points under mixed load, restart it, and check, from what
the clients were told, that nothing acknowledged was lost and that nothing ran twice without an
interruption in between.

    .venv/bin/python bench/soak.py --seconds 180

Load (one client thread each, reconnecting after every kill): single submits, pipelined submits,
priority and cancel storms on tasks that can never start, bulk cancels (now and then a burst of short
commands followed at once by cancel-all --running), retries of failed tasks, and cancels of running
tasks. The tasks are `command`s that append their
MSEARCH_TASK_ID to a file when they start (some sleep, some fail), and `parked` tasks, blocked for
good behind a task that always fails.

What is checked once the time is up, on a restarted daemon:
- every acknowledged submit exists, with its type, data and priority (or the priority of the last
  acknowledged change);
- every acknowledged cancel left its task cancelled (a running task: as the answer said), and every
  parked task acknowledged before a bulk cancel was sent is cancelled;
- every acknowledged retry links the two tasks;
- a task whose id is in the file more than once was interrupted in between as often: its history has
  a `requeued` entry for each interruption by a daemon stop, and its attempts count every run.

It prints its figures and exits 1 when something acknowledged was lost, a rerun is unexplained, or a
task a cancel stopped ended `failed`.
It is not a test: pytest does not collect it, and the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msearchd.client import Client
from msearchd.errors import MsearchError, Unavailable

BIN = Path(sys.executable).parent
MSEARCHD = str(BIN / "msearchd")
PARKED = "parked"
ANCHOR = "soak_anchor"  # no handler: fails at once, so what depends on it stays blocked for good
# An answer that never came: the request may or may not have taken effect.
LOST_ANSWER = (Unavailable, OSError, EOFError)


@dataclass
class Ledger:
    """What clients were told; shared by the load threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    clock: Iterator[int] = field(default_factory=itertools.count)
    # task id -> (type, data, priority), as the submit's answer acknowledged it
    submitted: dict[str, tuple[str, Any, int]] = field(default_factory=dict)
    # parked task id -> the moment its submit was acknowledged
    parked_at: dict[str, int] = field(default_factory=dict)
    # task id -> the priority of its last acknowledged change; None once a change went unanswered
    priority: dict[str, int | None] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)
    running_cancels: dict[str, str] = field(default_factory=dict)  # id -> status the answer gave
    bulk_sent: list[int] = field(default_factory=list)  # moments acknowledged bulk cancels were sent
    retries: dict[str, str] = field(default_factory=dict)  # failed id -> its retry
    counts: collections.Counter[str] = field(default_factory=collections.Counter)

    def now(self) -> int:
        with self.lock:
            return next(self.clock)

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] += n

    def submit_acknowledged(self, task: dict[str, Any], how: str) -> None:
        with self.lock:
            self.submitted[task["id"]] = (task["type"], task["data"], task["priority"])
            if task["type"] == PARKED:
                self.parked_at[task["id"]] = next(self.clock)
            self.counts[f"submits acknowledged ({how})"] += 1


class Daemon:
    """The msearchd under test: one state folder, killed and started again and again."""

    def __init__(self, root: Path, workers: int, grace: float) -> None:
        self.root = root
        self.socket = root / "run" / "msearchd.sock"
        self.state_dir = root / "state"
        self.config = root / "msearchd.toml"
        self.config.write_text("max_attempts = 5\n")
        self.log = root / "msearchd.log"
        self.workers, self.grace = workers, grace
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSEARCH_")}
        return {**env, "MSEARCH_SOCKET": str(self.socket), "MSEARCH_STATE_DIR": str(self.state_dir)}

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    MSEARCHD,
                    *("--workers", str(self.workers), "--grace", str(self.grace)),
                    *("--config", str(self.config), "--log-level", "info"),
                ],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.starts += 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"msearchd exited with {self.proc.returncode}; see {self.log}")
            try:
                with Client(self.socket) as c:
                    c.status()
                return
            except MsearchError:
                time.sleep(0.02)
        raise SystemExit(f"msearchd did not start within 60 s; see {self.log}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout=120)


class Load(threading.Thread):
    """One client doing one kind of work until told to stop; its connection is remade after a kill."""

    def __init__(self, name: str, daemon: Daemon, ledger: Ledger, runs: Path, seed: int) -> None:
        super().__init__(name=name, daemon=True)
        self.d, self.ledger, self.runs = daemon, ledger, runs
        self.rng = random.Random(seed)
        self.stopping = threading.Event()
        self.client: Client | None = None
        self.crashed: BaseException | None = None
        self.anchor: str | None = None

    def run(self) -> None:
        step: Callable[[Client], None] = getattr(self, f"step_{self.name}")
        try:
            while not self.stopping.is_set():
                client = self.connect()
                if client is None:
                    continue
                try:
                    step(client)
                except LOST_ANSWER:
                    self.ledger.count("requests without an answer (daemon killed)")
                    self.drop()
                self.stopping.wait(self.rng.uniform(0.0, 0.02))
        except BaseException as exc:
            self.crashed = exc
        finally:
            self.drop()

    def connect(self) -> Client | None:
        if self.client is None:
            try:
                self.client = Client(self.d.socket, connect_timeout=10)
            except MsearchError:
                self.stopping.wait(0.05)  # down: the soak is restarting it
        return self.client

    def drop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    # --- what tasks are submitted -------------------------------------------------------------------

    def command(self, pause: str | None = None, code: int | None = None) -> dict[str, Any]:
        if pause is None:
            pause = self.rng.choice(["0", "0", "0", "0.05", "0.3", "1.5"])
        if code is None:
            code = 1 if self.rng.random() < 0.2 else 0
        script = f'echo "$MSEARCH_TASK_ID" >> {self.runs}; sleep {pause}; exit {code}'
        return {
            "type": "command",
            "data": {"argv": ["sh", "-c", script], "token": self.rng.random()},
            "priority": self.rng.randint(0, 11),
        }

    def parked(self, client: Client) -> dict[str, Any]:
        if self.anchor is None:
            self.anchor = client.submit(ANCHOR, {})["id"]
        return {
            "type": PARKED,
            "data": {"token": self.rng.random()},
            "priority": self.rng.randint(0, 11),
            "depends_on": [self.anchor],
        }

    def submit_one(self, client: Client, spec: dict[str, Any], how: str) -> dict[str, Any] | None:
        try:
            task = client.submit(
                spec["type"], spec["data"], priority=spec["priority"], depends_on=spec.get("depends_on")
            )
        except LOST_ANSWER:
            raise
        except MsearchError as exc:  # refused: its anchor was cancelled by a bulk cancel
            self.ledger.count(f"submits refused ({exc.code})")
            self.anchor = None
            return None
        self.ledger.submit_acknowledged(task, how)
        return task

    # --- the kinds of load --------------------------------------------------------------------------

    def step_submitter(self, client: Client) -> None:
        spec = self.command() if self.rng.random() < 0.6 else self.parked(client)
        self.submit_one(client, spec, "single")

    def step_pipeliner(self, client: Client) -> None:
        specs = [self.command() if self.rng.random() < 0.3 else self.parked(client) for _ in range(200)]
        self.pipelined(client, specs, "pipelined")
        self.stopping.wait(self.rng.uniform(0.2, 1.0))

    def pipelined(self, client: Client, specs: list[dict[str, Any]], how: str) -> None:
        pipeline = client.pipeline()
        for spec in specs:
            pipeline.submit(
                spec["type"], spec["data"], priority=spec["priority"], depends_on=spec.get("depends_on")
            )
        try:
            pipeline.finish()
        finally:
            # Those answered before the connection broke were acknowledged.
            for answer in pipeline.results:
                if isinstance(answer, MsearchError):
                    self.ledger.count(f"submits refused ({answer.code})")
                    self.anchor = None
                else:
                    self.ledger.submit_acknowledged(answer, how)

    def step_storm(self, client: Client) -> None:
        """Priority changes, then cancels, in bursts, on parked tasks of its own."""
        mine = [t for t in (self.submit_one(client, self.parked(client), "storm") for _ in range(20)) if t]
        for _ in range(5):
            for task in mine:
                self.change_priority(client, task["id"])
        for task in self.rng.sample(mine, len(mine) // 2):
            try:
                answer = client.cancel(task["id"])
            except LOST_ANSWER:
                raise
            except MsearchError as exc:  # a bulk cancel got there first
                self.ledger.count(f"cancels refused ({exc.code})")
                continue
            assert answer["task"]["status"] == "cancelled", answer
            with self.ledger.lock:
                self.ledger.cancelled.add(task["id"])
                self.ledger.counts["cancels acknowledged"] += 1
        self.stopping.wait(self.rng.uniform(0.2, 1.0))

    def change_priority(self, client: Client, task_id: str) -> None:
        priority = self.rng.randint(0, 11)
        try:
            client.set_priority(task_id, priority)
        except LOST_ANSWER:
            with self.ledger.lock:
                self.ledger.priority[task_id] = None  # may or may not have taken effect
            raise
        except MsearchError as exc:  # cancelled meanwhile by a bulk cancel
            self.ledger.count(f"priority changes refused ({exc.code})")
            return
        with self.ledger.lock:
            self.ledger.priority[task_id] = priority
            self.ledger.counts["priority changes acknowledged"] += 1

    def step_bulk(self, client: Client) -> None:
        self.stopping.wait(self.rng.uniform(0.5, 3.0))
        sent = self.ledger.now()
        roll = self.rng.random()
        if roll < 0.4:
            client.cancel_by_type(PARKED)
            what = "cancel-by-type parked"
        elif roll < 0.75:
            client.cancel_all()
            what = "cancel-all"
        else:
            # Short commands flooding the workers, then everything stopped at once, running or not.
            burst = [self.command(pause="0", code=0) for _ in range(self.rng.choice([20, 300]))]
            self.pipelined(client, burst, "burst")
            client.cancel_all(running=True)
            what = "cancel-all --running"
        with self.ledger.lock:
            self.ledger.bulk_sent.append(sent)
            self.ledger.counts[f"bulk cancels acknowledged ({what})"] += 1

    def step_retrier(self, client: Client) -> None:
        self.stopping.wait(self.rng.uniform(0.2, 1.0))
        if self.rng.random() < 0.3:
            answers = client.retry_failed("command")
        else:
            failed = client.list("failed", "command", limit=20)
            answers = []
            for task in failed:
                if task["retried_as"] is None:
                    try:
                        answers.append(client.retry(task["id"]))
                    except LOST_ANSWER:
                        raise
                    except MsearchError as exc:  # retried meanwhile by retry_failed
                        self.ledger.count(f"retries refused ({exc.code})")
        with self.ledger.lock:
            for answer in answers:
                self.ledger.retries[answer["task_id"]] = answer["new_task_id"]
            self.ledger.counts["retries acknowledged"] += len(answers)

    def step_canceller(self, client: Client) -> None:
        self.stopping.wait(self.rng.uniform(0.1, 0.5))
        running = client.list("running", "command", limit=10)
        if not running:
            return
        task = self.rng.choice(running)
        try:
            answer = client.cancel(task["id"], running=True)
        except LOST_ANSWER:
            raise
        except MsearchError as exc:  # it ended meanwhile
            self.ledger.count(f"running cancels refused ({exc.code})")
            return
        with self.ledger.lock:
            self.ledger.running_cancels[task["id"]] = answer["task"]["status"]
            self.ledger.counts["running cancels acknowledged"] += 1


KINDS = ["submitter", "submitter", "pipeliner", "storm", "bulk", "retrier", "canceller"]


def all_tasks(client: Client) -> dict[str, dict[str, Any]]:
    tasks: dict[str, dict[str, Any]] = {}
    while page := client.list(limit=10_000, offset=len(tasks)):
        tasks.update((t["id"], t) for t in page)
    return tasks


def check(
    ledger: Ledger, tasks: dict[str, dict[str, Any]], client: Client, started: collections.Counter[str]
) -> tuple[dict[str, int], list[str]]:
    """Compare what clients were told with what the daemon holds; returns figures and problems."""
    problems: list[str] = []
    lost = [task_id for task_id in ledger.submitted if task_id not in tasks]
    problems += [f"{task_id}: acknowledged submit lost" for task_id in lost]
    for task_id, (task_type, data, priority) in ledger.submitted.items():
        task = tasks.get(task_id)
        if task is None:
            continue
        if (task["type"], task["data"]) != (task_type, data):
            problems.append(f"{task_id}: type or data differ from the submit")
        expected = ledger.priority.get(task_id, priority)
        if expected is not None and task["priority"] != expected:
            problems.append(f"{task_id}: priority {task['priority']}, acknowledged {expected}")
    for task_id in ledger.cancelled:
        if tasks[task_id]["status"] != "cancelled":
            problems.append(f"{task_id}: acknowledged cancel, now {tasks[task_id]['status']}")
    for task_id, status in ledger.running_cancels.items():
        if tasks[task_id]["status"] != status:
            problems.append(f"{task_id}: cancel answered {status}, now {tasks[task_id]['status']}")
    last_bulk = max(ledger.bulk_sent, default=-1)
    for task_id, acked in ledger.parked_at.items():
        if acked < last_bulk and tasks[task_id]["status"] != "cancelled":
            # Acknowledged before an acknowledged bulk cancel was sent: that cancel covered it.
            problems.append(f"{task_id}: parked before a bulk cancel, now {tasks[task_id]['status']}")
    for old, new in ledger.retries.items():
        if new not in tasks or tasks[old]["retried_as"] != new or tasks[new]["retry_of"] != old:
            problems.append(f"{old}: acknowledged retry as {new} not linked")

    explained = unexplained = 0
    for task_id, n in started.items():
        task = tasks.get(task_id)
        if n < 2 and (task is None or n <= task["attempts"]):
            continue
        history = client.history(task_id)
        interruptions = sum(
            1 for e in history if e["event"] == "requeued" and "stopped" in e.get("reason", "")
        )
        if task is not None and n <= task["attempts"] and interruptions >= n - 1:
            explained += 1
        else:
            unexplained += 1
            problems.append(
                f"{task_id}: ran {n} times, {task['attempts'] if task else '?'} attempts, "
                f"{interruptions} interruptions"
            )
    killed_unreported = [
        t["id"]
        for t in tasks.values()
        if t["status"] == "failed" and "before reporting how this task ended" in (t["error"] or "")
    ]
    # Nothing kills a worker here but a cancel or a kill of the daemon (after which its tasks are
    # requeued): a task failed this way was stopped by a cancel and must have ended cancelled.
    problems += [
        f"{task_id}: failed ('killed before reporting') where a cancel stopped it"
        for task_id in killed_unreported
    ]
    figures = {
        "tasks in the store": len(tasks),
        "command runs recorded": sum(started.values()),
        "lost": len(lost),
        "double runs explained": explained,
        "double runs unexplained": unexplained,
        "failed as 'killed before reporting'": len(killed_unreported),
        "  of which ran to their id line": sum(1 for t in killed_unreported if started[t]),
    }
    return figures, problems


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=180.0, help="how long to load and kill (default 180)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--grace", type=float, default=0.5, help="the daemon's --grace (default 0.5)")
    parser.add_argument("--seed", type=int, default=None, help="for a run that can be replayed in part")
    parser.add_argument("--keep", action="store_true", help="keep the state folder and log afterwards")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="ms-soak-", dir="/tmp"))
    runs = root / "runs"
    d = Daemon(root, args.workers, args.grace)
    ledger = Ledger()
    print(f"soak: seed {seed}, {args.seconds:g} s, {args.workers} workers, folder {root}", flush=True)
    d.start()
    loads = [Load(kind, d, ledger, runs, rng.randrange(1 << 30)) for kind in KINDS]
    for load in loads:
        load.start()
    kills = 0
    end = time.monotonic() + args.seconds
    try:
        while time.monotonic() < end:
            # Mostly a few seconds of load between kills; now and then right after a start.
            time.sleep(rng.uniform(0.1, 0.5) if rng.random() < 0.2 else rng.uniform(1.0, 6.0))
            d.kill9()
            kills += 1
            d.start()
    finally:
        for load in loads:
            load.stopping.set()
        for load in loads:
            load.join(60)
    crashed = [f"{load.name}: {load.crashed!r}" for load in loads if load.crashed is not None]
    with Client(d.socket) as c:
        # The file first: a run it names started before the tasks are read, so its attempt is counted.
        started = collections.Counter(runs.read_text().split()) if runs.exists() else collections.Counter()
        tasks = all_tasks(c)
        figures, problems = check(ledger, tasks, c, started)
        c.cancel_all(running=True)
    code = d.stop()
    integrity = sqlite3.connect(f"file:{d.state_dir / 'tasks.db'}?mode=ro", uri=True)
    try:
        intact = integrity.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        integrity.close()
    log = d.log.read_text(errors="replace")
    print(f"{'kills (-9)':<45} {kills}")
    print(f"{'daemon starts':<45} {d.starts}")
    for what, n in sorted(ledger.counts.items()):
        print(f"{what:<45} {n}")
    for what, n in figures.items():
        print(f"{what:<45} {n}")
    print(f"{'tracebacks in the daemon log':<45} {log.count('Traceback')}")
    print(f"{'store integrity_check':<45} {intact}")
    print(f"{'clean stop exit code':<45} {code}")
    for line in crashed:
        print(f"load thread crashed: {line}")
    for problem in problems[:50]:
        print(f"PROBLEM {problem}")
    if len(problems) > 50:
        print(f"... and {len(problems) - 50} more")
    failed = bool(problems or crashed or intact != "ok")
    if args.keep or failed:
        print(f"kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
