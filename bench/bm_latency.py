"""6. Latency on an idle daemon: submit -> completed of a no-op task (wait RPC) vs `tsp -f true`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

from benchlib import Context, Row, clean_env, median, ms, percentile, running_daemon, skip, temp_root

NAME = "latency"


def run(ctx: Context) -> None:
    n = 200 if ctx.quick else 1000
    tsp = shutil.which("tsp")
    with temp_root() as root, running_daemon(root, workers=2) as d, d.client() as c:
        d.warm_up(4)
        env = clean_env(TS_SOCKET=str(root / "tsp.sock"), TMPDIR=str(root))
        if tsp:
            subprocess.run([tsp, "-S", "2"], env=env, check=True, capture_output=True)
        ours: list[float] = []
        theirs: list[float] = []
        try:
            for i in range(n):
                t0 = time.perf_counter()
                task = c.submit("noop")
                result = c.wait([task["id"]], timeout=30)
                ours.append(ms(time.perf_counter() - t0))
                if result["tasks"][0]["status"] != "completed":
                    raise RuntimeError(f"no-op task ended {result['tasks'][0]['status']}")
                if tsp and i % 2 == 0:  # half as many: each spawns two processes
                    t0 = time.perf_counter()
                    subprocess.run([tsp, "-f", "true"], env=env, check=True, capture_output=True, timeout=30)
                    theirs.append(ms(time.perf_counter() - t0))
        finally:
            if tsp:
                subprocess.run([tsp, "-K"], env=env, capture_output=True, timeout=30)
    if theirs:
        ctx.add(
            Row(
                NAME,
                "submit -> completed (no-op, wait RPC) median",
                median(ours),
                median(theirs),
                "ms",
                "`tsp -f true`",
                "ratio:<=0.5",
            )
        )
        ctx.add(
            Row(
                NAME,
                "submit -> completed p99 (info)",
                percentile(ours, 99),
                percentile(theirs, 99),
                "ms",
                "tsp",
            )
        )
    else:
        ctx.add(Row(NAME, "submit -> completed (no-op, wait RPC) median", median(ours), unit="ms"))
        skip(ctx, NAME, "`tsp -f true`", "task-spooler is not installed (apt-get install task-spooler)")


if __name__ == "__main__":
    run(Context(quick="--quick" in sys.argv))
