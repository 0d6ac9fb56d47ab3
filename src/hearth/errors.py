"""One exception tree for the whole core; the api layer shapes each into a dialect's error.

    HearthError                 500  anything unexpected in the core
    +-- ConfigError                  a bad settings file or override (never reaches a client)
    +-- BadRequest              400  malformed JSON, wrong types, missing fields
    +-- Unauthorized            401  missing or bad key (issue 3)
    +-- Forbidden               403  a key that may not do this (issue 3)
    +-- ModelNotFound           404  no backend serves the model, or the backend said so
    +-- TenantNotFound          404  an admin call names a tenant Hearth does not know
    +-- TraceNotFound           404  no such trace (or, to a tenant, another tenant's)
    +-- PayloadTooLarge         413  body over the configured limit
    +-- RateLimited             429  a limit was hit; carries retry_after seconds
    |   +-- QueueFull           429  too many of the tenant's requests wait already
    +-- NoStoredContent         409  replay of a call whose prompt is not stored
    +-- ClientCancelled         499  the client went away
    +-- UpstreamError           the backend answered with an error status (status kept)
    |   +-- BackendUnavailable  503  connection refused, reset, timed out, circuit open, 503/429
    +-- NoBackend               503  every candidate failed or none is up
    +-- QueueTimeout            503  waited the tenant's max_wait for a backend; carries retry_after

Backends map their transport errors at the edge (``raise BackendUnavailable(...) from exc``);
the gateway decides on retries by type, never by parsing messages.
"""

from __future__ import annotations


class HearthError(Exception):
    status = 500
    openai_type = "api_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(HearthError):
    pass


class BadRequest(HearthError):
    status = 400
    openai_type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class Unauthorized(HearthError):
    status = 401
    openai_type = "authentication_error"


class Forbidden(HearthError):
    status = 403
    openai_type = "permission_error"


class ModelNotFound(HearthError):
    status = 404
    openai_type = "not_found_error"

    def __init__(self, model: str) -> None:
        super().__init__(f"model '{model}' not found")
        self.model = model


class TenantNotFound(HearthError):
    status = 404
    openai_type = "not_found_error"

    def __init__(self, tenant: str) -> None:
        super().__init__(f"tenant '{tenant}' not found")
        self.tenant = tenant


class PayloadTooLarge(HearthError):
    status = 413
    openai_type = "invalid_request_error"


class RateLimited(HearthError):
    status = 429
    openai_type = "rate_limit_error"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFull(RateLimited):
    pass


class QueueTimeout(HearthError):
    status = 503

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TraceNotFound(HearthError):
    status = 404
    openai_type = "not_found_error"

    def __init__(self, trace_id: int) -> None:
        super().__init__(f"trace {trace_id} not found")
        self.trace_id = trace_id


class NoStoredContent(HearthError):
    status = 409
    openai_type = "invalid_request_error"


class ClientCancelled(HearthError):
    status = 499


class UpstreamError(HearthError):
    """The backend answered with an error. ``status`` is the backend's own."""

    def __init__(self, message: str, status: int = 502, backend: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.backend = backend
        if status == 400:
            self.openai_type = "invalid_request_error"
        elif status == 404:
            self.openai_type = "not_found_error"


class BackendUnavailable(UpstreamError):
    """Worth retrying elsewhere: the backend could not take the request at all."""

    def __init__(self, message: str, status: int = 503, backend: str = "") -> None:
        super().__init__(message, status, backend)


class NoBackend(HearthError):
    status = 503
