"""GET /metrics: the Prometheus exposition of the app's registry.

Open unless ``server.metrics_key`` is set, then it needs ``Authorization: Bearer <key>``
(Prometheus: ``authorization: {credentials: KEY}`` in the scrape config). It holds counts and
timings only, never prompts, replies or keys. OpenMetrics is served to a scraper that asks for it.
"""

from __future__ import annotations

import hmac

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hearth.api.common import error_response
from hearth.errors import Unauthorized
from hearth.settings import Settings


class MetricsAPI:
    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.key = settings.server.metrics_key or None
        self.registry = registry

    def routes(self) -> list[Route]:
        return [Route("/metrics", self.metrics, methods=["GET"])]

    async def metrics(self, request: Request) -> Response:
        if self.key is not None:
            auth = request.headers.get("authorization", "")
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), self.key.encode()):
                response = error_response(Unauthorized("invalid or missing metrics key"), "openai")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        # Collected on the event loop, where the pool and the counters change: a consistent read.
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(self.registry), headers={"Content-Type": content_type})
