"""A fake Ollama server: the native /api surface (plus Ollama's OpenAI-compatible /v1), with state."""

from __future__ import annotations

import hashlib
import ipaddress
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from aiohttp import web

from .base import _STATE_KEY, Result, Streamed, Whole, dumps
from .fake_openai import OpenAIRoutes
from .replies import (
    Reply,
    count_words,
    fake_embedding,
    messages_prompt_tokens,
    plan_chat,
    plan_completion,
    tool_names_of,
)

NDJSON = "application/x-ndjson"
JSON_CT = "application/json; charset=utf-8"
DEFAULT_KEEP_ALIVE = 300.0
FOREVER = 292 * 365 * 86400.0
_DIGEST_RE = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
_DURATION_RE = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def normalize_model(name: str) -> str:
    """Ollama's name normalisation: a name without a tag gets ":latest"."""
    name = name.strip()
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def host_allowed(host: str | None) -> bool:
    """Ollama's Host check for a server bound to loopback."""
    value = (host or "").strip().lower()
    if value.startswith("["):
        end = value.find("]")
        hostname = value[1:end] if end > 0 else value
    elif value.count(":") == 1:
        hostname = value.rsplit(":", 1)[0]
    else:
        hostname = value
    if hostname in ("", "localhost"):
        return True
    try:
        ip = ipaddress.ip_address(hostname)
    except ValueError:
        return hostname.endswith((".localhost", ".local", ".internal"))
    return ip.is_loopback or ip.is_private or ip.is_unspecified


