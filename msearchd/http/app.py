"""The FastAPI application: the routes, the errors as one sentence in Chinese, the OpenAPI document."""

# The answers are in Chinese, like the API document's, and use its full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException
from starlette.routing import Match, Mount, Route
from starlette.types import Scope

from msearchd import __version__
from msearchd.http import batch, queue, selections, session  # noqa: F401 - their routes join ROUTES as they are imported
from msearchd.http.answers import ApiError, ApiJSON, detail
from msearchd.http.bodies import shared_schemas
from msearchd.http.events import MAX_EVENT_STREAMS, StreamSlots
from msearchd.http.guard import Guard
from msearchd.http.link import RPC_TIMEOUT, DaemonLink
from msearchd.http.page import add_page
from msearchd.http.params import validation_detail
from msearchd.http.routes import PREFIX, ROUTES

log = logging.getLogger("msearchd.http")

DOCS_ASSETS = "/docs/static"
_TASK_LINKS = {
    "GetTask": "get_task",
    "CancelTask": "cancel_task",
    "SetPriority": "set_priority",
    "RetryTask": "retry_task",
}


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method served on the request's path (Starlette names only the first route's).

    A fixed path such as /tasks/cancel-all also matches /tasks/{task_id}; the fixed route is the one meant.
    """
    fixed: set[str] = set()
    templated: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, Route) and route.matches(scope)[0] is not Match.NONE:
            (templated if "{" in route.path else fixed).update(route.methods or ())
        elif isinstance(route, Mount) and scope["path"].startswith(f"{route.path}/"):
            fixed.update(("GET", "HEAD"))  # the files of /docs (the mount has changed the scope's root)
    return sorted(fixed or templated)


def create_app(socket_path: Path, token: str | None = None, rpc_timeout: float = RPC_TIMEOUT) -> FastAPI:
    """The FastAPI application for one daemon socket; `token` makes every request need a bearer token."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.link = DaemonLink(socket_path, rpc_timeout)
        app.state.event_streams = StreamSlots(MAX_EVENT_STREAMS)
        yield
        await app.state.link.close()

    app = FastAPIOffline(  # /docs and /redoc with their scripts served from the package: no CDN
        static_url=DOCS_ASSETS,
        title="msearch task control",
        version=__version__,
        description="任务控制API：取消、调整优先级、重试、查询任务。msearchd 的 REST 接口（经由 RPC）。",
        lifespan=lifespan,
        generate_unique_id_function=lambda route: route.name,  # operation ids: the function names
        swagger_ui_parameters={"validatorUrl": None},  # no badge from swagger.io
    )
    app.state.token = token.encode() if token else None
    for method, path, endpoint, options in ROUTES:
        app.add_api_route(path, endpoint, methods=[method], tags=["tasks"], **options)
    add_page(app)

    async def on_validation_error(request: Request, exc: Exception) -> ApiJSON:
        assert isinstance(exc, RequestValidationError)
        return detail(400, validation_detail(exc))

    async def on_http_error(request: Request, exc: Exception) -> ApiJSON:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        text = str(exc.detail)
        path = request.scope["path"]
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
            if not isinstance(exc, ApiError):  # the router's English phrase
                text = f"不支持的请求方法: {request.method}（{path} 只接受 {headers['Allow']}）"
        elif exc.status_code == 404 and not isinstance(exc, ApiError):
            text = f"路径不存在: {path}"
        return detail(exc.status_code, text, headers)

    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_middleware(Guard, token=token)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            for path in schema["paths"].values():
                for operation in path.values():
                    operation["responses"].pop("422", None)  # validation errors are answered with 400
                    if token:
                        operation["responses"]["401"] = {
                            "description": "缺少或无效的访问令牌",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                            },
                        }
                    else:
                        operation["responses"]["403"] = {
                            "description": "未设置令牌时：请求不是本机同一用户发出，Host、Origin 不是本机，"
                            "或修改请求来自其他来源（Origin、Sec-Fetch-Site）",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                            },
                        }
            # The id a submit returns is what the single-task paths take.
            schema["paths"][f"{PREFIX}/tasks"]["post"]["responses"]["201"]["links"] = {
                name: {"operationId": op, "parameters": {"task_id": "$response.body#/data/task_id"}}
                for name, op in _TASK_LINKS.items()
            }
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update(shared_schemas())
            for name in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(name, None)
            if token:
                components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
                schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
