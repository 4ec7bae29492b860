"""A loopback emulator of the Gemini REST API (``generativelanguage.googleapis.com``).

Point the real Gemini CLI at it with ``GOOGLE_GEMINI_BASE_URL=emulator.base_url``.
Stdlib only. Replies are scripted through a FIFO consumed one per generate request
(``streamGenerateContent`` or ``generateContent``); when the FIFO is empty a default
reply echoes the last user text. Every request is recorded for assertions.

Per-key quotas (``key_limits``, ``set_key_limits``) make it refuse generate requests with
Google's free-tier 429 once a key's requests per minute or per day, or tokens per day, are
spent, counted per key and model as Google does (see ``gemini_quota``); ``stats()`` (and
``GET /emulator/stats``) tell what was accepted when and what was refused. ``latency`` makes
every generate reply wait that long first, as the real API does.

Example::

    with GeminiEmulator() as emu:
        emu.script(text_reply("hello", prompt_tokens=12, candidates_tokens=3))
        emu.script(quota_exhausted("minute"))
        ...  # run the CLI with GOOGLE_GEMINI_BASE_URL=emu.base_url
        assert emu.generate_requests()[0].api_key == "k1"

As a process of its own (prints its base URL, serves until SIGTERM or SIGINT)::

    python -m tests.support.gemini_emulator --port 0 --key-limits '{"k1": {"rpm": 30}}' \
        --latency 0.2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Literal, TypeAlias, cast
from urllib.parse import parse_qs, urlsplit

from tests.support.gemini_quota import EmulatorStats, KeyLimits, QuotaBook, Rejection

__all__ = [
    "DEFAULT_EMBEDDING_DIMENSIONS",
    "STATS_PATH",
    "ErrorReply",
    "FunctionCallReply",
    "GeminiEmulator",
    "RecordedRequest",
    "Reply",
    "ReplyFactory",
    "TextReply",
    "Usage",
    "count_tokens",
    "embedding_for",
    "error_body",
    "function_call_reply",
    "invalid_api_key",
    "last_function_response",
    "last_user_text",
    "quota_exhausted",
    "quoting_tool_result",
    "shell_call",
    "slow_reply",
    "text_reply",
]

JSONObject: TypeAlias = dict[str, object]

DEFAULT_EMBEDDING_DIMENSIONS = 768
STATS_PATH = "/emulator/stats"
GENERATE_ACTIONS = frozenset({"streamGenerateContent", "generateContent"})
_MODEL_PATH = re.compile(
    r"^/(?P<version>v1beta|v1alpha|v1)/models/(?P<model>[^/:]+):(?P<action>[A-Za-z]+)$"
)


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True)
class Usage:
    """Token counts reported in ``usageMetadata``; ``total`` is prompt + candidates."""

    prompt_tokens: int
    candidates_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """``totalTokenCount`` as Google computes it."""
        return self.prompt_tokens + self.candidates_tokens

    def to_json(self) -> JSONObject:
        """The ``usageMetadata`` object."""
        return {
            "promptTokenCount": self.prompt_tokens,
            "candidatesTokenCount": self.candidates_tokens,
            "totalTokenCount": self.total_tokens,
            "cachedContentTokenCount": self.cached_tokens,
        }


@dataclass(frozen=True)
class TextReply:
    """A model text answer, streamed as ``chunks`` SSE events ``delay`` seconds apart.

    ``usage`` None means: estimate from the request (~4 characters a token).
    """

    text: str
    usage: Usage | None = None
    chunks: int = 3
    delay: float = 0.0


@dataclass(frozen=True)
class FunctionCallReply:
    """A model turn that calls a tool (one ``functionCall`` part), optionally after some text."""

    name: str
    args: Mapping[str, object]
    text: str = ""
    usage: Usage | None = None


@dataclass(frozen=True)
class ErrorReply:
    """An HTTP error with a Google-format JSON body (``{"error": {...}}``)."""

    http_status: int
    body: JSONObject

    @property
    def status(self) -> str:
        """The ``error.status`` string, e.g. ``RESOURCE_EXHAUSTED``."""
        error = cast(JSONObject, self.body.get("error", {}))
        return str(error.get("status", ""))

    @property
    def message(self) -> str:
        """The ``error.message`` string."""
        error = cast(JSONObject, self.body.get("error", {}))
        return str(error.get("message", ""))


Reply: TypeAlias = TextReply | FunctionCallReply | ErrorReply
ReplyFactory: TypeAlias = Callable[["RecordedRequest"], Reply]


def text_reply(
    text: str,
    *,
    prompt_tokens: int | None = None,
    candidates_tokens: int | None = None,
    cached_tokens: int = 0,
    chunks: int = 3,
) -> TextReply:
    """A text answer split into ``chunks`` SSE events with the given usage counts.

    Without ``prompt_tokens`` the usage is estimated from the request at serve time;
    without ``candidates_tokens`` it is estimated from ``text``.
    """
    usage: Usage | None = None
    if prompt_tokens is not None:
        out = candidates_tokens if candidates_tokens is not None else count_tokens(text)
        usage = Usage(prompt_tokens, out, cached_tokens)
    return TextReply(text, usage=usage, chunks=chunks)


def slow_reply(text: str = "", *, chunks: int = 60, delay: float = 0.5) -> TextReply:
    """A text answer streamed as ``chunks`` events ``delay`` s apart: long enough to cancel."""
    body = text or " ".join(f"word{i}" for i in range(chunks))
    return TextReply(body, usage=None, chunks=chunks, delay=delay)


def function_call_reply(
    name: str, args: Mapping[str, object], *, text: str = "", usage: Usage | None = None
) -> FunctionCallReply:
    """A model turn calling tool ``name`` with ``args``."""
    return FunctionCallReply(name, dict(args), text=text, usage=usage)


def shell_call(
    command: str, *, description: str | None = None, usage: Usage | None = None
) -> FunctionCallReply:
    """A ``run_shell_command`` call with ``{"command": command}`` (and ``description``)."""
    args: JSONObject = {"command": command}
    if description is not None:
        args["description"] = description
    return FunctionCallReply("run_shell_command", args, usage=usage)


def error_body(
    code: int, status: str, message: str, details: list[JSONObject] | None = None
) -> JSONObject:
    """Google's error envelope: ``{"error": {"code", "message", "status", "details"?}}``."""
    error: JSONObject = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return {"error": error}


