"""The Guard: the bearer token (or the task manager page's session cookie), or without one this user on
this machine only (uid of the TCP peer from /proc/net/tcp, loopback Host and Origin, and changes only
from the shim's own origin)."""

# The answers are in Chinese, like the API document's, and use its full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import hmac
import logging
import os
import socket
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from msearchd.http.answers import ApiJSON, detail
from msearchd.http.page import is_page
from msearchd.http.session import foreign_request, has_session, is_sign_in
from msearchd.httpshim import (
    is_loopback_name,
    url_host,
)

log = logging.getLogger("msearchd.http")


def _is_local(url: str) -> bool:
    """Whether a URL (or `//host:port`) names this machine; an unreadable one does not."""
    try:
        return is_loopback_name(urlsplit(url).hostname or "")
    except ValueError:
        return False


def _proc_net_address(host: str, port: int) -> str:
    """An address as /proc/net/tcp{,6} writes it: each 32-bit word of the address in host order, in hex."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    raw = socket.inet_pton(family, host)
    words = "".join(raw[i : i + 4][::-1].hex() for i in range(0, len(raw), 4))
    return f"{words.upper()}:{port:04X}"


def tcp_peer_uid(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The uid owning the client end of a TCP connection on this machine, from /proc/net/tcp; None when
    no connection with these ends is found (or an end is not an address: nobody owns it)."""
    try:
        local, remote = _proc_net_address(*client), _proc_net_address(*server)
    except (OSError, ValueError):
        return None
    for table in ("/proc/net/tcp6", "/proc/net/tcp") if ":" in client[0] else ("/proc/net/tcp",):
        try:
            with open(table) as rows:
                next(rows)
                for row in rows:
                    fields = row.split()
                    if fields[1] == local and fields[2] == remote:
                        return int(fields[7])
        except OSError:
            continue
    return None


# Methods that only read: a page of another origin may send them (it cannot read the answer).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin or URL, as browsers compare them; None if unreadable."""
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.scheme.lower(), parts.hostname.lower(), port


def _own_origin(scope: Scope, host: str | None) -> str:
    """The shim's origin as this request reached it: the Host it was sent to, else the bound address."""
    if host is None:
        address, port = scope["server"]
        host = f"{url_host(address)}:{port}"
    return f"{scope['scheme']}://{host}"


class Guard:
    """Outermost checks: the bearer token; without one, only loopback hosts and origins; no 500 unlogged.

    Without a token the shim trusts only this user on this machine, as the daemon's socket does: a
    request must come from a loopback connection that the daemon's own uid opened, and must not carry
    what a web page could smuggle in: a foreign Host (DNS rebinding) or a foreign Origin (cross-site posts).
    A request that changes something must moreover come from the shim's own origin, exactly: a form post
    needs no preflight, so a page served on another local port could otherwise post to the shim.
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    def _refusal(self, scope: Scope, headers: Headers) -> ApiJSON | None:
        if self.token is not None:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token):
                return None
            method, path = scope["method"], scope["path"]
            if is_page(method, path):
                return None
            if is_sign_in(method, path) or has_session(headers, self.token):
                origin = headers.get("origin")
                ours = _origin(_own_origin(scope, headers.get("host")))
                why = foreign_request(method, headers, ours, _origin(origin) if origin else None)
                return None if why is None else detail(403, why)
            what = "缺少" if "authorization" not in headers else "无效的"
            return detail(
                401,
                f"{what}访问令牌: 请发送 Authorization: Bearer <token>，或在任务管理器页面登录",
                {"WWW-Authenticate": "Bearer"},
            )
        client, server = scope.get("client"), scope.get("server")
        uid = tcp_peer_uid(tuple(client), tuple(server)) if client and server else None
        if uid != os.getuid():
            who = "未知用户" if uid is None else f"uid {uid}"
            return detail(403, f"拒绝访问: 请求来自{who}，未设置令牌时只接受与守护进程相同用户的本机请求")
        host = headers.get("host")
        if host is not None and not _is_local(f"//{host}"):
            return detail(403, f"拒绝访问: Host {host!r} 不是本机地址（未设置令牌时只接受本机请求）")
        origin = headers.get("origin")
        if origin is not None and not _is_local(origin):
            return detail(403, f"拒绝来自其他网站的请求: Origin {origin!r}")
        if scope["method"] in SAFE_METHODS:
            return None
        site = headers.get("sec-fetch-site", "").lower()
        if site in ("cross-site", "same-site"):
            return detail(
                403, f"拒绝其他网页发来的修改请求: Sec-Fetch-Site: {site}（只接受本服务自己的页面）"
            )
        own = _own_origin(scope, host)
        theirs = _origin(origin) if origin is not None else None
        if origin is not None and (theirs is None or theirs != _origin(own)):
            return detail(
                403, f"拒绝其他来源发来的修改请求: Origin {origin!r}（只接受本服务自己的来源 {own}）"
            )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            refusal = self._refusal(scope, Headers(scope=scope))
            if refusal is not None:
                await refusal(scope, receive, watch)
                return
            await self.app(scope, receive, watch)
        except Exception as exc:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:
                raise
            await detail(500, f"内部错误: {type(exc).__name__}: {exc}")(scope, receive, send)
