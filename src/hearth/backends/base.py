"""The one Backend interface, and the HTTP plumbing every adapter shares.

A backend takes a canonical request and returns an async iterator of chunks (or an embedding
result); for a client that speaks the backend's own dialect it forwards raw bytes instead.
Either way the call returns only once the upstream response has started, so every failure
before the first byte raises here and the gateway can still try another backend. Transport
errors are mapped at this edge into the core's exception tree.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import yarl

from hearth.errors import BackendUnavailable, UpstreamError
from hearth.protocol.canonical import ChatRequest, Chunk, CompletionRequest, EmbedRequest, EmbedResult
from hearth.settings import BackendSettings, TimeoutSettings

# Statuses that mean "this backend can't take it now, another one might".
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(slots=True)
class ModelInfo:
    """A model a backend serves, in Ollama's /api/tags terms (OpenAI backends fill what they know)."""

    name: str
    size: int = 0
    digest: str = ""
    modified_at: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class LoadedModel:
    """A model resident in a backend's memory (Ollama /api/ps)."""

    name: str
    size: int = 0
    size_vram: int = 0
    expires_at: str = ""
    context_length: int = 0
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Discovery:
    models: list[ModelInfo]
    loaded: list[LoadedModel]
    version: str | None = None


class RawResponse:
    """An upstream response whose status is known and whose body is not read yet."""

    def __init__(self, resp: aiohttp.ClientResponse, backend: str) -> None:
        self._resp = resp
        self.backend = backend
        self.status = resp.status
        self.content_type = resp.headers.get("Content-Type", "application/json")

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"backend '{self.backend}' failed while answering: {exc!r}", 502) from exc
        finally:
            self._resp.release()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives. Raises UpstreamError if the backend stops before the end."""
        try:
            async for data in self._resp.content.iter_any():
                yield data
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            tail = _salvage(self._resp.content)
            if tail:
                yield tail
            raise UpstreamError(f"backend '{self.backend}' closed the stream early", 502) from exc
        finally:
            self.close()

    async def iter_lines(self, sep: bytes = b"\n") -> AsyncIterator[bytes]:
        """Complete records only, so a partial line is never forwarded or parsed."""
        buf = b""
        async for data in self.iter_chunks():
            buf += data
            while True:
                i = buf.find(sep)
                if i < 0:
                    break
                line, buf = buf[:i], buf[i + len(sep) :]
                if line.strip():
                    yield line
        if buf.strip():
            yield buf

    def close(self) -> None:
        # close(), not release(): on a cancelled stream the connection must drop so the
        # backend notices and stops generating.
        if not self._resp.closed:
            self._resp.close()


def _salvage(content: aiohttp.StreamReader) -> bytes:
    """Bytes that arrived together with a connection reset.

    aiohttp's readany() raises the stored error before handing over what is still buffered, so
    a backend's last chunks before dying would be lost; a proxy must forward them. This reaches
    into aiohttp's StreamReader (pinned version; tests/gateway/test_failover.py guards it).
    """
    try:
        data: bytes = content._read_nowait(-1)
    except (AttributeError, TimeoutError, aiohttp.ClientError):
        return b""
    return data


def error_message(body: bytes) -> str:
    """The message inside an Ollama or OpenAI error body, or the body itself."""
    try:
        obj = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body.decode("utf-8", "replace").strip()[:500] or "no message"
    if isinstance(obj, dict):
        err = obj.get("error", obj.get("message"))
        if isinstance(err, dict):
            err = err.get("message")
        if isinstance(err, str):
            return err
    return body.decode("utf-8", "replace").strip()[:500]


class Backend(abc.ABC):
    """One upstream server. Adapters subclass it; the pool owns health and breakers."""

    kind: str

    def __init__(self, cfg: BackendSettings, timeouts: TimeoutSettings) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.base = cfg.url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, yarl.URL] = {}  # parsed once per path: URL parsing showed in profiles
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        headers = {"Content-Type": "application/json"}
        if cfg.api_key:
            headers["Authorization"] = f"Bearer {cfg.api_key}"
        self._headers = headers

    def bind(self, session: aiohttp.ClientSession) -> None:
        """Attach the shared HTTP session (it needs a running event loop, so comes at start-up)."""
        self._session = session

    async def forward(
        self,
        method: str,
        path: str,
        body: bytes | AsyncIterator[bytes] | None = None,
        *,
        headers: dict[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> RawResponse:
        """Send bytes in this backend's own dialect; return once the status is known.

        Error statuses raise: BackendUnavailable for ones worth retrying elsewhere, UpstreamError
        otherwise (status and message kept). ``Host`` is never copied from the client: aiohttp sets
        it from the backend URL, which also satisfies Ollama's host check.
        """
        hdrs = self._headers if headers is None else {**self._headers, **headers}
        assert self._session is not None, "backend used before Pool.start()"
        url = self._urls.get(path)
        if url is None:
            url = yarl.URL(self.base + path)
            if len(self._urls) < 256:  # paths with digests (blobs) must not grow this forever
                self._urls[path] = url
        try:
            resp = await self._session.request(
                method, url, data=body, headers=hdrs, timeout=timeout or self._timeout
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise BackendUnavailable(f"backend '{self.name}' unreachable: {exc!r}", 503, self.name) from exc
        if resp.status >= 400:
            try:
                text = await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                text = b""
            finally:
                resp.release()
            msg = error_message(text)
            if resp.status in RETRYABLE_STATUSES:
                raise BackendUnavailable(msg, resp.status, self.name)
            raise UpstreamError(msg, resp.status, self.name)
        return RawResponse(resp, self.name)

    async def get_json(self, path: str, timeout: float) -> Any:
        raw = await self.forward("GET", path, timeout=aiohttp.ClientTimeout(total=timeout))
        data = await raw.read()
        try:
            return msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise UpstreamError(
                f"backend '{self.name}' sent invalid JSON for {path}", 502, self.name
            ) from exc

    def native_path(self, client_path: str) -> str:
        """Map a client path of the same dialect (``/api/chat``, ``/v1/chat/completions``) to ours."""
        return client_path

    @abc.abstractmethod
    async def chat(self, req: ChatRequest) -> AsyncIterator[Chunk]:
        """Start a chat; raise before returning if the backend refuses it."""

    @abc.abstractmethod
    async def complete(self, req: CompletionRequest) -> AsyncIterator[Chunk]:
        """Start a raw-prompt completion; same contract as chat."""

    @abc.abstractmethod
    async def embed(self, req: EmbedRequest) -> EmbedResult:
        """Embed every input."""

    async def unload(self, model: str) -> None:  # noqa: B027 (optional, not abstract)
        """Free the memory a model holds, for the scheduler's switches. Servers that do not load
        models (OpenAI-compatible) have nothing to do."""

    @abc.abstractmethod
    async def discover(self, timeout: float) -> Discovery:
        """Models served and loaded; raises if the backend is down."""