def quota_exhausted(
    per: Literal["minute", "day"] = "minute",
    *,
    retry_seconds: int = 26,
    model: str = "gemini-2.5-flash",
    limit: int | None = None,
    counting: Literal["requests", "input_tokens"] = "requests",
) -> ErrorReply:
    """A 429 RESOURCE_EXHAUSTED exactly as the Gemini API sends it for a free-tier key.

    ``per="minute"`` carries quotaId ``GenerateRequestsPerMinutePerProjectPerModel-FreeTier``,
    ``per="day"`` carries ``GenerateRequestsPerDayPerProjectPerModel-FreeTier``; with
    ``counting="input_tokens"`` the quota is the input-token one
    (``GenerateContentInputTokensPerModelPerMinute-FreeTier``, or ``PerDay``). The message
    ends with ``Please retry in {retry_seconds}s.`` and RetryInfo.retryDelay is
    ``"{retry_seconds}s"``.
    """
    period = "PerMinute" if per == "minute" else "PerDay"
    if counting == "requests":
        quota_id = f"GenerateRequests{period}PerProjectPerModel-FreeTier"
        metric = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
        value = limit if limit is not None else (10 if per == "minute" else 250)
    else:
        quota_id = f"GenerateContentInputTokensPerModel{period}-FreeTier"
        metric = "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count"
        value = limit if limit is not None else 250_000
    message = (
        "You exceeded your current quota, please check your plan and billing details. "
        "For more information on this error, head to: "
        "https://ai.google.dev/gemini-api/docs/rate-limits. "
        "To monitor your current usage, head to: https://ai.dev/usage?tab=rate-limit. \n"
        f"* Quota exceeded for metric: {metric}, limit: {value}, model: {model}\n"
        f"Please retry in {retry_seconds}s."
    )
    details: list[JSONObject] = [
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": metric,
                    "quotaId": quota_id,
                    "quotaDimensions": {"location": "global", "model": model},
                    "quotaValue": str(value),
                }
            ],
        },
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_seconds}s"},
    ]
    return ErrorReply(429, error_body(429, "RESOURCE_EXHAUSTED", message, details))


