"""X-Request-Id is ours alone.

Ray Serve echoes a caller's X-Request-Id (and records it as the request id). A caller could
put anything there, key material or prompt text included, and we would store and return it.
This middleware runs outside Serve's (installed through
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``) and drops the caller's header, so Serve always
mints a random one: safe to share with support, encoding nothing about the account or key."""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

IMPORT_PATH = "serve_app.request_id:proxy_middlewares"


class DropCallerRequestId:
    def __init__(self, app: ASGIApp):
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            if any(name == b"x-request-id" for name, _ in headers):
                scope = dict(scope, headers=[(n, v) for n, v in headers if n != b"x-request-id"])
        await self._app(scope, receive, send)


def proxy_middlewares() -> list[Middleware]:
    return [Middleware(DropCallerRequestId)]
