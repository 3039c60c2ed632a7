"""The task manager page (📋 任务管理器): its files, served by the shim beside the REST paths.

The page is static (HTML, CSS and ES modules from the package's `web` folder, no build step, nothing
from another site); everything it shows or does goes through the REST paths and the event stream, as a
curl user's requests do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

WEB_DIR = Path(__file__).parent.parent / "web"
STATIC = "/static"

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


def is_page(method: str, path: str) -> bool:
    """The page and its files: anyone may load them (they hold no data), even before signing in."""
    return method in ("GET", "HEAD") and (path == "/" or path.startswith(f"{STATIC}/"))


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
