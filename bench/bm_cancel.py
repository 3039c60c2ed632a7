"""7. Cancel latency of a running `command` task: one that ignores SIGTERM, and one that exits on it."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from benchlib import Context, Row, median, ms, running_daemon, temp_root

NAME = "cancel"
GRACE = 0.5
CASES: dict[str, list[str]] = {
    "ignores SIGTERM (sh -c \"trap '' TERM; sleep 1000\")": ["sh", "-c", "trap '' TERM; sleep 1000"],
    "exits on SIGTERM (sleep 1000)": ["sleep", "1000"],
}
SIGTERM_BIT = 1 << (15 - 1)


def _ignores_term(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & SIGTERM_BIT)
    return False


def _command_pid(c: Any, task_id: str, argv: list[str], timeout: float = 30.0) -> int:
    """The pid of the command once it runs as asked (exec done; SIGTERM ignored where it should be)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        op = c.get(task_id).get("current_operation") or ""
        m = re.search(r"\(pid (\d+)\)", op)
        if m:
            pid = int(m[1])
            try:
                proc = psutil.Process(pid)
                # For sh: wait until it ignores SIGTERM and has started its sleep.
                is_sh = argv[0] == "sh"
                if proc.cmdline()[:1] == argv[:1] and (not is_sh or (_ignores_term(pid) and proc.children())):
                    return pid
            except (psutil.Error, OSError, IndexError):
                pass
        time.sleep(0.002)
    raise RuntimeError(f"{task_id} did not start its command")


def run(ctx: Context) -> None:
    reps = 4 if ctx.quick else 12
    results: dict[str, list[float]] = {name: [] for name in CASES}
    leftovers = 0
    with temp_root() as root, running_daemon(root, workers=1, grace=GRACE) as d, d.client() as c:
        d.warm_up(2)
        for _ in range(reps):
            for name, argv in CASES.items():
                task = c.submit("command", {"argv": argv}, priority=0)
                c.wait([task["id"]], statuses=["running"], timeout=30)
                pid = _command_pid(c, task["id"], argv)
                family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
                t0 = time.perf_counter()
                answer = c.cancel(task["id"], running=True)
                results[name].append(ms(time.perf_counter() - t0))
                if answer["task"]["status"] != "cancelled":
                    raise RuntimeError(f"cancel left {answer['task']['status']}")
                for p in family:
                    try:
                        if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                            leftovers += 1
                    except psutil.NoSuchProcess:
                        pass
    ctx.detail(f"processes of cancelled tasks still alive after the cancel returned: {leftovers}")
    first, second = CASES
    for name, bound in ((first, ms(GRACE) + 100), (second, 50.0)):
        ctx.add(
            Row(
                NAME,
                f"{name}: cancel(running=True) median",
                median(results[name]),
                unit="ms",
                target=f"abs:<={bound:g}",
                note=f"grace {GRACE} s",
            )
        )
        ctx.add(Row(NAME, f"{name}: max of {reps} (info)", max(results[name]), unit="ms"))


if __name__ == "__main__":
    run(Context(quick="--quick" in sys.argv))