def parse_keep_alive(value: Any) -> float | None:
    """Seconds (negative = forever); None when absent or unparsable. Numbers are seconds, strings are
    Go durations ("5m", "1h30m", "-1m") or plain numbers of seconds ("0", "-1")."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        parts = _DURATION_RE.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _UNIT[u] for n, u in parts)
    return None


def _iso_local(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).astimezone().isoformat(timespec="microseconds")


def _created_at() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _family(base: str) -> str:
    m = re.match(r"[a-z]+", base.lower())
    word = m.group(0) if m else "llama"
    return {
        "qwen": "qwen2",
        "nomic": "nomic-bert",
        "mxbai": "bert",
        "all": "bert",
        "phi": "phi3",
        "deepseek": "qwen2",
        "gemma": "gemma3",
        "mistral": "llama",
    }.get(word, word)


@dataclass
class ModelEntry:
    name: str
    digest: str
    size: int
    details: dict[str, Any]
    parameter_count: int
    modified_at: float = field(default_factory=time.time)

    @property
    def is_embedding(self) -> bool:
        return "embed" in self.name

    @property
    def capabilities(self) -> list[str]:
        caps = ["completion", "tools"]
        if self.is_embedding:
            caps.append("embedding")
        return caps


def make_model_entry(name: str) -> ModelEntry:
    """Plausible metadata for a model name: size from a "<N>b"/"<N>m" in the name (default 7B),
    family from the leading letters, Q4_K_M (F16 for embedding models)."""
    base = name.rsplit("/", 1)[-1]
    m = re.search(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)([bm])(?![a-z])", base.lower())
    if m:
        count = int(float(m.group(1)) * (1e9 if m.group(2) == "b" else 1e6))
    elif "embed" in name:
        count = 137_000_000
    else:
        count = 7_000_000_000
    embedding = "embed" in name
    size = int(count * (2.0 if embedding else 0.6125))
    psize = f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M"
    family = _family(base.split(":", 1)[0])
    details = {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": psize,
        "quantization_level": "F16" if embedding else "Q4_K_M",
    }
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
    return ModelEntry(name, digest, size, details, count)


class FakeOllama(OpenAIRoutes):
    """A fake Ollama server on 127.0.0.1 (see the report for the full behaviour)."""

    owned_by = "library"

    def __init__(
        self,
        models: Iterable[str] = ("llama3.1:8b",),
        loaded: Iterable[str] = (),
        host_check: bool = True,
        version: str = "0.33.0",
        pullable: Iterable[str] | None = None,
        context_length: int = 4096,
    ) -> None:
        super().__init__()
        self.host_check = host_check
        self.version = version
        self.context_length = context_length
        self.pullable: set[str] | None = None if pullable is None else {normalize_model(p) for p in pullable}
        self._models: dict[str, ModelEntry] = {}
        self._loaded: dict[str, float] = {}  # name -> expiry (epoch seconds)
        self._blobs: set[str] = set()
        for name in models:
            self.add_model(name)
        for name in loaded:
            self.load(name)

    # ------------------------------------------------------------------ state helpers (thread-safe)
    @property
    def models(self) -> list[str]:
        with self._cond:
            return list(self._models)

    @property
    def loaded(self) -> list[str]:
        """Names currently loaded (expired keep_alive removed), longest expiry first."""
        with self._cond:
            return [n for n, _ in self._live_loaded()]

    @property
    def blobs(self) -> set[str]:
        """Known blob digests as "sha256:<hex>"."""
        with self._cond:
            return {f"sha256:{h}" for h in self._blobs}

    def add_model(self, name: str) -> ModelEntry:
        entry = make_model_entry(normalize_model(name))
        with self._cond:
            self._models[entry.name] = entry
        return entry

    def remove_model(self, name: str) -> None:
        n = normalize_model(name)
        with self._cond:
            self._models.pop(n, None)
            self._loaded.pop(n, None)

    def load(self, name: str, keep_alive: float = DEFAULT_KEEP_ALIVE) -> None:
        """Mark a model loaded for ``keep_alive`` seconds (negative = forever)."""
        n = normalize_model(name)
        with self._cond:
            self._loaded[n] = time.time() + (FOREVER if keep_alive < 0 else keep_alive)

    def unload(self, name: str) -> None:
        with self._cond:
            self._loaded.pop(normalize_model(name), None)

    def add_blob(self, data: bytes) -> str:
        hexd = hashlib.sha256(data).hexdigest()
        with self._cond:
            self._blobs.add(hexd)
        return f"sha256:{hexd}"

    def _live_loaded(self) -> list[tuple[str, float]]:
        now = time.time()
        for n in [n for n, exp in self._loaded.items() if exp <= now]:
            del self._loaded[n]
        return sorted(self._loaded.items(), key=lambda kv: -kv[1])

    def _find(self, name: str) -> ModelEntry | None:
        with self._cond:
            return self._models.get(normalize_model(name))

    def _touch(self, name: str, keep_alive: float | None) -> bool:
        """Serving a model loads it; returns whether it was already loaded."""
        n = normalize_model(name)
        ka = DEFAULT_KEEP_ALIVE if keep_alive is None else keep_alive
        with self._cond:
            was = n in dict(self._live_loaded())
            if ka == 0:
                self._loaded.pop(n, None)
            else:
                self._loaded[n] = time.time() + (FOREVER if ka < 0 else ka)
        return was

    # OpenAIRoutes hooks
    def _lookup_model(self, name: str) -> str | None:
        entry = self._find(name)
        return entry.name if entry else None

    def _model_ids(self) -> list[tuple[str, int]]:
        with self._cond:
            return [(e.name, int(e.modified_at)) for e in self._models.values()]

    def _on_serve(self, model: str) -> None:
        self._touch(model, None)

    # ------------------------------------------------------------------ server plumbing
    def _setup_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self._root)
        r.add_get("/api/version", self._version)
        r.add_get("/api/tags", self._tags)
        r.add_get("/api/ps", self._ps)
        r.add_post("/api/show", self._show)
        r.add_post("/api/chat", self._chat)
        r.add_post("/api/generate", self._generate)
        r.add_post("/api/embed", self._embed)
        r.add_post("/api/embeddings", self._embeddings)
        r.add_post("/api/pull", self._pull)
        r.add_post("/api/push", self._push)
        r.add_delete("/api/delete", self._delete)
        r.add_post("/api/copy", self._copy)
        r.add_head("/api/blobs/{digest}", self._blob_head)
        r.add_post("/api/blobs/{digest}", self._blob_post)
        r.add_post("/api/create", self._create)
        self._add_openai_routes(app)

    async def _gatekeeper(self, request: web.Request) -> web.StreamResponse | None:
        if not self.host_check:
            return None
        if not host_allowed(request.headers.get("Host")):
            return web.Response(status=403)
        if request.method == "OPTIONS":
            return web.Response(status=204)
        return None

    def _error(
        self, status: int, message: str | None, request: web.Request, headers: dict[str, str] | None = None
    ) -> web.Response:
        if request.path.startswith("/v1/"):
            return self._openai_error(status, message, request, headers)
        if message is None:
            body = request.get(_STATE_KEY, {}).get("json")
            model = body.get("model") if isinstance(body, dict) else None
            message = _default_ollama_message(status, model if isinstance(model, str) else "")
        return _err(status, message, headers)

    # ------------------------------------------------------------------ informational endpoints
    async def _root(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="Ollama is running", content_type="text/plain")

    async def _version(self, request: web.Request) -> web.StreamResponse:
        return _json({"version": self.version})

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        with self._cond:
            entries = list(self._models.values())
        return _json(
            {
                "models": [
                    {
                        "name": e.name,
                        "model": e.name,
                        "modified_at": _iso_local(e.modified_at),
                        "size": e.size,
                        "digest": e.digest,
                        "details": e.details,
                    }
                    for e in entries
                ]
            }
        )

    async def _ps(self, request: web.Request) -> web.StreamResponse:
        with self._cond:
            live = self._live_loaded()
            entries = [(self._models.get(n) or make_model_entry(n), exp) for n, exp in live]
        return _json(
            {
                "models": [
                    {
                        "name": e.name,
                        "model": e.name,
                        "size": e.size,
                        "digest": e.digest,
                        "details": e.details,
                        "expires_at": _iso_local(exp),
                        "size_vram": e.size,
                        "context_length": self.context_length,
                    }
                    for e, exp in entries
                ]
            }
        )

    async def _show(self, request: web.Request) -> web.StreamResponse:
        body, err = await self._parse_json(request)
        if err is not None or not isinstance(body, dict):
            return _err(400, err or "invalid request body")
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            return _err(400, "model is required")
        e = self._find(name)
        if e is None:
            return _err(404, f"model '{name}' not found")
        family = e.details["family"]
        return _json(
            {
                "license": "",
                "modelfile": (
                    f'# Modelfile generated by "ollama show"\n# To build a new Modelfile based on this, '
                    f"replace FROM with:\n# FROM {e.name}\n\nFROM /root/.ollama/models/blobs/sha256-"
                    f'{e.digest}\nTEMPLATE """{{{{ .Prompt }}}}"""\nPARAMETER stop "<|eot_id|>"\n'
                ),
                "parameters": 'stop                           "<|eot_id|>"',
                "template": "{{ .Prompt }}",
                "details": e.details,
                "model_info": {
                    "general.architecture": family,
                    "general.basename": e.name.split(":", 1)[0],
                    "general.file_type": 15,
                    "general.parameter_count": e.parameter_count,
                    "general.quantization_version": 2,
                    f"{family}.context_length": 131072,
                    f"{family}.embedding_length": 4096,
                    f"{family}.block_count": 32,
                },
                "capabilities": e.capabilities,
                "modified_at": _iso_local(e.modified_at),
            }
        )

    # ------------------------------------------------------------------ generation endpoints
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generation(request, self._produce_chat)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        return await self._generation(request, self._produce_generate)

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        return await self._generation(request, self._produce_embed)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._generation(request, self._produce_embeddings)

    async def _model_request(self, request: web.Request) -> tuple[dict[str, Any], ModelEntry] | web.Response:
        body, err = await self._parse_json(request)
        if err is not None:
            return _err(400, err)
        if not isinstance(body, dict):
            return _err(400, "json: cannot unmarshal request body into a request object")
        name = body.get("model")
        if not isinstance(name, str) or not name:
            return _err(400, "model is required")
        entry = self._find(name)
        if entry is None:
            return _err(404, f"model '{name}' not found")
        return body, entry

    def _load_or_unload(self, body: dict[str, Any], entry: ModelEntry, key: str, empty: Any) -> Whole:
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        reason = "unload" if keep_alive == 0 else "load"
        self._touch(entry.name, keep_alive)
        payload: dict[str, Any] = {
            "model": body["model"],
            "created_at": _created_at(),
            key: empty,
            "done": True,
            "done_reason": reason,
        }
        return Whole(dumps(payload), JSON_CT)

    async def _produce_chat(self, request: web.Request) -> Result:
        got = await self._model_request(request)
        if isinstance(got, web.Response):
            return got
        body, entry = got
        messages = body.get("messages")
        if messages is not None and not isinstance(messages, list):
            return _err(400, "json: cannot unmarshal messages")
        if not messages:
            return self._load_or_unload(body, entry, "message", {"role": "assistant", "content": ""})
        was_loaded = self._touch(entry.name, parse_keep_alive(body.get("keep_alive")))
        reply = plan_chat(
            messages, tool_names_of(body.get("tools")), bool(body.get("format")), _num_predict(body)
        )
        prompt_tokens = messages_prompt_tokens(messages)
        model = body["model"]

        def msg(content: str, **extra: Any) -> dict[str, Any]:
            return {"role": "assistant", "content": content, **extra}

        if reply.kind == "tool_call":
            call = {
                "id": reply.call_id,
                "function": {"index": 0, "name": reply.tool_name, "arguments": reply.tool_args},
            }
            parts = [msg("", tool_calls=[call])]
            full = msg("", tool_calls=[call])
        else:
            parts = [msg(p) for p in reply.pieces]
            full = msg(reply.text)
        stats = _stats(prompt_tokens, len(parts), was_loaded)
        done_reason = reply.finish
        if body.get("stream") is False:
            return Whole(
                dumps(
                    {
                        "model": model,
                        "created_at": _created_at(),
                        "message": full,
                        "done": True,
                        "done_reason": done_reason,
                        **stats,
                    }
                ),
                JSON_CT,
            )
        chunks = [
            _line({"model": model, "created_at": _created_at(), "message": p, "done": False}) for p in parts
        ]
        chunks.append(
            _line(
                {
                    "model": model,
                    "created_at": _created_at(),
                    "message": msg(""),
                    "done": True,
                    "done_reason": done_reason,
                    **stats,
                }
            )
        )
        return Streamed(chunks, 1, NDJSON, error_chunk=_error_line)

    async def _produce_generate(self, request: web.Request) -> Result:
        got = await self._model_request(request)
        if isinstance(got, web.Response):
            return got
        body, entry = got
        prompt = body.get("prompt") or ""
        system = body.get("system") or ""
        if not isinstance(prompt, str) or not isinstance(system, str):
            return _err(400, "json: cannot unmarshal prompt")
        if not prompt and not system and not body.get("template"):
            return self._load_or_unload(body, entry, "response", "")
        was_loaded = self._touch(entry.name, parse_keep_alive(body.get("keep_alive")))
        reply: Reply = plan_completion(prompt, bool(body.get("format")), _num_predict(body))
        prompt_tokens = count_words([system, prompt])
        stats = _stats(prompt_tokens, len(reply.pieces), was_loaded)
        model = body["model"]
        final = {"done": True, "done_reason": reply.finish, "context": [1, 2, 3], **stats}
        if body.get("stream") is False:
            return Whole(
                dumps({"model": model, "created_at": _created_at(), "response": reply.text, **final}), JSON_CT
            )
        chunks = [
            _line({"model": model, "created_at": _created_at(), "response": p, "done": False})
            for p in reply.pieces
        ]
        chunks.append(_line({"model": model, "created_at": _created_at(), "response": "", **final}))
        return Streamed(chunks, 1, NDJSON, error_chunk=_error_line)

    async def _produce_embed(self, request: web.Request) -> Result:
        got = await self._model_request(request)
        if isinstance(got, web.Response):
            return got
        body, entry = got
        was_loaded = self._touch(entry.name, parse_keep_alive(body.get("keep_alive")))
        raw = body.get("input")
        if raw is None:
            return Whole(dumps({"model": body["model"], "embeddings": []}), JSON_CT)
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            inputs = list(raw)
        else:
            return _err(400, "invalid input type")
        dims_raw = body.get("dimensions")
        dims = (
            dims_raw if isinstance(dims_raw, int) and not isinstance(dims_raw, bool) and dims_raw > 0 else 8
        )
        load = 1_000_000 if was_loaded else 250_000_000
        tokens = count_words(inputs)
        return Whole(
            dumps(
                {
                    "model": body["model"],
                    "embeddings": [fake_embedding(t, dims) for t in inputs],
                    "total_duration": load + tokens * 1_000_000 + 500_000,
                    "load_duration": load,
                    "prompt_eval_count": tokens,
                }
            ),
            JSON_CT,
        )

    async def _produce_embeddings(self, request: web.Request) -> Result:
        got = await self._model_request(request)
        if isinstance(got, web.Response):
            return got
        body, entry = got
        self._touch(entry.name, parse_keep_alive(body.get("keep_alive")))
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            return _err(400, "invalid prompt")
        return Whole(dumps({"embedding": fake_embedding(prompt) if prompt else []}), JSON_CT)

    # ------------------------------------------------------------------ model management
    async def _named(self, request: web.Request, *keys: str) -> tuple[dict[str, Any], str] | web.Response:
        body, err = await self._parse_json(request)
        if err is not None or not isinstance(body, dict):
            return _err(400, err or "invalid request body")
        for key in keys:
            name = body.get(key)
            if isinstance(name, str) and name:
                return body, name
        return _err(400, "model is required")

    def _progress(
        self, body: dict[str, Any], lines: list[dict[str, Any]], on_complete: Callable[[], None] | None = None
    ) -> Result:
        if body.get("stream") is False:
            if on_complete is not None:
                on_complete()
            return Whole(dumps(lines[-1]), JSON_CT)
        return Streamed(
            [_line(x) for x in lines], 1, NDJSON, error_chunk=_error_line, on_complete=on_complete
        )

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        got = await self._named(request, "model", "name")
        if isinstance(got, web.Response):
            return got
        body, name = got
        n = normalize_model(name)
        if self.pullable is not None and n not in self.pullable:
            error = "pull model manifest: file does not exist"
            if body.get("stream") is False:
                return _err(500, error)
            return await self._send(
                request, Streamed([_line({"status": "pulling manifest"}), _line({"error": error})], 0, NDJSON)
            )
        entry = make_model_entry(n)
        lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        for digest, total in _layers(entry):
            for completed in (0, total // 2, total):
                line: dict[str, Any] = {"status": f"pulling {digest[7:19]}", "digest": digest, "total": total}
                if completed:
                    line["completed"] = completed
                lines.append(line)
        lines += [
            {"status": "verifying sha256 digest"},
            {"status": "writing manifest"},
            {"status": "success"},
        ]

        def done() -> None:
            with self._cond:
                self._models[n] = replace(entry, modified_at=time.time())

        return await self._send(request, self._progress(body, lines, done))

    async def _push(self, request: web.Request) -> web.StreamResponse:
        got = await self._named(request, "model", "name")
        if isinstance(got, web.Response):
            return got
        body, name = got
        entry = self._find(name)
        if entry is None:
            return _err(404, f"model '{name}' not found")
        lines: list[dict[str, Any]] = [{"status": "retrieving manifest"}]
        for digest, total in _layers(entry):
            for completed in (0, total // 2, total):
                line: dict[str, Any] = {"status": f"pushing {digest[7:19]}", "digest": digest, "total": total}
                if completed:
                    line["completed"] = completed
                lines.append(line)
        lines += [{"status": "pushing manifest"}, {"status": "success"}]
        return await self._send(request, self._progress(body, lines))

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        got = await self._named(request, "model", "name")
        if isinstance(got, web.Response):
            return got
        _, name = got
        n = normalize_model(name)
        with self._cond:
            if n not in self._models:
                return _err(404, f"model '{name}' not found")
            del self._models[n]
            self._loaded.pop(n, None)
        return web.Response(status=200)

    async def _copy(self, request: web.Request) -> web.StreamResponse:
        body, err = await self._parse_json(request)
        if err is not None or not isinstance(body, dict):
            return _err(400, err or "invalid request body")
        source, dest = body.get("source"), body.get("destination")
        if not isinstance(source, str) or not source or not isinstance(dest, str) or not dest:
            return _err(400, "source and destination are required")
        entry = self._find(source)
        if entry is None:
            return _err(404, f"model '{source}' not found")
        d = normalize_model(dest)
        with self._cond:
            self._models[d] = replace(entry, name=d, modified_at=time.time())
        return web.Response(status=200)

    async def _blob_head(self, request: web.Request) -> web.StreamResponse:
        m = _DIGEST_RE.match(request.match_info["digest"])
        if m is None:
            return _err(400, "invalid digest format")
        with self._cond:
            known = m.group(1) in self._blobs
        return web.Response(status=200 if known else 404)

    async def _blob_post(self, request: web.Request) -> web.StreamResponse:
        m = _DIGEST_RE.match(request.match_info["digest"])
        if m is None:
            return _err(400, "invalid digest format")
        data = await request.read()
        actual = hashlib.sha256(data).hexdigest()
        if actual != m.group(1):
            return _err(400, f'digest mismatch, expected "sha256:{m.group(1)}", got "sha256:{actual}"')
        with self._cond:
            existed = actual in self._blobs
            self._blobs.add(actual)
        return web.Response(status=200 if existed else 201)

    async def _create(self, request: web.Request) -> web.StreamResponse:
        got = await self._named(request, "model", "name")
        if isinstance(got, web.Response):
            return got
        body, name = got
        files = body.get("files") or {}
        base_name = body.get("from")
        if not isinstance(files, dict):
            return _err(400, "invalid files")
        if not files and not base_name:
            return _err(400, "neither 'from' or 'files' was specified")
        lines: list[dict[str, Any]] = []
        base: ModelEntry | None = None
        if base_name:
            base = self._find(str(base_name))
            if base is None:
                return _err(404, f"model '{base_name}' not found")
            lines.append({"status": f"using existing layer sha256:{base.digest}"})
        hexes: list[str] = []
        for fname, digest in files.items():
            m = _DIGEST_RE.match(str(digest))
            if m is None:
                return _err(400, f"invalid digest for file {fname!r}")
            with self._cond:
                known = m.group(1) in self._blobs
            if not known:
                return _err(400, f"blob sha256:{m.group(1)} for file {fname!r} not found; upload it first")
            hexes.append(m.group(1))
        if hexes:
            lines.append({"status": "parsing GGUF"})
            lines += [{"status": f"using existing layer sha256:{h}"} for h in hexes]
        lines += [{"status": "writing manifest"}, {"status": "success"}]
        n = normalize_model(name)
        digest = hashlib.sha256(
            (n + "|" + ",".join(sorted(hexes)) + "|" + str(base_name)).encode()
        ).hexdigest()
        entry = (
            replace(base, name=n, digest=digest)
            if base is not None
            else replace(make_model_entry(n), digest=digest)
        )

        def done() -> None:
            with self._cond:
                self._models[n] = replace(entry, modified_at=time.time())

        return await self._send(request, self._progress(body, lines, done))


def _num_predict(body: dict[str, Any]) -> int | None:
    options = body.get("options")
    if isinstance(options, dict):
        n = options.get("num_predict")
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
    return None


def _stats(prompt_tokens: int, eval_count: int, was_loaded: bool) -> dict[str, int]:
    load = 1_000_000 if was_loaded else 250_000_000
    ped = prompt_tokens * 1_000_000
    ed = eval_count * 10_000_000
    return {
        "total_duration": load + ped + ed + 500_000,
        "load_duration": load,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": ped,
        "eval_count": eval_count,
        "eval_duration": ed,
    }


def _layers(entry: ModelEntry) -> list[tuple[str, int]]:
    def d(i: int) -> str:
        return "sha256:" + hashlib.sha256(f"{entry.name}#{i}".encode()).hexdigest()

    return [(d(0), entry.size), (d(1), 7_000 + len(entry.name)), (d(2), 485)]


def _line(obj: Any) -> bytes:
    return dumps(obj) + b"\n"


def _error_line(message: str) -> bytes:
    return _line({"error": message})


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=dumps(obj), headers={"Content-Type": JSON_CT})


def _err(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=dumps({"error": message}), headers={"Content-Type": JSON_CT, **(headers or {})}
    )


def _default_ollama_message(status: int, model: str) -> str:
    defaults = {
        400: "invalid request",
        401: "unauthorized",
        403: "forbidden",
        404: f"model '{model}' not found",
        429: "too many requests",
        499: "client disconnected",
        500: "llama runner process has terminated: exit status 2",
        502: "bad gateway",
        503: "server busy, please try again.  maximum pending requests exceeded",
    }
    if status in defaults:
        return defaults[status]
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"
