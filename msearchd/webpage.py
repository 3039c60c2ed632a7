"""The task manager page (📋 任务管理器): its files, served by the shim, and signing in with the token.

The page is static (HTML, CSS and ES modules from the package's `web` folder, no build step, nothing
from another site); everything it shows or does goes through the REST paths and the event stream, as a
curl user's requests do. With a token, a browser signs in once: `POST /api/v1/session {token}` answers
with a cookie that stands for the token on this site's own requests only (see `foreign_request`).
"""

# The answers are in Chinese, like the API document's, and use its full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

WEB_DIR = Path(__file__).parent / "web"
STATIC = "/static"
SESSION_COOKIE = "msearch_session"
SESSION_PATH = "/api/v1/session"

# The page runs only its own files, talks only to its own origin, and no other site may frame it
# (a frame would let that site trick a click on 全部取消).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated: a new version of the package shows at once
}


def session_value(token: bytes) -> str:
    """What the cookie holds: derived from the token, so that a restarted shim keeps the browser
    signed in, a new token signs everyone out, and the cookie never carries the token itself."""
    return hmac.new(token, b"msearchd web session v1", hashlib.sha256).hexdigest()


def session_cookie(token: bytes) -> str:
    # Secure is left out: the shim speaks plain HTTP (on loopback, or behind the user's own TLS proxy).
    return f"{SESSION_COOKIE}={session_value(token)}; Path=/; HttpOnly; SameSite=Strict"


def signed_out_cookie() -> str:
    return f"{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"


def has_session(headers: Headers, token: bytes) -> bool:
    """Whether the request carries the session cookie of this token."""
    expected = session_value(token).encode()
    for cookie in headers.getlist("cookie"):
        for part in cookie.split(";"):
            name, _, value = part.strip().partition("=")
            if name == SESSION_COOKIE and hmac.compare_digest(value.strip().encode(), expected):
                return True
    return False


def is_page(method: str, path: str) -> bool:
    """The page and its files: anyone may load them (they hold no data), even before signing in."""
    return method in ("GET", "HEAD") and (path == "/" or path.startswith(f"{STATIC}/"))


def is_sign_in(method: str, path: str) -> bool:
    return path == SESSION_PATH and method in ("POST", "DELETE")


Origin = tuple[str, str, int]  # (scheme, host, port), as browsers compare origins


def foreign_request(
    method: str, headers: Headers, own_origin: Origin | None, origin: Origin | None
) -> str | None:
    """Why a request that a cookie (or signing in) would authorise did not come from the page itself;
    None when it did. A browser sends the cookie with requests of other pages of the same site (another
    port of this host is the same site), so each must show the shim's own origin: Sec-Fetch-Site and
    Origin are set by the browser, and a page cannot forge them."""
    site = headers.get("sec-fetch-site", "").lower()
    if site in ("cross-site", "same-site"):
        return f"拒绝其他网页发来的请求: Sec-Fetch-Site: {site}（登录后只接受本服务自己的页面）"
    if "origin" in headers and (origin is None or origin != own_origin):
        return f"拒绝其他来源发来的请求: Origin {headers['origin']!r}（登录后只接受本服务自己的来源）"
    if method not in ("GET", "HEAD", "OPTIONS") and "origin" not in headers:
        return (
            "拒绝没有 Origin 的修改请求: 登录后，修改只接受本服务页面发出的请求"
            "（或使用 Authorization: Bearer）"
        )
    return None


class PageFiles(StaticFiles):
    """The page's files with the page's headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(PAGE_HEADERS)
        return response


async def index(_: Any) -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


def add_page(app: Starlette) -> None:
    """Serve `/` and `/static/...` from the shim's application, beside its REST paths."""
    app.add_route("/", index, methods=["GET", "HEAD"], include_in_schema=False)
    app.mount(STATIC, PageFiles(directory=WEB_DIR), name="static")
