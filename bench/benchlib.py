"""Shared pieces of the benchmarks: a daemon in a temporary folder, timing statistics, result rows."""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable
BIN = Path(sys.executable).parent
MSEARCHD = str(BIN / "msearchd")
MSEARCHCTL = str(BIN / "msearchctl")
START_TIMEOUT = 60.0

HANDLERS_TOML = """
[handlers]
noop = "handlers:noop"
gate = "handlers:gate"
"""


# --- results --------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the final table: our figure, the peer's, and how they compare with the target."""

    bench: str
    metric: str
    ours: float | None
    peer: float | None = None
    unit: str = ""
    peer_name: str = ""
    # The target: "ratio<=3" (ours/peer), "ratio>=2.5", "abs<=1" (ours alone), or "" for information.
    target: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.peer is None or self.peer == 0:
            return None
        return self.ours / self.peer

    @property
    def verdict(self) -> str:
        if not self.target:
            return ""
        if self.ours is None:
            return "SKIP"
        kind, _, rest = self.target.partition(":")
        op, bound = rest[:2], float(rest[2:])
        value = self.ratio if kind == "ratio" else self.ours
        if value is None:
            return "SKIP"
        ok = value <= bound if op == "<=" else value >= bound
        return "PASS" if ok else "FAIL"

    def as_dict(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "metric": self.metric,
            "ours": self.ours,
            "peer": self.peer,
            "peer_name": self.peer_name,
            "unit": self.unit,
            "ratio": self.ratio,
            "target": self.target,
            "verdict": self.verdict,
            "note": self.note,
        }


@dataclass
class Context:
    """What each benchmark gets: the mode, and where to put its rows and its detail lines."""

    quick: bool
    # Pending tasks in the scale benchmark; None: 1,000,000 (100,000 with --quick).
    scale: int | None = None
    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        ratio = f"  ratio {row.ratio:.2f}" if row.ratio is not None else ""
        peer = f"  {row.peer_name or 'peer'} {fmt(row.peer)}" if row.peer is not None else ""
        print(
            f"  [{row.bench}] {row.metric}: {fmt(row.ours)} {row.unit}{peer}{ratio} {row.verdict}".rstrip(),
            flush=True,
        )

    def detail(self, line: str) -> None:
        self.details.append(line)
        print("  " + line, flush=True)


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


# --- statistics -----------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile, p in 0..100."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(seconds: float) -> float:
    return seconds * 1000.0


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --- folders and processes ------------------------------------------------------------------------------


def placements() -> dict[str, tuple[set[int], set[int]]]:
    """The placements `placed` goes through, by name: (the client's CPUs, the servers')."""
    out = {"client and server on one CPU": ({0}, {0})}
    if (os.cpu_count() or 1) > 1:
        out["on two CPUs"] = ({0}, {1})
    return out


def placed(servers: Sequence[int]) -> Iterator[str]:
    """Pin this process and the `servers` (pids) in turn to each placement, yielding its name; unpin
    them all at the end.

    The kernel keeps a process on the CPU it last ran on, so unpinned, a daemon and the echo server
    it is compared with can end up placed differently, and a round trip between two CPUs costs this
    VM 50-100 us more than one within a CPU. The servers are pinned alike: once on the client's CPU
    (*client and server on one CPU*), once on the other (*on two CPUs*)."""
    try:
        for name, (client_cpus, server_cpus) in placements().items():
            for pid in servers:
                os.sched_setaffinity(pid, server_cpus)
            os.sched_setaffinity(0, client_cpus)
            yield name
    finally:
        every = set(range(os.cpu_count() or 1))
        for pid in (0, *servers):
            os.sched_setaffinity(pid, every)


