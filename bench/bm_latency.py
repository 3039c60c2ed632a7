"""6. Latency on an idle daemon: submit -> completed of a task, as a waiting client sees it.

In process, on one open connection, against its floor: three bare round trips (client -> daemon,
daemon -> worker, the answer) plus two one-row commits (the task written, then marked completed) in
process. The target's side is one request, a `submit` with `wait=true`, answered once the task has
ended; a `submit`, then a `wait` on its id (two requests, a round trip more) is shown beside it. As
whole processes, what a shell user lives with: `msearchctl tasks add command --wait -- true` (one
request too) against `tsp -f true` (spawn of tsp's C client, the job run, exit). All sides alternate,
one sample each in turn, in a shuffled order.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

from benchlib import (
    MSEARCHCTL,
    PYTHON,
    Context,
    Row,
    clean_env,
    median,
    ms,
    percentile,
    running_daemon,
    skip,
    temp_root,
)
from bm_rpc import BareClient, start_echo
from floor import FloorStore

NAME = "latency"


def run(ctx: Context) -> None:
    n = 200 if ctx.quick else 1000
    processes = 40 if ctx.quick else 150  # samples of each whole-process side
    tsp = shutil.which("tsp")
    with temp_root() as root, running_daemon(root, workers=2) as d, d.client() as c:
        d.warm_up(4)
        env = clean_env(TS_SOCKET=str(root / "tsp.sock"), TMPDIR=str(root))
        ctl_env = d.env
        if tsp:
            subprocess.run([tsp, "-S", "2"], env=env, check=True, capture_output=True)
        echo, echo_path = start_echo(root)
        bare = BareClient(echo_path)
        floor = FloorStore(root / "floor.db")
        params = {"type": "noop", "data": None, "priority": None, "depends_on": []}

        def in_process() -> None:
            task = c.submit("noop", wait=True, timeout=30)
            if task["status"] != "completed":
                raise RuntimeError(f"no-op task ended {task['status']}")

        def then_wait() -> None:
            task = c.submit("noop")
            result = c.wait([task["id"]], timeout=30)
            if result["tasks"][0]["status"] != "completed":
                raise RuntimeError(f"no-op task ended {result['tasks'][0]['status']}")

        def floor_sample() -> None:
            bare.call("submit", params)
            task_id = floor.submit()
            bare.call("run", {"task_id": task_id})
            floor.complete(task_id)
            bare.call("wait", {"task_ids": [task_id]})

        def process(argv: list[str], environ: dict[str, str]) -> Callable[[], None]:
            def spawn() -> None:
                subprocess.run(argv, env=environ, check=True, capture_output=True, timeout=30)

            return spawn

        sides: dict[str, Callable[[], None]] = {
            "ours": in_process,
            "submit, then wait": then_wait,
            "floor": floor_sample,
        }
        wanted = {"ours": n, "submit, then wait": n, "floor": n}
        cli = [MSEARCHCTL, "tasks", "add", "command", "--wait", "--", "true"]
        sides["msearchctl"] = process(cli, ctl_env)
        sides["python -c pass"] = process([PYTHON, "-c", "pass"], ctl_env)  # any Python CLI pays it
        wanted["msearchctl"] = wanted["python -c pass"] = processes
        if tsp:
            sides["tsp"] = process([tsp, "-f", "true"], env)
            wanted["tsp"] = processes
        times: dict[str, list[float]] = {side: [] for side in sides}
        for _ in range(3):  # warm-up, not counted: page cache, .pyc files, the workers' handlers
            for fn in sides.values():
                fn()
        rng = random.Random(6)
        order = list(sides)
        try:
            for i in range(n):
                rng.shuffle(order)
                for side in order:
                    if len(times[side]) < wanted[side] * (i + 1) / n:
                        t0 = time.perf_counter()
                        sides[side]()
                        times[side].append(ms(time.perf_counter() - t0))
        finally:
            bare.close()
            floor.close()
            echo.terminate()
            echo.wait(timeout=10)
            if tsp:
                subprocess.run([tsp, "-K"], env=env, capture_output=True, timeout=30)
    ours = times["ours"]
    ctx.add(
        Row(
            NAME,
            "submit -> completed (no-op, a submit with wait=true) median",
            median(ours),
            median(times["floor"]),
            "ms",
            "floor: 3 bare round trips + 2 one-row commits",
            "ratio:<=2",
        )
    )
    ctx.add(
        Row(
            NAME,
            "submit -> completed (no-op, a submit, then a wait RPC) median (info)",
            median(times["submit, then wait"]),
            median(times["floor"]),
            "ms",
            "floor: 3 bare round trips + 2 one-row commits",
        )
    )
    ctx.add(
        Row(
            NAME,
            "submit -> completed p99 (info)",
            percentile(ours, 99),
            percentile(times["floor"], 99),
            "ms",
            "floor",
        )
    )
    if tsp:
        ctx.add(
            Row(
                NAME,
                "submit -> completed (no-op, a submit with wait=true) median, vs a tsp process",
                median(ours),
                median(times["tsp"]),
                "ms",
                "`tsp -f true`",
                "ratio:<=0.5",
            )
        )
        ctx.add(
            Row(
                NAME,
                "`msearchctl tasks add command --wait -- true`, whole process, median (info)",
                median(times["msearchctl"]),
                median(times["tsp"]),
                "ms",
                "`tsp -f true`, whole process",
            )
        )
        ctx.add(
            Row(
                NAME,
                "`python -c pass`, whole process, median (info)",
                median(times["python -c pass"]),
                median(times["tsp"]),
                "ms",
                "`tsp -f true`, whole process",
            )
        )
    else:
        skip(ctx, NAME, "`tsp -f true`", "task-spooler is not installed (apt-get install task-spooler)")
        ctx.add(
            Row(
                NAME,
                "`msearchctl tasks add command --wait -- true` median (info)",
                median(times["msearchctl"]),
                unit="ms",
            )
        )
    ctx.detail(
        "latency samples: "
        + ", ".join(f"{side} {len(v)} (median {median(v):.3f} ms)" for side, v in times.items())
    )


if __name__ == "__main__":
    run(Context(quick="--quick" in sys.argv))
