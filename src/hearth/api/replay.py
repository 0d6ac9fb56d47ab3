"""``POST /admin/traces/{id}/replay`` with ``{"model": "<name>"}``: a stored call run again on
that model as the tenant that made it (gateway/replay.py), answered with
``{"trace_id", "tenant", "model", "backend", "response", "status", "duration_ms"}``.

Admins only; errors in OpenAI's shape like the rest of /admin: 404 for an unknown trace, 409 when
its request was not stored, 400 for a missing model or one the tenant may not or cannot use.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hearth.api.auth import require_admin
from hearth.api.common import cancel_on_disconnect, error_response, json_body, json_response
from hearth.api.traces import trace_id_of
from hearth.errors import BadRequest, HearthError
from hearth.gateway.dispatch import Gateway
from hearth.gateway.replay import replay
from hearth.settings import Settings, TenantSettings
from hearth.store.db import Store


class ReplayAPI:
    def __init__(
        self, settings: Settings, gateway: Gateway, store: Store, policy_of: Callable[[str], TenantSettings]
    ) -> None:
        self.admin_key = settings.server.admin_key or None
        self.limit = settings.server.max_body_bytes
        self.gateway = gateway
        self.store = store
        self.policy_of = policy_of

    def routes(self) -> list[Route]:
        return [Route("/admin/traces/{trace_id}/replay", self.replay, methods=["POST"])]

    async def replay(self, request: Request) -> Response:
        try:
            require_admin(request, self.admin_key)
            trace_id = trace_id_of(request)
            _, body = await json_body(request, self.limit)
            model = body.get("model")
            if not isinstance(model, str) or not model.strip():
                raise BadRequest("model: name the model to replay the call on", "model")
            work = replay(self.gateway, self.store, self.policy_of, trace_id, model)
            done = await cancel_on_disconnect(request, work)
        except HearthError as exc:
            return error_response(exc, "openai")
        return json_response(done.as_json())
