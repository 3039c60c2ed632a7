"""The shim's process: its arguments, its listening socket and uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from pathlib import Path

import uvicorn

from msearchd import logformat, systemd
from msearchd.config import default_socket_path
from msearchd.http.app import create_app
from msearchd.http.link import RPC_TIMEOUT
from msearchd.httpshim import (
    EXIT_USAGE,
    TOKEN_ENV,
    UsageError,
    bind,
    bound_url,
    check_token_rule,
    parse_listen,
)
from msearchd.prctl import die_with_parent

log = logging.getLogger("msearchd.http")


class _Server(uvicorn.Server):
    """uvicorn's server, saying when it serves: the daemon and the tests wait for that line."""

    url = ""
    page_urls: list[str] = []  # noqa: RUF012 - set once per server, before it starts
    socket_path = Path()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            log.info(
                "http shim listening on %s (pid %d) for msearchd at %s",
                self.url,
                os.getpid(),
                self.socket_path,
            )
            for url in self.page_urls:
                log.info("task manager page at %s/", url)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m msearchd.http",
        description="Serve the REST task-control API (/api/v1/tasks...) for a running msearchd, as a "
        "client of its socket. msearchd --http [HOST:]PORT runs this for you beside the daemon; run it by "
        "hand to serve a daemon that is already running. Listening on anything but loopback needs a token.",
    )
    parser.add_argument(
        "listen", metavar="[HOST:]PORT", help="where to listen; the host defaults to 127.0.0.1"
    )
    parser.add_argument(
        "--socket",
        type=Path,
        metavar="PATH",
        help="the daemon's RPC socket; by default the one msearchd and msearchctl use: env MSEARCH_SOCKET, "
        "else $XDG_RUNTIME_DIR/msearch/msearchd.sock, or /tmp/msearch-UID/msearchd.sock when XDG_RUNTIME_DIR "
        f"is unset (here: {default_socket_path()})",
    )
    parser.add_argument(
        "--token",
        help=f"require 'Authorization: Bearer TOKEN' on every request (env {TOKEN_ENV}, which keeps it "
        "out of the process list); needed to listen on anything but loopback",
    )
    parser.add_argument(
        "--rpc-timeout",
        type=float,
        default=RPC_TIMEOUT,
        help=f"answer 503 when the daemon takes longer than this many seconds (default {RPC_TIMEOUT:g})",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    parser.add_argument(
        "--log-format",
        choices=logformat.FORMATS,
        default="auto",
        help="text, journal (syslog priority prefixes, no time) or json; auto: journal when standard "
        "error is the journal, else text",
    )
    parser.add_argument(
        "--web",
        metavar="[HOST:]PORT",
        help="also serve the task manager page (and the same API) on this second address, e.g. 8502",
    )
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)  # a listening socket from msearchd
    parser.add_argument("--web-fd", type=int, help=argparse.SUPPRESS)  # msearchd's --web socket
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logformat.configure(args.log_level, logformat.resolve(args.log_format, systemd.journal_on_stderr()))
    # Go when the daemon goes, even by SIGKILL: an orphan would hold the port the next daemon needs.
    if args.parent_pid is not None and not die_with_parent(args.parent_pid):
        sys.exit(0)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    try:
        address = parse_listen(args.listen)
        if args.fd is None:
            check_token_rule(address, token)
            sock = bind(address)
        else:
            sock = socket.socket(fileno=args.fd)
            check_token_rule(parse_listen(bound_url(sock).removeprefix("http://")), token)
        sockets = [sock]
        if args.web_fd is not None:
            sockets.append(socket.socket(fileno=args.web_fd))
        elif args.web is not None:
            web = parse_listen(args.web)
            check_token_rule(web, token)
            sockets.append(bind(web))
        for extra in sockets[1:]:
            check_token_rule(parse_listen(bound_url(extra).removeprefix("http://")), token)
    except UsageError as exc:
        print(f"msearchd-http: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except OSError as exc:
        print(f"msearchd-http: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)
    if args.rpc_timeout <= 0:
        print("msearchd-http: --rpc-timeout must be more than 0 seconds", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    socket_path = args.socket or default_socket_path()
    app = create_app(socket_path, token, args.rpc_timeout)
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=5,
        server_header=False,
        # Not behind a proxy: X-Forwarded-For must not replace the peer whose uid the Guard checks.
        proxy_headers=False,
    )
    server = _Server(config)
    server.url = bound_url(sock)
    server.page_urls = [bound_url(s) for s in sockets]
    server.socket_path = socket_path
    asyncio.run(server.serve(sockets=sockets))
