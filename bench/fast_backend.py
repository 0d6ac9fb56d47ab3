"""A minimal fake Ollama for benchmarking: as little CPU per request as Python allows.

    python bench/fast_backend.py --port 18000

A raw asyncio Protocol on uvloop with httptools parsing, HTTP/1.1 keep-alive (and pipelining).
It serves one model, ``bench:latest``:

- ``GET /api/tags``, ``/api/ps``, ``/api/version``, ``/v1/models``: canned discovery answers;
- ``POST /api/chat``: with ``"stream": false`` one canned Ollama-shaped final object (done,
  token counts, durations); otherwise ``options.num_predict`` NDJSON lines (default 100), each
  written separately (one chunk of a chunked response, the loop yielded in between, like a model
  emitting tokens), then the final ``done`` line;
- ``POST /v1/chat/completions``: a canned non-streaming OpenAI completion.

No timing, no logging, no JSON parsing on the non-streaming path: responses are prebuilt bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import time
from email.utils import formatdate
from typing import cast

import httptools
import uvloop

MODEL = "bench:latest"
CREATED = "2025-01-01T00:00:00Z"

_TAGS = (
    b'{"models":[{"name":"bench:latest","model":"bench:latest","modified_at":"2025-01-01T00:00:00Z",'
    b'"size":1000000,"digest":"0000000000000000000000000000000000000000000000000000000000000000",'
    b'"details":{"parent_model":"","format":"gguf","family":"llama","families":["llama"],'
    b'"parameter_size":"1B","quantization_level":"Q4_0"}}]}'
)
_PS = (
    b'{"models":[{"name":"bench:latest","model":"bench:latest","size":1000000,'
    b'"digest":"0000000000000000000000000000000000000000000000000000000000000000",'
    b'"details":{"parent_model":"","format":"gguf","family":"llama","families":["llama"],'
    b'"parameter_size":"1B","quantization_level":"Q4_0"},'
    b'"expires_at":"2099-01-01T00:00:00Z","size_vram":1000000,"context_length":4096}]}'
)
_VERSION = b'{"version":"0.12.0"}'
_V1_MODELS = (
    b'{"object":"list","data":[{"id":"bench:latest","object":"model","created":1735689600,'
    b'"owned_by":"library"}]}'
)
_CHAT_FINAL = (
    b'{"model":"bench:latest","created_at":"2025-01-01T00:00:00.000000Z",'
    b'"message":{"role":"assistant","content":"Hello! How can I help you today?"},'
    b'"done_reason":"stop","done":true,"total_duration":123456789,"load_duration":1234567,'
    b'"prompt_eval_count":26,"prompt_eval_duration":2345678,"eval_count":10,"eval_duration":98765432}'
)
_STREAM_LINE = (
    b'{"model":"bench:latest","created_at":"2025-01-01T00:00:00.000000Z",'
    b'"message":{"role":"assistant","content":"tok"},"done":false}\n'
)
_STREAM_DONE = (
    b'{"model":"bench:latest","created_at":"2025-01-01T00:00:00.000000Z",'
    b'"message":{"role":"assistant","content":""},"done_reason":"stop","done":true,'
    b'"total_duration":123456789,"load_duration":1234567,"prompt_eval_count":26,'
    b'"prompt_eval_duration":2345678,"eval_count":%d,"eval_duration":98765432}\n'
)
_OPENAI_CHAT = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1735689600,"model":"bench:latest",'
    b'"system_fingerprint":"fp_ollama","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"Hello! How can I help you today?"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":26,"completion_tokens":10,"total_tokens":36}}'
)
_NOT_FOUND = b'{"error":"not found"}'

_STREAM_FALSE = re.compile(rb'"stream"\s*:\s*false')
_NUM_PREDICT = re.compile(rb'"num_predict"\s*:\s*(\d+)')
_DEFAULT_CHUNKS = 100

JSON_TYPE = b"application/json; charset=utf-8"


class _Date:
    """The Date header, formatted once a second rather than per response."""

    value: bytes = b""

    @classmethod
    def tick(cls) -> None:
        cls.value = formatdate(time.time(), usegmt=True).encode()
        asyncio.get_running_loop().call_later(1.0, cls.tick)


def _response(status: bytes, body: bytes, ctype: bytes = JSON_TYPE) -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: "
        + ctype
        + b"\r\nDate: "
        + _Date.value
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class FakeOllama(asyncio.Protocol):
    __slots__ = ("_body", "_closed", "_parser", "_paused", "_queue", "_streaming", "_transport", "_url")

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._closed = False
        self._streaming: asyncio.Task[None] | None = None
        # Requests that arrived (pipelined) while a stream was still being written.
        self._queue: list[tuple[bytes, bytes, bytes]] = []
        self._paused: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(_response(b"400 Bad Request", b'{"error":"bad request"}'))
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._streaming is not None:
            self._streaming.cancel()
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)

    def pause_writing(self) -> None:
        if self._paused is None or self._paused.done():
            self._paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self._parser.get_method()
        body = b"".join(self._body)
        if self._streaming is not None:
            self._queue.append((method, self._url, body))
            return
        self._handle(method, self._url, body)

    # -- requests ---------------------------------------------------------------------------

    def _handle(self, method: bytes, url: bytes, body: bytes) -> None:
        path = url.split(b"?", 1)[0]
        if method == b"POST" and path == b"/api/chat":
            if _STREAM_FALSE.search(body):
                self._send(_response(b"200 OK", _CHAT_FINAL))
            else:
                m = _NUM_PREDICT.search(body)
                n = int(m.group(1)) if m else _DEFAULT_CHUNKS
                self._streaming = asyncio.get_running_loop().create_task(self._stream(n))
            return
        if method in (b"GET", b"HEAD"):
            body_out = {
                b"/api/tags": _TAGS,
                b"/api/ps": _PS,
                b"/api/version": _VERSION,
                b"/v1/models": _V1_MODELS,
                b"/": b"Ollama is running",
            }.get(path)
            if body_out is not None:
                ctype = b"text/plain; charset=utf-8" if path == b"/" else JSON_TYPE
                resp = _response(b"200 OK", body_out, ctype)
                if method == b"HEAD":
                    resp = resp[: resp.index(b"\r\n\r\n") + 4]
                self._send(resp)
                return
        if method == b"POST" and path == b"/v1/chat/completions":
            self._send(_response(b"200 OK", _OPENAI_CHAT))
            return
        self._send(_response(b"404 Not Found", _NOT_FOUND))

    async def _stream(self, n: int) -> None:
        t = self._transport
        assert t is not None
        try:
            t.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nDate: "
                + _Date.value
                + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            line = _chunk(_STREAM_LINE)
            for _ in range(n):
                if self._closed:
                    return
                t.write(line)
                if self._paused is not None and not self._paused.done():
                    await self._paused
                else:
                    await asyncio.sleep(0)  # one write per loop turn: separate sends, like tokens
            if self._closed:
                return
            t.write(_chunk(_STREAM_DONE % n) + b"0\r\n\r\n")
        finally:
            self._streaming = None
        while self._queue and self._streaming is None and not self._closed:
            self._handle(*self._queue.pop(0))

    def _send(self, data: bytes) -> None:
        if self._transport is not None and not self._closed:
            self._transport.write(data)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    _Date.tick()
    server = await loop.create_server(FakeOllama, host, port, backlog=1024, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description="Minimal fake Ollama backend for benchmarks.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
