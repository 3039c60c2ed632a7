"""The daemon's side of the REST shim: where it listens, whether it may, and the child that serves it.

Nothing here imports FastAPI or uvicorn: the shim (`msearchd.http`) runs in a child process of its own,
so that a crash, a hang or a slow import of the web stack can never reach the queue. The daemon binds
the listening socket itself and hands it to the child; a restarted child serves the same socket, and
connections made while it restarts wait in the backlog instead of being refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from msearchd.spawn import child_environ, child_folder, python_argv
from msearchd.workers import Reaper, describe_exit

log = logging.getLogger("msearchd.http")

TOKEN_ENV = "MSEARCH_HTTP_TOKEN"
DEFAULT_HOST = "127.0.0.1"
BACKLOG = 512
# Exit code of the shim for a usage error: starting it again would not help.
EXIT_USAGE = 2


class UsageError(Exception):
    """A reason not to serve HTTP, said in one sentence."""


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{url_host(self.host)}:{self.port}"


def url_host(host: str) -> str:
    """A host as it appears in a URL: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host else host


def parse_listen(value: str) -> ListenAddress:
    """Read `[HOST:]PORT` (an IPv6 host in brackets); the host defaults to loopback."""
    text = value.strip()
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or not rest.startswith(":"):
            raise UsageError(f"invalid HTTP address {value!r}: write an IPv6 host as [ADDRESS]:PORT")
        port_text = rest[1:]
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
        if ":" in host:
            raise UsageError(f"invalid HTTP address {value!r}: write an IPv6 host as [ADDRESS]:PORT")
    else:
        host, port_text = DEFAULT_HOST, text
    if not host:
        raise UsageError(f"invalid HTTP address {value!r}: the host before ':' is empty")
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"invalid HTTP address {value!r}: the port must be a number from 0 to 65535")
    return ListenAddress(host, int(port_text))


def is_loopback_name(host: str) -> bool:
    """Whether a host (name or address literal) is this machine's loopback, without resolving it."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def resolve(address: ListenAddress) -> tuple[socket.AddressFamily, tuple[object, ...]]:
    """The first address the host names, as `bind` will use it."""
    try:
        infos = socket.getaddrinfo(
            address.host,
            address.port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV,
        )
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve the HTTP host {address.host!r}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def check_token_rule(address: ListenAddress, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token: anyone who can connect could control the queue."""
    if token:
        return
    _, sockaddr = resolve(address)
    if not ipaddress.ip_address(str(sockaddr[0]).split("%")[0]).is_loopback:
        raise UsageError(
            f"HTTP address {address} is reachable from other machines, so the shim needs a token: "
            f"give --http-token TOKEN or set {TOKEN_ENV}, and send it as 'Authorization: Bearer TOKEN'"
        )


def check_http_extra(what: str = "--http", failed: ImportError | None = None) -> None:
    """Fail early, in the daemon, when the `http` extra is not installed (without importing it); or
    say why importing it `failed`."""
    from importlib.util import find_spec

    missing = [name for name in ("fastapi", "uvicorn") if find_spec(name) is None]
    if find_spec("python_multipart") is None and find_spec("multipart") is None:
        missing.append("python-multipart")
    if find_spec("fastapi_offline") is None:
        missing.append("fastapi-offline")
    if not missing and isinstance(failed, ModuleNotFoundError) and failed.name:
        missing.append(failed.name.partition(".")[0])  # a package they need
    if missing:
        which = "which is" if len(missing) == 1 else "which are"
        raise UsageError(
            f"{what} needs {', '.join(missing)}, {which} not installed: pip install 'msearchd[http]'"
        )
    if failed is not None:
        raise UsageError(f"{what} cannot import its web stack ({failed}): pip install -U 'msearchd[http]'")


