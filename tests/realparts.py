"""Real servers the tests start themselves: a PostgreSQL server and a headless Chromium.

Each is found on this machine (PostgreSQL 15's binaries through `pg_config --bindir`, Debian's
`chromium`); where one is missing the tests that need it skip with the reason, except under
CI=true, where a skip fails (see conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags for a headless Chromium on a machine without network or display: no sandbox (root), no GPU,
# and none of the background connections it would otherwise try at every start.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def postgres_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
    bindir = Path(done.stdout.strip())
    return bindir if (bindir / "postgres").exists() and (bindir / "initdb").exists() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_user(uid: int, gid: int) -> Callable[[], None] | None:
    """Run a child as another user: PostgreSQL refuses to run as root."""
    if os.getuid() != 0:
        return None

    def demote() -> None:
        os.setgid(gid)
        os.setuid(uid)

    return demote


class PostgresServer:
    """A throwaway PostgreSQL cluster in a temporary folder, on a free loopback port."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="ms-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user = "postgres"
        if os.getuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self._ids = (nobody.pw_uid, nobody.pw_gid)
            os.chown(self.root, *self._ids)
        else:
            self._ids = (os.getuid(), os.getgid())
        self._proc: subprocess.Popen[bytes] | None = None

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            argv, preexec_fn=_as_user(*self._ids), capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr or done.stdout}")

    def start(self) -> PostgresServer:
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user,
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        return self.resume()

    def resume(self) -> PostgresServer:
        """Start the server (again), on its data and port."""
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
            "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200",
            "start",
        )  # fmt: skip
        return self

    def halt(self) -> None:
        """Stop the server at once, as a crash or a cut network would for its clients; `resume` starts it."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    bindir = postgres_bindir()
    if bindir is None:
        raise LookupError("PostgreSQL's server binaries are not installed (pg_config --bindir)")
    server = PostgresServer(bindir).start()
    try:
        yield server
    finally:
        server.stop()