def invalid_api_key() -> ErrorReply:
    """The 400 INVALID_ARGUMENT / API_KEY_INVALID answer Google gives for a bad key."""
    message = "API key not valid. Please pass a valid API key."
    details: list[JSONObject] = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        },
        {
            "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
            "locale": "en-US",
            "message": message,
        },
    ]
    return ErrorReply(400, error_body(400, "INVALID_ARGUMENT", message, details))


# --------------------------------------------------------------------------- helpers


def _texts(value: object) -> Iterator[str]:
    """Every string under a ``"text"`` key, depth first."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "text" and isinstance(item, str):
                yield item
            else:
                yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)


def count_tokens(value: object) -> int:
    """Google's rule of thumb: about 4 characters a token (``value`` a string or a JSON body)."""
    chars = len(value) if isinstance(value, str) else sum(len(t) for t in _texts(value))
    return math.ceil(chars / 4)


def embedding_for(text: str, dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS) -> list[float]:
    """A deterministic unit vector seeded by the SHA-256 of ``text``."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    raw = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


def _split(text: str, pieces: int) -> list[str]:
    """``text`` cut into at most ``pieces`` non-empty consecutive parts, at word ends."""
    if not text:
        return [""]
    words = re.findall(r"\s*\S+\s*", text) or [text]
    if len(words) < pieces:
        pieces = max(1, min(pieces, len(text)))
        size = math.ceil(len(text) / pieces)
        return [text[i : i + size] for i in range(0, len(text), size)]
    per = math.ceil(len(words) / pieces)
    return ["".join(words[i : i + per]) for i in range(0, len(words), per)]


def last_user_text(body: object) -> str:
    """The last text part of a ``role: user`` content in a generate request body."""
    if not isinstance(body, dict):
        return ""
    contents = body.get("contents")
    if not isinstance(contents, list):
        return ""
    for content in reversed(contents):
        if not isinstance(content, dict) or content.get("role", "user") != "user":
            continue
        parts = content.get("parts")
        if not isinstance(parts, list):
            continue
        texts = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]
        if texts:
            return str(texts[-1])
    return ""


def last_function_response(body: object) -> JSONObject | None:
    """The ``response`` of the last ``functionResponse`` part of a generate request body:
    what the CLI sends the model back after running a tool (None if there is none)."""
    if not isinstance(body, dict) or not isinstance(body.get("contents"), list):
        return None
    for content in reversed(body["contents"]):
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in reversed(parts if isinstance(parts, list) else []):
            call = part.get("functionResponse") if isinstance(part, dict) else None
            if isinstance(call, dict) and isinstance(call.get("response"), dict):
                return cast(JSONObject, call["response"])
    return None


def quoting_tool_result(template: str) -> ReplyFactory:
    """A reply factory: a text answer that quotes the last tool result (``{result}`` in
    ``template``, the response as JSON), as a model reporting what its tool found would."""

    def reply(request: RecordedRequest) -> Reply:
        response = last_function_response(request.body)
        return text_reply(template.format(result=json.dumps(response)))

    return reply


# --------------------------------------------------------------------------- recording


@dataclass(frozen=True)
class RecordedRequest:
    """One request the emulator received."""

    method: str
    path: str
    query: Mapping[str, str]
    model: str | None
    action: str | None
    api_key: str | None
    body: JSONObject | None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_generate(self) -> bool:
        """True for ``streamGenerateContent`` and ``generateContent``."""
        return self.action in GENERATE_ACTIONS

    @property
    def user_text(self) -> str:
        """The last user text of a generate request ("" otherwise)."""
        return last_user_text(self.body)


# --------------------------------------------------------------------------- server


class _Server(ThreadingHTTPServer):
    """The HTTP server, holding a back-reference to its emulator."""

    daemon_threads = False
    block_on_close = True
    # socketserver's default backlog of 5 drops connections of a burst (clients then wait
    # for SYN retries, seconds): the real API takes hundreds at once.
    request_queue_size = 1024

    def __init__(self, emulator: GeminiEmulator, port: int) -> None:
        self.emulator = emulator
        super().__init__(("127.0.0.1", port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    """Routes each request to the emulator."""

    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, format: str, *args: object) -> None:
        """Silence the default stderr access log."""

    def do_GET(self) -> None:
        """Handle GET."""
        self.server.emulator._handle(self)

    def do_POST(self) -> None:
        """Handle POST."""
        self.server.emulator._handle(self)


class GeminiEmulator:
    """The emulator: a context manager serving on ``127.0.0.1`` (ephemeral port)."""

    def __init__(
        self,
        *,
        key_behaviours: Mapping[str, ErrorReply] | None = None,
        model_version: str | None = None,
        key_limits: Mapping[str, KeyLimits] | None = None,
        latency: float = 0.0,
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``key_behaviours``: API key -> the error every request with that key gets.

        ``model_version``: the ``modelVersion`` reported in replies (default: the path's model).
        ``key_limits``: API key -> its quotas (per model, see ``set_key_limits``).
        ``latency``: seconds every generate request waits before its reply (or its error).
        ``port``: where to listen (0: any free port). ``clock``: epoch seconds, for the quotas.
        """
        self._lock = threading.Lock()
        self._script: deque[Reply | ReplyFactory] = deque()
        self._records: list[RecordedRequest] = []
        self._keys: dict[str, ErrorReply] = dict(key_behaviours or {})
        self._model_version = model_version
        self._quotas = QuotaBook(key_limits, clock)
        self._latency = _check_latency(latency)
        self._port = port
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start serving in a background thread (what ``__enter__`` does)."""
        if self._server is not None:
            raise RuntimeError("GeminiEmulator is already running")
        self._stopping.clear()
        self._server = _Server(self, self._port)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="gemini-emulator", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving: wake slow replies, close the socket, join every thread. Idempotent."""
        self._stopping.set()
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> GeminiEmulator:
        """Start serving; returns the emulator."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop serving (see ``stop``)."""
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``; only valid inside the ``with`` block."""
        if self._server is None:
            raise RuntimeError("GeminiEmulator is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # scripting -------------------------------------------------------------

    def script(self, *replies: Reply | ReplyFactory) -> None:
        """Queue replies; each generate request consumes one (a factory gets the request)."""
        with self._lock:
            self._script.extend(replies)

    @property
    def pending(self) -> int:
        """How many scripted replies have not been consumed yet."""
        with self._lock:
            return len(self._script)

    def set_key_behaviour(self, api_key: str, reply: ErrorReply | None) -> None:
        """Make every request with ``api_key`` get ``reply`` (None clears it)."""
        with self._lock:
            if reply is None:
                self._keys.pop(api_key, None)
            else:
                self._keys[api_key] = reply

    def set_key_limits(
        self,
        api_key: str,
        *,
        rpm: int | None = None,
        rpd: int | None = None,
        tpd: int | None = None,
    ) -> None:
        """Limit ``api_key``, per model, to ``rpm`` generate requests in any 60 s, ``rpd`` a
        (Pacific) day and ``tpd`` reported tokens a day; all None removes its limits.

        Counts so far are kept. Over a limit a request gets ``quota_exhausted``: "minute"
        with the seconds until the window has room, or "day".
        """
        limits = KeyLimits(rpm, rpd, tpd)
        with self._lock:
            self._quotas.set_limits(api_key, None if limits == KeyLimits() else limits)

    def set_latency(self, seconds: float) -> None:
        """Make every generate request wait ``seconds`` before its reply."""
        self._latency = _check_latency(seconds)

    # recording -------------------------------------------------------------

    def stats(self) -> EmulatorStats:
        """Every generate request with a key that the quotas accepted (arrival times) or
        refused, and the tokens reported per key and model."""
        with self._lock:
            return self._quotas.stats()

    def rejections(self) -> dict[str, int]:
        """API key -> how many 429s its quotas caused."""
        return self.stats().rejections()

    def clear_stats(self) -> None:
        """Forget what the quotas counted (the limits stay)."""
        with self._lock:
            self._quotas.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every recorded request, oldest first."""
        with self._lock:
            return list(self._records)

    def generate_requests(self) -> list[RecordedRequest]:
        """The recorded generate requests (stream or not)."""
        return [r for r in self.requests if r.is_generate]

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self._records.clear()

    # serving ---------------------------------------------------------------

    def _handle(self, h: _Handler) -> None:
        """Parse, record and answer one request."""
        split = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length > 0 else b""
        body: JSONObject | None = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                self._send_json(
                    h, 400, error_body(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
                )
                return
            body = cast(JSONObject, parsed) if isinstance(parsed, dict) else {"_": parsed}
        if h.command == "GET" and split.path == STATS_PATH:
            self._send_json(h, 200, self.stats().to_json())
            return
        match = _MODEL_PATH.match(split.path)
        api_key = h.headers.get("x-goog-api-key") or query.get("key")
        record = RecordedRequest(
            method=h.command,
            path=split.path,
            query=query,
            model=match["model"] if match else None,
            action=match["action"] if match else None,
            api_key=api_key,
            body=body,
            headers={k.lower(): v for k, v in h.headers.items()},
        )
        with self._lock:
            self._records.append(record)
            forced = self._keys.get(api_key) if api_key is not None else None
        if match is None or h.command != "POST":
            msg = f"Method not found: {h.command} {split.path}"
            self._send_json(h, 404, error_body(404, "NOT_FOUND", msg))
            return
        action = match["action"]
        if action in GENERATE_ACTIONS:
            self._answer_generate(h, record, forced)
        elif forced is not None:
            self._send_json(h, forced.http_status, forced.body)
        elif action == "countTokens":
            self._send_json(h, 200, {"totalTokens": count_tokens(body or {})})
        elif action == "embedContent":
            self._send_json(h, 200, {"embedding": self._embed(body or {})})
        elif action == "batchEmbedContents":
            reqs = (body or {}).get("requests")
            items = reqs if isinstance(reqs, list) else []
            self._send_json(
                h, 200, {"embeddings": [self._embed(cast(JSONObject, r)) for r in items]}
            )
        else:
            msg = f"Method not found: {action}"
            self._send_json(h, 404, error_body(404, "NOT_FOUND", msg))

    def _answer_generate(
        self, h: _Handler, record: RecordedRequest, forced: ErrorReply | None
    ) -> None:
        """Count a generate request against its key's quotas, wait the latency, answer."""
        rejection: Rejection | None = None
        if forced is None and record.api_key is not None:
            with self._lock:
                rejection = self._quotas.admit(record.api_key, record.model or "")
        if self._latency and self._stopping.wait(self._latency):
            h.close_connection = True
            return
        if forced is not None:
            self._send_json(h, forced.http_status, forced.body)
        elif rejection is not None:
            reply = _quota_reply(rejection)
            self._send_json(h, reply.http_status, reply.body)
        else:
            self._generate(h, record, stream=record.action == "streamGenerateContent")

    @staticmethod
    def _embed(body: JSONObject) -> JSONObject:
        """``{"values": [...]}`` for an embedContent request body."""
        dims = body.get("outputDimensionality")
        size = dims if isinstance(dims, int) and dims > 0 else DEFAULT_EMBEDDING_DIMENSIONS
        text = "\n".join(_texts(body.get("content")))
        return {"values": embedding_for(text, size)}

    def _next_reply(self, record: RecordedRequest) -> Reply:
        """Pop the next scripted reply, or build the default echo."""
        with self._lock:
            item = self._script.popleft() if self._script else None
        if item is None:
            return TextReply(f"emulated reply to: {record.user_text}")
        if isinstance(item, TextReply | FunctionCallReply | ErrorReply):
            return item
        return item(record)

    def _generate(self, h: _Handler, record: RecordedRequest, *, stream: bool) -> None:
        """Answer a generate request with the next reply."""
        reply = self._next_reply(record)
        if isinstance(reply, ErrorReply):
            self._send_json(h, reply.http_status, reply.body)
            return
        model = record.model or "gemini"
        response_id = uuid.uuid4().hex[:22]
        usage = reply.usage or _estimated_usage(reply, record)
        if record.api_key is not None:
            with self._lock:
                self._quotas.add_tokens(record.api_key, record.model or "", usage.total_tokens)
        chunks = self._chunks(reply, usage, model, response_id)
        if not stream:
            self._send_json(h, 200, _merge(chunks))
            return
        delay = reply.delay if isinstance(reply, TextReply) else 0.0
        try:
            h.send_response(200)
            h.send_header("Content-Type", "text/event-stream")
            h.send_header("Cache-Control", "no-cache")
            h.send_header("Connection", "close")
            h.end_headers()
            h.close_connection = True
            for i, chunk in enumerate(chunks):
                if i and delay and self._stopping.wait(delay):
                    return
                h.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n")
                h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True

    def _chunks(
        self, reply: TextReply | FunctionCallReply, usage: Usage, model: str, rid: str
    ) -> list[JSONObject]:
        """The GenerateContentResponse objects of one streamed reply."""
        parts_list: list[list[JSONObject]]
        if isinstance(reply, TextReply):
            parts_list = [[{"text": piece}] for piece in _split(reply.text, reply.chunks)]
        else:
            call: JSONObject = {"functionCall": {"name": reply.name, "args": dict(reply.args)}}
            parts_list = [[{"text": reply.text}]] if reply.text else []
            parts_list.append([call])
        version = self._model_version or model
        chunks: list[JSONObject] = []
        for i, parts in enumerate(parts_list):
            candidate: JSONObject = {"content": {"parts": parts, "role": "model"}, "index": 0}
            chunk: JSONObject = {
                "candidates": [candidate],
                "modelVersion": version,
                "responseId": rid,
            }
            if i == len(parts_list) - 1:
                candidate["finishReason"] = "STOP"
                chunk["usageMetadata"] = usage.to_json()
            chunks.append(chunk)
        return chunks

    @staticmethod
    def _send_json(h: _Handler, status: int, payload: JSONObject) -> None:
        """Send one JSON response and close the connection."""
        data = json.dumps(payload).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json; charset=UTF-8")
            h.send_header("Content-Length", str(len(data)))
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(data)
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        h.close_connection = True


def _estimated_usage(reply: TextReply | FunctionCallReply, record: RecordedRequest) -> Usage:
    """About 4 characters a token of the request and of the reply."""
    if isinstance(reply, TextReply):
        out_text = reply.text
    else:
        out_text = reply.text + json.dumps(dict(reply.args))
    return Usage(max(1, count_tokens(record.body or {})), max(1, count_tokens(out_text)))


def _quota_reply(rejection: Rejection) -> ErrorReply:
    """Google's free-tier 429 for a refused request."""
    return quota_exhausted(
        "minute" if rejection.quota == "rpm" else "day",
        retry_seconds=rejection.retry_seconds,
        model=rejection.model,
        limit=rejection.limit,
        counting="input_tokens" if rejection.quota == "tpd" else "requests",
    )


def _check_latency(seconds: float) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"latency must be a finite number of seconds >= 0, got {seconds!r}")
    return float(seconds)


