"""Signing in to the task manager page: with a token, a browser signs in once.

`POST /api/v1/session {token}` answers with a cookie that stands for the token on this site's own
requests only (see `foreign_request`); the Guard accepts it where it would a bearer token.
"""

# The answers are in Chinese, like the API document's, and use its full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import hashlib
import hmac
from typing import cast

from fastapi import Request
from starlette.datastructures import Headers

from msearchd.http.answers import ApiError, ApiJSON, ErrorBody, SessionAnswer, answers
from msearchd.http.bodies import SessionBody, openapi_body, read_body
from msearchd.http.params import no_query
from msearchd.http.routes import PREFIX, route

SESSION_COOKIE = "msearch_session"
SESSION_PATH = f"{PREFIX}/session"

Origin = tuple[str, str, int]  # (scheme, host, port), as browsers compare origins


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


def is_sign_in(method: str, path: str) -> bool:
    return path == SESSION_PATH and method in ("POST", "DELETE")


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


@route(
    "POST",
    "/session",
    responses={**answers(SessionAnswer, body=True), 401: {"model": ErrorBody, "description": "令牌无效"}},
    openapi_extra=openapi_body(SessionBody),
    summary="用访问令牌登录任务管理器页面",
)
async def sign_in(request: Request) -> ApiJSON:
    """Exchange the token for an HttpOnly, SameSite=Strict cookie that stands for it on this service's
    own pages (changes must still come from its own origin). Without a token configured, nothing to do."""
    body = await read_body(request, SessionBody)
    token = cast(bytes | None, request.app.state.token)
    if token is None:
        return ApiJSON({"success": True, "message": "未设置令牌，无需登录"})
    if not hmac.compare_digest(body.token.encode(), token):
        raise ApiError(401, "令牌无效")
    return ApiJSON({"success": True, "message": "已登录"}, headers={"Set-Cookie": session_cookie(token)})


@route("DELETE", "/session", responses=answers(SessionAnswer), summary="退出登录")
async def sign_out(request: Request) -> ApiJSON:
    """Forget the cookie in this browser."""
    no_query(request, ())
    return ApiJSON({"success": True, "message": "已退出登录"}, headers={"Set-Cookie": signed_out_cookie()})
