"""8. Several daemons on one PostgreSQL queue.

- dispatch: N no-op tasks submitted through the first of 1, 2 or 3 daemons (2 workers each) on one
  database, timed from the first submit to the last completion; against Procrastinate on a database of
  the same server with as many worker processes of concurrency 2, its jobs deferred in batches of the
  same size and timed the same way (completion seen in its jobs table). With each count, the CPU time
  per task of the daemons, their workers and the PostgreSQL server's processes: what adding a daemon
  costs, apart from the machine's cores being shared.
- control: `get`, `set_priority` and `cancel` of a pending task on one connection, a daemon on
  PostgreSQL against one on SQLite, calls interleaved.
- cross-host cancel: request -> answer of `cancel --running` through daemon A of a command task running
  on daemon B, against the same cancel through B.
- takeover: kill -9 of a daemon running tasks -> those tasks seen pending by the other daemon.

The PostgreSQL server is started by the bench (tests/realparts.py: initdb and pg_ctl in a temporary
folder, as nobody when run as root, fsync off).
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchlib import BENCH, ROOT, Context, Daemon, Gate, Row, median, ms, percentile, skip, temp_root

sys.path.insert(0, str(ROOT / "tests"))

NAME = "shared"
WORKERS = 2


@contextlib.contextmanager
def daemons(
    root: Path, url: str | None, n: int, workers: int = WORKERS, grace: float = 1.0
) -> Iterator[list[Daemon]]:
    made: list[Daemon] = []
    try:
        for i in range(n):
            (root / f"d{i}").mkdir(parents=True)
            made.append(Daemon(root=root / f"d{i}", workers=workers, grace=grace, store=url).start())
        yield made
    finally:
        for d in made:
            d.stop()


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User and system CPU seconds of each process still there, by pid."""
    import psutil

    spent = {}
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = psutil.Process(pid).cpu_times()
            spent[pid] = times.user + times.system
    return spent


def processes(ds: list[Daemon], server: Any) -> dict[str, list[int]]:
    """The processes whose CPU a dispatch spends: the daemons, their workers, the PostgreSQL server's."""
    import psutil

    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    workers = [c.pid for d in ds for c in psutil.Process(d.pid).children(recursive=True)]
    backends = [postmaster, *(c.pid for c in psutil.Process(postmaster).children())]
    return {"daemons": [d.pid for d in ds], "workers": workers, "postgres": backends}


def msearchd_dispatch(
    root: Path, url: str, n_daemons: int, n: int, server: Any
) -> tuple[float, dict[str, float]]:
    """Seconds to dispatch n no-op tasks, and the CPU seconds each kind of process spent per task."""
    with daemons(root, url, n_daemons) as ds:
        for d in ds:
            d.warm_up(4)
        with ds[0].client() as c:
            kinds = processes(ds, server)
            before = {kind: cpu_seconds(pids) for kind, pids in kinds.items()}
            t0 = time.perf_counter()
            ids: list[str] = []
            for start in range(0, n, 1000):
                ids += c.submit_many([{"type": "noop"}] * min(1000, n - start))["task_ids"]
            result = c.wait(ids, timeout=600)
            elapsed = time.perf_counter() - t0
            after = {kind: cpu_seconds(pids) for kind, pids in kinds.items()}
        if result["timed_out"] or any(t["status"] != "completed" for t in result["tasks"]):
            raise RuntimeError("msearchd did not complete every task")
    per_task = {
        kind: sum(spent - before[kind].get(pid, 0.0) for pid, spent in after[kind].items()) / n
        for kind in kinds
    }
    return elapsed, per_task


