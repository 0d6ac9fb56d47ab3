"""Model management (pull, push, create, delete, copy, blobs) across the Ollama backends.

Which backends an operation reaches:
- a backend named by the client (``X-Hearth-Backend: NAME`` or ``?backend=NAME``) alone;
- ``all`` (or ``*``), or by default for pull, delete and copy: every Ollama backend that is up
  (delete and copy: every one that has the model), so a model pulled through Hearth is
  available wherever Hearth may route it;
- by default for push: the first backend that has the model; for create and blobs: the first
  Ollama backend that is up, so a blob upload and the create that uses it meet on one server.

Progress streams from several backends are relayed one after the other; only the last
backend's ``{"status": "success"}`` is sent, so a client sees one operation succeed once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from hearth.backends.base import RawResponse
from hearth.backends.pool import BackendState, Pool
from hearth.errors import BadRequest, HearthError, ModelNotFound, NoBackend, UpstreamError

ALL = frozenset({"all", "*"})


class Manager:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def select(self, backend: str | None, *, fan_out: bool, having: str | None = None) -> list[BackendState]:
        if backend and backend not in ALL:
            state = self.pool.by_name.get(backend)
            if state is None:
                raise BadRequest(f"unknown backend '{backend}'")
            if state.backend.kind != "ollama":
                raise BadRequest(f"backend '{backend}' is not an Ollama server; model management needs one")
            return [state]
        states = [s for s in self.pool.ollama_states() if s.up]
        if not states:
            raise NoBackend("no Ollama backend is up")
        if having is not None:
            states = [s for s in states if s.serves(having)]
            if not states:
                raise ModelNotFound(having)
        return states if fan_out or backend in ALL else states[:1]

    async def progress(
        self, states: list[BackendState], path: str, body: dict[str, Any]
    ) -> AsyncIterator[bytes]:
        """Start the operation on the first backend (so a refusal still gets a real status) and
        return the NDJSON progress of all of them in turn."""
        payload = msgspec.json.encode({**body, "stream": True})
        first = await states[0].backend.forward("POST", path, payload)
        return self._relay(first, states, path, payload)

    async def _relay(
        self, first: RawResponse, states: list[BackendState], path: str, payload: bytes
    ) -> AsyncIterator[bytes]:
        try:
            for i, state in enumerate(states):
                raw = first if i == 0 else await state.backend.forward("POST", path, payload)
                last = i == len(states) - 1
                async for line in raw.iter_lines():
                    if b'"error"' in line:
                        yield line + b"\n"
                        return
                    if not last and b'"success"' in line:
                        continue
                    yield line + b"\n"
        finally:
            first.close()
            await self.pool.refresh(states)

    async def simple(self, states: list[BackendState], method: str, path: str, body: dict[str, Any]) -> None:
        """delete and copy: succeed if every selected backend succeeds."""
        payload = msgspec.json.encode(body)
        try:
            for state in states:
                raw = await state.backend.forward(method, path, payload)
                await raw.read()
        finally:
            await self.pool.refresh(states)


async def last_status(lines: AsyncIterator[bytes]) -> dict[str, Any]:
    """For a client that asked stream=false: only the final object, or the error as a failure."""
    last: Any = {}
    async for line in lines:
        last = msgspec.json.decode(line)
        if isinstance(last, dict) and "error" in last:
            raise UpstreamError(str(last["error"]), 500)
    if not isinstance(last, dict):
        raise HearthError("backend sent no status")
    return last
