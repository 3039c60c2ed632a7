"""`msearchd`: wire the store, service, worker pool and RPC server together and run until told to stop."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import IO

from msearchd import __version__, config
from msearchd.errors import InvalidArgument
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
from msearchd.rpc import RpcServer
from msearchd.service import TaskService
from msearchd.store import Store
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
        "To serve a daemon that is already running: python -m msearchd.http [HOST:]PORT --socket PATH",
    )
    parser.add_argument(
        "--http-token",
        metavar="TOKEN",
        help=f"require 'Authorization: Bearer TOKEN' on every HTTP request (env {TOKEN_ENV}, which keeps it "
        "out of the process list); needed to listen on anything but loopback",
    )
    parser.add_argument("--version", action="version", version=f"msearchd {__version__}")
    return parser


def lock_state_dir(state_dir: Path) -> IO[str]:
    """Hold a lock on the state folder for the daemon's lifetime: one daemon per store."""
    lock = (state_dir / "msearchd.lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise StartupError(f"another msearchd (pid {holder}) is using the state folder {state_dir}") from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def clear_stale_socket(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # left by a daemon that did not stop cleanly
        return
    finally:
        probe.close()
    raise StartupError(f"another msearchd is already listening on {path}")


def bind_http(address: ListenAddress) -> socket.socket:
    try:
        return bind(address)
    except OSError as exc:
        raise StartupError(f"cannot listen for HTTP on {address}: {exc.strerror or exc}") from None


async def serve(
    settings: config.Settings, http: ListenAddress | None = None, http_token: str | None = None
) -> None:
    settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings.log_dir.mkdir(mode=0o700, exist_ok=True)
    lock = lock_state_dir(settings.state_dir)
    clear_stale_socket(settings.socket_path)
    http_sock = bind_http(http) if http is not None else None
    store = Store(settings.db_path)
    killed = kill_leftovers(settings.state_dir)
    if killed:
        log.warning("killed %d process(es) left behind by a previous daemon", killed)
    service = TaskService(store, settings)
    service.recover()

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # HUP: its terminal closed
        loop.add_signal_handler(sig, stop.set)
    reaper = Reaper()
    reaper.start()
    pool = WorkerPool(
        settings.workers, settings.state_dir, settings.log_dir, settings.handlers, service, reaper
    )
    service.pool = pool
    server = RpcServer(service, settings.socket_path, stop.set)
    try:
        await server.start()
    except OSError as exc:
        raise StartupError(f"cannot listen on {settings.socket_path}: {exc.strerror}") from None
    pool.start()
    background = [
        loop.create_task(service.run_dispatcher()),
        loop.create_task(service.run_progress_flusher()),
        loop.create_task(service.retention.run_pruner()),
        loop.create_task(service.retention.run_log_cap()),
    ]
    log.info(
        "msearchd %s listening on %s with %d workers; state in %s",
        __version__,
        settings.socket_path,
        settings.workers,
        settings.state_dir,
    )
    shim: ShimSupervisor | None = None
    if http is not None and http_sock is not None:
        shim = ShimSupervisor(http_sock, http, settings.socket_path, http_token, reaper, settings.log_level)
        shim.start()

    await stop.wait()
    log.info("stopping: running tasks go back to pending")
    server.stop_accepting()
    shim_stopped = loop.create_task(shim.stop()) if shim is not None else None
    await service.stop()
    if shim_stopped is not None:
        await shim_stopped
    for task in background:
        task.cancel()
    reaper.stop()
    store.close()
    lock.close()
    await server.close()  # last: a client waiting for the end sees it only when all is released
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
            },
        )
    except InvalidArgument as exc:
        print(f"msearchd: {exc}", file=sys.stderr)
        sys.exit(2)
    http = None
    http_token = args.http_token or os.environ.get(TOKEN_ENV) or None
    if args.http is not None:
        try:
            http = parse_listen(args.http)
            check_token_rule(http, http_token)
            check_http_extra()
        except UsageError as exc:
            print(f"msearchd: {exc}", file=sys.stderr)
            sys.exit(2)
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(serve(settings, http, http_token))
    except (StartupError, InvalidArgument) as exc:
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