@contextmanager
def temp_root(prefix: str = "msb-") -> Iterator[Path]:
    """A short folder under /tmp (a Unix socket path is limited to 107 bytes), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSEARCH_")}
    env.update(extra)
    return env


@dataclass
class Daemon:
    """A msearchd of one benchmark, with its own socket, state folder and config."""

    root: Path
    workers: int = 2
    grace: float = 1.0
    config_extra: str = ""
    # Run the daemon under this prefix, e.g. [python, "-m", "cProfile", "-o", "out.prof"].
    prefix: tuple[str, ...] = ()
    store: str | None = None  # --store: a PostgreSQL database shared with other daemons
    # A checkout whose msearchd the daemon and its workers import, instead of the installed one.
    source: Path | None = None
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)

    @property
    def socket(self) -> Path:
        return self.root / "run" / "d.sock"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "tasks.db"

    @property
    def config(self) -> Path:
        return self.root / "msearchd.toml"

    @property
    def env(self) -> dict[str, str]:
        return clean_env(
            MSEARCH_SOCKET=str(self.socket),
            MSEARCH_STATE_DIR=str(self.state_dir),
            # An inherited PYTHONPATH comes first: `PYTHONPATH=../other bench/run.py` times that tree.
            PYTHONPATH=os.pathsep.join(
                filter(None, (self.source and str(self.source), os.environ.get("PYTHONPATH"), str(BENCH)))
            ),
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Daemon:
        self.config.write_text(HANDLERS_TOML + self.config_extra)
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [
                *self.prefix,
                MSEARCHD,
                "--workers",
                str(self.workers),
                "--grace",
                str(self.grace),
                "--config",
                str(self.config),
                "--log-level",
                "warning",
                *(("--store", self.store) if self.store else ()),
            ],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # "listening on" is logged at info level; at warning level we poll the socket instead.
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"msearchd exited with {self.proc.returncode}:\n{self.log}")
            if self.socket.exists():
                try:
                    from msearchd.client import Client

                    # Its hello answered: it serves requests. (`status` would count the pending
                    # tasks: about 100 ms of the start-up time over a million.)
                    with Client(self.socket):
                        return self
                except Exception:
                    pass
            time.sleep(0.02)
        raise RuntimeError("msearchd did not start:\n" + self.log)

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def client(self) -> Any:
        from msearchd.client import Client

        return Client(self.socket)

    def warm_up(self, n: int = 4) -> None:
        """Run n no-op tasks to the end, so that the workers have started and imported their handlers."""
        with self.client() as c:
            ids = c.submit_many([{"type": "noop"} for _ in range(n)])["task_ids"]
            c.wait(ids, timeout=60)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


@contextmanager
def running_daemon(root: Path, **kwargs: Any) -> Iterator[Daemon]:
    d = Daemon(root=root, **kwargs)
    try:
        yield d.start()
    finally:
        d.stop()


class Gate:
    """Tasks that hold workers busy, without using any CPU, until the bench opens the gate.

    A gate task connects to this Unix socket and blocks reading from it; accepting its connection
    tells the bench it holds a worker, and closing the connections releases them all at once.
    """

    def __init__(self, root: Path, name: str = "gate") -> None:
        self.path = root / f"{name}.sock"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(64)
        self._held: list[socket.socket] = []

    def data(self) -> dict[str, str]:
        return {"socket": str(self.path)}

    def wait_holding(self, n: int, timeout: float = 30.0) -> None:
        """Wait until n gate tasks are running (connected)."""
        deadline = time.monotonic() + timeout
        while len(self._held) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"gate tasks did not start ({len(self._held)}/{n})")
            self._listener.settimeout(left)
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._held.append(conn)

    def open(self) -> None:
        for conn in self._held:
            conn.close()
        self._held.clear()
        self._listener.close()


def skip(ctx: Context, bench: str, metric: str, why: str, target: str = "", unit: str = "") -> None:
    ctx.add(Row(bench, metric, None, None, unit=unit, target=target, note=why))
    ctx.detail(f"SKIP {bench} {metric}: {why}")