def _merge(chunks: list[JSONObject]) -> JSONObject:
    """One non-streamed GenerateContentResponse from streamed chunks (text parts joined)."""
    parts: list[JSONObject] = []
    for chunk in chunks:
        candidates = cast(list[JSONObject], chunk["candidates"])
        content = cast(JSONObject, candidates[0]["content"])
        for part in cast(list[JSONObject], content["parts"]):
            if "text" in part and parts and "text" in parts[-1]:
                parts[-1] = {"text": str(parts[-1]["text"]) + str(part["text"])}
            else:
                parts.append(dict(part))
    last = dict(chunks[-1])
    last_candidate = dict(cast(list[JSONObject], last["candidates"])[0])
    last_candidate["content"] = {"parts": parts, "role": "model"}
    last["candidates"] = [last_candidate]
    return last


# --------------------------------------------------------------------------- process


def _key_limits_argument(text: str) -> dict[str, KeyLimits]:
    """``--key-limits``: ``{"KEY": {"rpm": 30, "rpd": 1000, "tpd": 100000}, ...}``.

    Errors name a key by its position only: keys are secrets, even in tests.
    """
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('expected an object {"KEY": {"rpm": N, ...}, ...}')
    limits: dict[str, KeyLimits] = {}
    for position, (key, entry) in enumerate(value.items(), start=1):
        try:
            limits[key] = KeyLimits.from_json(entry)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(f"key #{position}: {exc}") from None
    return limits


def _port_argument(text: str) -> int:
    port = int(text) if text.isdigit() else -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return port


def _latency_argument(text: str) -> float:
    try:
        return _check_latency(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; the first stdout line is the base URL."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.gemini_emulator",
        description="A loopback Gemini API emulator with per-key quotas.",
    )
    parser.add_argument(
        "--port", type=_port_argument, default=0, help="port on 127.0.0.1 (0: any free one)"
    )
    parser.add_argument(
        "--key-limits",
        type=_key_limits_argument,
        default={},
        metavar="JSON",
        help='per-key quotas, per model: {"KEY": {"rpm": 30, "rpd": 1000, "tpd": 100000}}',
    )
    parser.add_argument(
        "--latency",
        type=_latency_argument,
        default=0.0,
        metavar="S",
        help="seconds each generate request waits before its reply",
    )
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with GeminiEmulator(key_limits=args.key_limits, latency=args.latency, port=args.port) as emu:
        print(emu.base_url, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
