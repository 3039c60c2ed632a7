"""`msearchd`: wire the store, service, worker pool and RPC server together and run until told to stop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING

from msearchd import __version__, config, heap, logformat, systemd
from msearchd.errors import InvalidArgument, Unavailable
from msearchd.httpshim import (
    TOKEN_ENV,
    ListenAddress,
    ShimSupervisor,
    UsageError,
    bind,
    check_http_extra,
    check_token_rule,
    parse_listen,
)
from msearchd.rpc import Listener, RpcServer, SocketRefused
from msearchd.service import TaskService
from msearchd.store import Store, UnusableStore, disk_full

if TYPE_CHECKING:
    from msearchd.store.postgres import PgStore
from msearchd.trust import folder_problem
from msearchd.workers import Reaper, WorkerPool, kill_leftovers

log = logging.getLogger("msearchd")


class StartupError(Exception):
    """A reason not to start, said in one sentence."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msearchd",
        description="Run the msearch task daemon in the foreground: a durable priority queue and a pool of "
        "worker processes, controlled by msearchctl over a Unix socket. Logs go to stderr.",
    )
    parser.add_argument(
        "--socket",
        type=Path,
        help="RPC socket path (env MSEARCH_SOCKET; default $XDG_RUNTIME_DIR/msearch/msearchd.sock)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="folder for the task database and task logs "
        "(env MSEARCH_STATE_DIR; default $XDG_STATE_HOME/msearch)",
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        help="keep the queue in this PostgreSQL database, postgresql://USER@HOST/DB, shared with the "
        "daemons of other machines (env MSEARCH_STORE; needs the postgres extra: pip install "
        "'msearchd[postgres]'; default: SQLite in the state folder)",
    )
    parser.add_argument("--workers", type=int, help="number of worker processes (default: CPU count)")
    parser.add_argument(
        "--grace",
        type=float,
        help="seconds between SIGTERM and SIGKILL when stopping a running task (default 5)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML settings file (env MSEARCH_CONFIG; default "
        "$XDG_CONFIG_HOME/msearch/msearchd.toml if present)",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="how much to log to stderr (default info)",
    )
    parser.add_argument(
        "--log-format",
        choices=logformat.FORMATS,
        default="auto",
        help="text: time, level, logger, message; journal: syslog priority prefixes (<3>...) and no time, "
        "for systemd's journal; json: one JSON object a line; auto (default): journal when standard error "
        "is the journal (JOURNAL_STREAM), else text",
    )
    parser.add_argument(
        "--keep-days",
        type=float,
        metavar="DAYS",
        help="remove finished tasks, their history and logs this many days after they finished "
        "(default 30; 0: no age bound)",
    )
    parser.add_argument(
        "--keep-tasks",
        type=int,
        metavar="N",
        help="keep at most this many finished tasks, the newest (default 100000; 0: no bound)",
    )
    parser.add_argument(
        "--log-max-mib",
        type=float,
        metavar="MIB",
        help="cut a running task's log to its last half when it grows past this size (default 64; 0: no cap)",
    )
    parser.add_argument(
        "--http",
        metavar="[HOST:]PORT",
        help="also serve the REST API (/api/v1/tasks...) on this address, host 127.0.0.1 by default, from a "
        "child process that is restarted if it dies (needs the http extra: pip install 'msearchd[http]'). "
        "To serve a daemon that is already running: python -m msearchd.http [HOST:]PORT [--socket PATH]",
    )
    parser.add_argument(
        "--web",
        metavar="[HOST:]PORT",
        help="also serve the task manager page (and the same REST API) on this second address, for those "
        "used to the page's own port (e.g. 8502); the page is at --http's address too. Needs --http",
    )
    parser.add_argument(
        "--http-token",
        metavar="TOKEN",
        help=f"require 'Authorization: Bearer TOKEN' on every HTTP request (env {TOKEN_ENV}, which keeps it "
        "out of the process list); needed to listen on anything but loopback",
    )
    parser.add_argument("--version", action="version", version=f"msearchd {__version__}")
    return parser


