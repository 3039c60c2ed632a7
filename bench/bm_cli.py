"""1. CLI: msearchctl against a minimal argparse+msgpack client doing the same RPC, and `python -c pass`."""

from __future__ import annotations

import importlib.util
import random
import re
import subprocess
from collections import defaultdict

from benchlib import (
    BENCH,
    MSEARCHCTL,
    PYTHON,
    Context,
    Gate,
    Row,
    median,
    ms,
    running_daemon,
    temp_root,
    timed,
)

NAME = "cli"


def _run(argv: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{argv} exited {done.returncode}: {done.stderr.strip()}")


def _compile_packages(env: dict[str, str]) -> None:
    for name in ("msearchd", "msearchctl"):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations is not None, name
        _run([PYTHON, "-m", "compileall", "-q", *spec.submodule_search_locations], env)


def import_breakdown(env: dict[str, str], argv: list[str], top: int = 10) -> tuple[float, list[str]]:
    """(total import ms, lines) from `python -X importtime` running a real msearchctl command."""
    done = subprocess.run(
        [PYTHON, "-X", "importtime", "-m", "msearchctl", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    entries: list[tuple[int, int, str, int]] = []  # self us, cumulative us, name, depth
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            entries.append((int(m[1]), int(m[2]), m[4], len(m[3]) // 2))
    total = sum(e[0] for e in entries) / 1000
    by_package: dict[str, int] = defaultdict(int)
    for own, _, name, _ in entries:
        by_package[name.split(".")[0]] += own
    packages = sorted(by_package.items(), key=lambda kv: -kv[1])[:top]
    # What msearchctl.app itself pulls in: its direct imports, by cumulative time.
    direct: list[tuple[int, str]] = []
    for i, (_, _, name, depth) in enumerate(entries):
        if name == "msearchctl.app":
            j = i - 1  # importtime prints children before their parent
            while j >= 0 and entries[j][3] > depth:
                if entries[j][3] == depth + 1:
                    direct.append((entries[j][1], entries[j][2]))
                j -= 1
            break
    direct.sort(reverse=True)
    lines = [f"import time of `msearchctl {' '.join(argv)}`: {total:.1f} ms in {len(entries)} modules"]
    lines.append(f"  top {top} costs by top-level package (own time of all its modules):")
    lines += [f"    {own / 1000:7.1f} ms  {name}" for name, own in packages]
    lines.append(
        f"  direct imports of msearchctl.app by cumulative time (top {top}; the command's own module, "
        "imported when it runs, is not listed by -X importtime):"
    )
    lines += [f"    {cum / 1000:7.1f} ms  {name}" for cum, name in direct[:top]]
    return total, lines


def run(ctx: Context) -> None:
    rounds = 15 if ctx.quick else 60
    with temp_root() as root, running_daemon(root, workers=1) as d:
        gate = Gate(root)
        env = d.env
        with d.client() as c:
            c.submit("gate", gate.data(), priority=0)
            gate.wait_holding(1)
            ids = c.submit_many([{"type": "noop"} for _ in range(4 * rounds + 10)])["task_ids"]
        nums = [int(i.removeprefix("task_")) for i in ids]
        minimal = [PYTHON, str(BENCH / "minimal_client.py")]
        commands: dict[str, list[list[str]]] = defaultdict(list)
        for r in range(rounds):
            a, b, p = nums[2 * r], nums[2 * r + 1], nums[2 * rounds + r]
            commands["ctl cancel"].append([MSEARCHCTL, "tasks", "cancel", str(a)])
            commands["min cancel"].append([*minimal, "cancel", str(b)])
            commands["ctl priority"].append([MSEARCHCTL, "tasks", "priority", str(p), str(r % 12)])
            commands["min priority"].append([*minimal, "priority", str(p), str((r + 1) % 12)])
            commands["python -c pass"].append([PYTHON, "-c", "pass"])
        # Warm the page cache and the .pyc files once; not counted. The .pyc files are written as an
        # install writes them: with PYTHONDONTWRITEBYTECODE set, running a command would leave none, and
        # every timed run would compile msearchd and msearchctl from source.
        _compile_packages(env)
        _run([MSEARCHCTL, "--help"], env)
        _run([PYTHON, str(BENCH / "minimal_client.py"), "--help"], env)
        times: dict[str, list[float]] = defaultdict(list)
        rng = random.Random(1)
        for r in range(rounds):
            order = list(commands)
            rng.shuffle(order)  # interleaved, in a different order each round: noise hits all alike
            for name in order:
                times[name].append(ms(timed(lambda a=commands[name][r]: _run(a, env))))
        med = {name: median(v) for name, v in times.items()}
        for op in ("cancel", "priority"):
            ctx.add(
                Row(
                    NAME,
                    f"`msearchctl tasks {op}` median wall",
                    med[f"ctl {op}"],
                    med[f"min {op}"],
                    unit="ms",
                    peer_name="minimal client",
                    target="ratio:<=2",
                )
            )
        ctx.add(Row(NAME, "`python -c pass` median wall", med["python -c pass"], unit="ms"))
        ctx.add(
            Row(
                NAME,
                "minimal client over `python -c pass`",
                med["min cancel"],
                med["python -c pass"],
                unit="ms",
                peer_name="python -c pass",
            )
        )
        total, lines = import_breakdown(env, ["tasks", "priority", str(nums[-1]), "4"])
        total, lines = import_breakdown(env, ["tasks", "priority", str(nums[-1]), "5"])
        ctx.add(Row(NAME, "msearchctl import time (-X importtime, sum)", total, unit="ms"))
        for line in lines:
            ctx.detail(line)
        min_total, _ = _min_import(env)
        ctx.detail(f"import time of minimal_client (argparse, socket, msgpack): {min_total:.1f} ms")


def _min_import(env: dict[str, str]) -> tuple[float, None]:
    done = subprocess.run(
        [PYTHON, "-X", "importtime", "-c", "import argparse, socket, struct, msgpack"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    total = 0
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|", line)
        if m:
            total += int(m[1])
    return total / 1000, None


if __name__ == "__main__":
    import sys

    c = Context(quick="--quick" in sys.argv)
    run(c)