def procrastinate_dispatch(url: str, n_workers: int, n: int) -> float:
    import psycopg
    from procrastinate_app import make_app

    env = {**os.environ, "BENCH_PG_URL": url, "PYTHONPATH": str(BENCH)}
    papp = make_app(url)
    with papp.open():
        papp.schema_manager.apply_schema()
    procs = [
        subprocess.Popen(
            [sys.executable, str(BENCH / "procrastinate_app.py"), str(WORKERS)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n_workers)
    ]
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            deadline = time.monotonic() + 60
            while conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()[0] < n_workers:
                if time.monotonic() > deadline:
                    raise RuntimeError("procrastinate workers did not start")
                time.sleep(0.05)
            with papp.open():
                papp.tasks["noop"].batch_defer(*({} for _ in range(4)))  # warm up, as msearchd's workers
                while (
                    conn.execute(
                        "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
                    ).fetchone()[0]
                    < 4
                ):
                    time.sleep(0.01)
                t0 = time.perf_counter()
                for start in range(0, n, 1000):
                    papp.tasks["noop"].batch_defer(*({} for _ in range(min(1000, n - start))))
                while (
                    conn.execute(
                        "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
                    ).fetchone()[0]
                    < n + 4
                ):
                    time.sleep(0.005)
                return time.perf_counter() - t0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def control_calls(root: Path, url: str, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per call, by store and call, interleaved in shuffled order."""
    times: dict[str, dict[str, list[float]]] = {
        s: {"get": [], "set_priority": [], "cancel": []} for s in ("pg", "sqlite")
    }
    with daemons(root / "pg", url, 1, workers=1) as (pg,), daemons(root / "sq", None, 1, workers=1) as (sq,):
        gates = []
        clients = {}
        pending: dict[str, list[str]] = {}
        for name, d in (("pg", pg), ("sqlite", sq)):
            gate = Gate(d.root, "g")
            gates.append(gate)
            c = d.client().__enter__()
            clients[name] = c
            c.submit("gate", gate.data(), priority=0)
            gate.wait_holding(1)
            pending[name] = c.submit_many([{"type": "noop", "priority": 9}] * (3 * rounds))["task_ids"]
        plan = [(s, call) for s in times for call in ("get", "set_priority", "cancel") for _ in range(rounds)]
        random.Random(8).shuffle(plan)
        used = {s: {"get": 0, "set_priority": 0, "cancel": 0} for s in times}
        for store, call in plan:
            c = clients[store]
            offset = {"get": 0, "set_priority": rounds, "cancel": 2 * rounds}[call]  # each call its tasks
            task = pending[store][offset + used[store][call]]
            used[store][call] += 1
            t0 = time.perf_counter()
            if call == "get":
                c.get(task)
            elif call == "set_priority":
                c.set_priority(task, 5)
            else:
                c.cancel(task)
            times[store][call].append(time.perf_counter() - t0)
        for gate in gates:
            gate.open()
        for c in clients.values():
            c.__exit__(None, None, None)
    return times


def wait_running_command(c: Any, task_id: str) -> None:
    deadline = time.monotonic() + 30
    while not (c.get(task_id)["current_operation"] or "").startswith("running"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{task_id} did not start")
        time.sleep(0.01)


def cancel_latency(root: Path, url: str, rounds: int) -> tuple[list[float], list[float]]:
    """Seconds from request to answer of cancel --running: through the other daemon, through its own."""
    remote: list[float] = []
    local: list[float] = []
    with daemons(root, url, 1, workers=1) as (a,):
        gate = Gate(a.root, "g")
        with a.client() as ca:
            ca.submit("gate", gate.data(), priority=0)
            gate.wait_holding(1)
            with daemons(root / "b", url, 1, workers=1, grace=5.0) as (b,), b.client() as cb:
                for i in range(2 * rounds):
                    through_a = i % 2 == 0
                    task = ca.submit("command", {"argv": ["sleep", "1000"]})["id"]
                    wait_running_command(ca, task)
                    t0 = time.perf_counter()
                    answer = (ca if through_a else cb).cancel(task, running=True)["task"]
                    (remote if through_a else local).append(time.perf_counter() - t0)
                    if answer["stop_reason"] != "sigterm":
                        raise RuntimeError(f"unexpected stop: {answer}")
        gate.open()
    return remote, local


def takeover(root: Path, url: str) -> float:
    """Seconds from kill -9 of a daemon running two tasks to both seen pending through the other."""
    with daemons(root, url, 1, workers=1) as (a,):
        gate = Gate(a.root, "g")
        with a.client() as ca:
            ca.submit("gate", gate.data(), priority=0)
            gate.wait_holding(1)
            (root / "b").mkdir()
            b = Daemon(root=root / "b", workers=2, store=url).start()
            try:
                held = Gate(b.root, "h")
                ids = [ca.submit("gate", held.data(), priority=0)["id"] for _ in range(2)]
                held.wait_holding(2)
                t0 = time.perf_counter()
                b.proc.kill()
                b.proc.wait()
                result = ca.wait(ids, statuses=["pending"], timeout=60)
                elapsed = time.perf_counter() - t0
                if result["timed_out"]:
                    raise RuntimeError("the killed daemon's tasks did not come back")
                ca.cancel_all()
            finally:
                b.stop()
        gate.open()
    return elapsed


def run(ctx: Context) -> None:
    from realparts import postgres_server

    try:
        import procrastinate  # noqa: F401
    except ImportError:
        procrastinate_ok = False
    else:
        procrastinate_ok = True
    n = 1000 if ctx.quick else 3000
    with postgres_server() as server, temp_root() as root:
        made = iter(range(1000))

        def database() -> str:
            return server.create_database(f"b{next(made)}")

        for k in (1, 2, 3):
            elapsed, cpu = msearchd_dispatch(root / f"m{k}", database(), k, n, server)
            ours = n / elapsed
            for kind, spent in cpu.items():
                ctx.add(Row(NAME, f"CPU per task, {k} daemon(s): {kind}", ms(spent), None, "ms"))
            if procrastinate_ok:
                peer = n / procrastinate_dispatch(database(), k, n)
                ctx.add(
                    Row(
                        NAME,
                        f"no-op dispatch, {k} daemon(s) x 2 workers",
                        ours,
                        peer,
                        "tasks/s",
                        "Procrastinate",
                        "ratio:>=2",
                    )
                )
            else:
                ctx.add(Row(NAME, f"no-op dispatch, {k} daemon(s) x 2 workers", ours, None, "tasks/s"))
                skip(ctx, NAME, "Procrastinate", "procrastinate is not installed (bench/requirements.txt)")
        rounds = 100 if ctx.quick else 400
        times = control_calls(root / "ctl", database(), rounds)
        for call in ("get", "set_priority", "cancel"):
            pg, sq = times["pg"][call], times["sqlite"][call]
            ctx.add(
                Row(
                    NAME,
                    f"{call} median, PostgreSQL vs SQLite",
                    ms(median(pg)),
                    ms(median(sq)),
                    "ms",
                    "SQLite",
                )
            )
            ctx.add(
                Row(
                    NAME,
                    f"{call} p99, PostgreSQL vs SQLite",
                    ms(percentile(pg, 99)),
                    ms(percentile(sq, 99)),
                    "ms",
                    "SQLite",
                )
            )
        remote, local = cancel_latency(root / "cx", database(), 3 if ctx.quick else 8)
        ctx.add(
            Row(
                NAME,
                "cancel --running median: through another daemon vs its own",
                ms(median(remote)),
                ms(median(local)),
                "ms",
                "own daemon",
            )
        )
        ctx.add(Row(NAME, "cancel --running max through another daemon", ms(max(remote)), None, "ms"))
        took = [takeover(root / f"t{i}", database()) for i in range(1 if ctx.quick else 2)]
        ctx.add(
            Row(
                NAME,
                "takeover: kill -9 -> its tasks pending elsewhere (max)",
                max(took),
                None,
                "s",
                target="abs:<=13",
            )
        )