def prepare_state_dir(settings: config.Settings) -> None:
    """Create the state folder and its log folder private to this user; refuse ones that another user
    owns or can write, who could plant a database or a log there."""
    for folder, what in ((settings.state_dir, "state folder"), (settings.log_dir, "task log folder")):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        problem = folder_problem(folder, what)
        if problem is not None:
            raise StartupError(problem)


def lock_state_dir(state_dir: Path) -> IO[str]:
    """Hold a lock on the state folder for the daemon's lifetime: one daemon per store."""
    fd = os.open(state_dir / "msearchd.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)  # one an older msearchd made
    lock = os.fdopen(fd, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise StartupError(f"another msearchd (pid {holder}) is using the state folder {state_dir}") from None
    try:  # the pid only names the holder in the message above: a full disk need not stop the start
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
    except OSError as exc:
        if not disk_full(exc):
            raise
    return lock


def claim_socket(path: Path) -> Listener:
    try:
        return Listener(path)
    except SocketRefused as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(f"cannot listen on {path}: {exc.strerror or exc}") from None


def no_room(folder: Path) -> bool:
    """True when the disk holding `folder` has no block left for this user."""
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


def full_disk(state_dir: Path, exc: Exception, what: str) -> str:
    return f"the disk holding {state_dir} is full ({exc}): {what}; free some space and start msearchd again"


def bind_http(address: ListenAddress) -> socket.socket:
    try:
        return bind(address)
    except OSError as exc:
        raise StartupError(f"cannot listen for HTTP on {address}: {exc.strerror or exc}") from None


def open_store(settings: config.Settings) -> Store | PgStore:
    """SQLite in the state folder, or the PostgreSQL database that several daemons share."""
    if settings.store is None:
        return Store(settings.db_path)
    try:
        from msearchd.store.postgres import PgStore
    except ImportError:
        raise StartupError(
            "a postgresql:// store needs the postgres extra: pip install 'msearchd[postgres]'"
        ) from None
    return PgStore(settings.store, str(settings.state_dir))


# How often the status line a service manager shows is brought up to date.
STATUS_INTERVAL = 5.0


async def report_status(service: TaskService, notifier: systemd.Notifier) -> None:
    """Keep the service manager's status line (`systemctl --user status msearchd`) current."""
    while True:
        try:
            status = service.status()
        except Unavailable:  # a shared store out of reach: the daemon reconnects by itself
            notifier.notify("STATUS=the task store cannot be reached; retrying")
        else:
            busy = status["workers"]["busy"]
            notifier.notify(f"STATUS={status['pending']} tasks pending, {busy} running")
        await asyncio.sleep(STATUS_INTERVAL)


async def serve(
    settings: config.Settings,
    http: ListenAddress | None = None,
    http_token: str | None = None,
    log_format: str = "text",
    web: ListenAddress | None = None,
) -> None:
    notifier = systemd.Notifier()
    activated = systemd.listen_sockets()
    if len(activated) > 1:
        raise StartupError(f"the service manager passed {len(activated)} sockets; msearchd takes one")
    if activated:
        settings.socket_path = Path(activated[0].getsockname())
    prepare_state_dir(settings)
    lock = lock_state_dir(settings.state_dir)
    http_sock = bind_http(http) if http is not None else None
    web_sock = bind_http(web) if web is not None else None
    try:
        store = open_store(settings)
    except Exception as exc:
        # SQLite says only "disk I/O error" when it cannot make its shared-memory file on a full disk.
        if disk_full(exc) or no_room(settings.state_dir):
            raise StartupError(full_disk(settings.state_dir, exc, "cannot open the task store")) from None
        raise
    # After what may fail: a refusal leaves no socket file. A socket the service manager handed over is
    # its own: it stays when the daemon stops.
    listener = Listener.adopt(activated[0]) if activated else claim_socket(settings.socket_path)
    killed = kill_leftovers(settings.state_dir)
    if killed:
        log.warning("killed %d process(es) left behind by a previous daemon", killed)
    service = TaskService(store, settings)
    try:
        service.recover()
    except Exception as exc:
        store.close()
        if disk_full(exc):
            what = "cannot settle the tasks a previous daemon left running"
            raise StartupError(full_disk(settings.state_dir, exc, what)) from None
        raise

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # HUP: its terminal closed
        loop.add_signal_handler(sig, stop.set)
    reaper = Reaper()
    reaper.start()
    pool = WorkerPool(
        settings.workers,
        settings.state_dir,
        settings.log_dir,
        settings.handlers,
        service,
        reaper,
        cgroups=settings.cgroups,
    )
    service.pool = pool
    server = RpcServer(service, settings.socket_path, stop.set)
    await server.start(listener)
    pool.start()
    background = [
        loop.create_task(service.run_dispatcher()),
        loop.create_task(service.run_progress_flusher()),
        loop.create_task(service.retention.run_pruner()),
        loop.create_task(service.retention.run_log_cap()),
        loop.create_task(service.run_cluster()),
    ]
    log.info(
        "msearchd %s listening on %s%s with %d workers; state in %s",
        __version__,
        settings.socket_path,
        " (handed over by the service manager)" if activated else "",
        settings.workers,
        settings.state_dir,
    )
    shim: ShimSupervisor | None = None
    if http is not None and http_sock is not None:
        shim = ShimSupervisor(
            http_sock,
            http,
            settings.socket_path,
            http_token,
            reaper,
            settings.log_level,
            log_format,
            web_sock=web_sock,
        )
        shim.start()
    if notifier.active:
        notifier.notify("READY=1", f"MAINPID={os.getpid()}")
        background.append(loop.create_task(report_status(service, notifier)))

    await stop.wait()
    log.info("stopping: running tasks go back to pending")
    notifier.notify("STOPPING=1", "STATUS=stopping: running tasks go back to pending")
    server.stop_accepting()
    shim_stopped = loop.create_task(shim.stop()) if shim is not None else None
    await service.stop()
    if shim_stopped is not None:
        await shim_stopped
    for task in background:
        task.cancel()
    reaper.stop()
    if store.shared:  # its tasks are settled: nothing is left for the others to take over
        with contextlib.suppress(Unavailable):
            store.deregister()
    store.close()
    lock.close()
    await server.close()  # last: a client waiting for the end sees it only when all is released
    notifier.close()
    log.info("stopped")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = config.load(
            args.config or config.default_config_path(),
            {
                "socket_path": args.socket,
                "state_dir": args.state_dir,
                "workers": args.workers,
                "grace": args.grace,
                "log_level": args.log_level,
                "keep_days": args.keep_days,
                "keep_tasks": args.keep_tasks,
                "log_max_mib": args.log_max_mib,
                "store": args.store,
            },
        )
    except InvalidArgument as exc:
        print(f"msearchd: {exc}", file=sys.stderr)
        sys.exit(2)
    http = web = None
    http_token = args.http_token or os.environ.get(TOKEN_ENV) or None
    if args.web is not None and args.http is None:
        print("msearchd: --web needs --http (the page is served by the HTTP shim)", file=sys.stderr)
        sys.exit(2)
    if args.http is not None:
        try:
            http = parse_listen(args.http)
            check_token_rule(http, http_token)
            if args.web is not None:
                web = parse_listen(args.web)
                check_token_rule(web, http_token)
            check_http_extra()
        except UsageError as exc:
            print(f"msearchd: {exc}", file=sys.stderr)
            sys.exit(2)
    log_format = logformat.resolve(args.log_format, systemd.journal_on_stderr())
    logformat.configure(settings.log_level, log_format)
    heap.keep_heap_top()
    try:
        asyncio.run(serve(settings, http, http_token, log_format, web))
    except (StartupError, InvalidArgument, UnusableStore) as exc:
        print(f"msearchd: {exc}", file=sys.stderr)
        sys.exit(1)
    except OSError as exc:
        print(
            f"msearchd: {exc.strerror}: {exc.filename}" if exc.filename else f"msearchd: {exc}",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