def bind(address: ListenAddress) -> socket.socket:
    """A listening TCP socket on `address`; OSError if the port is taken or not ours to use."""
    family, sockaddr = resolve(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def bound_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{url_host(host)}:{port}"


class ShimSupervisor:
    """Runs `python -m msearchd.http` as a child on the daemon's listening socket, and restarts it.

    The daemon is a child subreaper that reaps every child itself, so the child's end arrives as a
    future from the Reaper: nothing here ever waits on the process, and nothing it does can block the
    event loop. A child that keeps dying is restarted after a growing delay.
    """

    RESTART_MIN = 0.25
    RESTART_MAX = 30.0
    STABLE_AFTER = 10.0  # a child that ran this long resets the delay
    STOP_TIMEOUT = 5.0

    def __init__(
        self,
        sock: socket.socket,
        address: ListenAddress,
        socket_path: Path,
        token: str | None,
        reaper: Reaper,
        log_level: str = "info",
        log_format: str = "text",
        web_sock: socket.socket | None = None,
    ) -> None:
        self.sock = sock
        self.web_sock = web_sock  # the task manager page's own port, served by the same process
        self.address = address
        self.socket_path = socket_path
        self.token = token
        self.log_level = log_level
        self.log_format = log_format
        self._reaper = reaper
        self._proc: subprocess.Popen[bytes] | None = None
        self._exited: asyncio.Future[int] | None = None
        self._started = 0.0
        self._delay = 0.0
        self._restart: asyncio.TimerHandle | None = None
        self._closing = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        self._spawn()

    def _argv(self) -> list[str]:
        return [
            *python_argv("msearchd.http"),
            str(self.address),
            "--socket",
            str(self.socket_path.absolute()),  # it runs in another folder
            "--log-level",
            self.log_level,
            "--log-format",
            self.log_format,
            "--fd",
            str(self.sock.fileno()),
            "--parent-pid",
            str(os.getpid()),
            *(("--web-fd", str(self.web_sock.fileno())) if self.web_sock is not None else ()),
        ]

    def _spawn(self) -> None:
        self._restart = None
        if self._closing:
            return
        env = child_environ()
        if self.token:
            env[TOKEN_ENV] = self.token  # in the environment, not argv: argv is visible to every user
        loop = asyncio.get_running_loop()
        try:
            proc = subprocess.Popen(
                self._argv(),
                pass_fds=tuple(s.fileno() for s in (self.sock, self.web_sock) if s is not None),
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # a terminal's Ctrl-C goes to the daemon, which stops the shim
                cwd=child_folder(),
            )
        except OSError as exc:
            self._schedule_restart(f"could not be started ({exc.strerror or exc})", ran=0.0)
            return
        self._proc = proc
        self._started = loop.time()
        exited = self._reaper.watch(proc.pid)  # before any await: the reaper cannot miss its end
        self._exited = exited
        exited.add_done_callback(lambda future: self._on_exit(proc, future))
        log.info("http shim started (pid %d) for %s", proc.pid, bound_url(self.sock))

    def _on_exit(self, proc: subprocess.Popen[bytes], exited: asyncio.Future[int]) -> None:
        if exited.cancelled():
            return
        status = exited.result()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped already: keep Popen from waiting
        if self._proc is proc:
            self._proc = None
        if self._closing:
            return
        how = describe_exit(status)
        if proc.returncode == EXIT_USAGE:
            log.error("http shim (pid %d) %s: a usage error; not restarting it", proc.pid, how)
            return
        self._schedule_restart(
            f"(pid {proc.pid}) {how}", ran=asyncio.get_running_loop().time() - self._started
        )

    def _schedule_restart(self, what: str, ran: float) -> None:
        if ran >= self.STABLE_AFTER:
            self._delay = self.RESTART_MIN
        else:
            self._delay = min(max(self._delay * 2, self.RESTART_MIN), self.RESTART_MAX)
        log.warning("http shim %s after %.1f s; restarting it in %.2f s", what, ran, self._delay)
        self._restart = asyncio.get_running_loop().call_later(self._delay, self._spawn)

    async def stop(self) -> None:
        """Terminate the shim (SIGTERM, then SIGKILL after a timeout) and close the listening socket."""
        self._closing = True
        if self._restart is not None:
            self._restart.cancel()
        proc, exited = self._proc, self._exited
        if proc is not None and exited is not None and not exited.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
                os.kill(proc.pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once resumed
            try:
                await asyncio.wait_for(asyncio.shield(exited), self.STOP_TIMEOUT)
            except TimeoutError:
                log.warning(
                    "http shim (pid %d) ignored SIGTERM for %.0f s; killing it", proc.pid, self.STOP_TIMEOUT
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(exited), self.STOP_TIMEOUT)
        self.sock.close()
        if self.web_sock is not None:
            self.web_sock.close()
