"""Authentication as a plain ASGI middleware: every /api and /v1 request gets a Principal in
``scope["hearth.principal"]`` or a 401 in its own dialect before any handler runs."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from hearth.api.common import error_response
from hearth.errors import Forbidden, Unauthorized
from hearth.gateway.auth import Authenticator, Principal, bearer

# Answered to anyone: they say only that Hearth is up (the ollama CLI's heartbeat, Open WebUI's
# version check). /metrics has its own key; /admin checks for an admin itself.
OPEN_PATHS = frozenset({"/", "/api/version", "/healthz", "/metrics"})


def principal_of(request: Request) -> Principal:
    p = request.scope.get("hearth.principal")
    assert isinstance(p, Principal), "route not behind AuthMiddleware"
    return p


def require_admin(request: Request, admin_key: str | None) -> None:
    """Admin surfaces: the server's admin key, or a tenant marked admin."""
    token = bearer(request.headers.get("authorization"))
    if admin_key and token is not None and hmac.compare_digest(token.encode(), admin_key.encode()):
        return
    p = request.scope.get("hearth.principal")
    if isinstance(p, Principal):
        if p.is_admin:
            return
        raise Forbidden("this key may not use admin endpoints")
    raise Unauthorized("missing or invalid admin credentials")


class AuthMiddleware:
    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.auth = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The hub checks its own sessions: a key or a trusted network never logs a browser in.
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"].startswith("/hub"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        client = scope.get("client")
        try:
            scope["hearth.principal"] = self.auth.authenticate(
                headers.get("authorization"), client[0] if client else None, headers
            )
        except Unauthorized as exc:
            if not path.startswith("/admin"):
                response = error_response(exc, "openai" if path.startswith("/v1") else "ollama")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
