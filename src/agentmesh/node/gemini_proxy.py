"""The node's Gemini API proxy: the Gemini CLI runs of this node reach the API through it, so
that no API key ever enters a task.

One loopback HTTP server per node process. Each gemini run registers with a random
credential (its `GEMINI_API_KEY`) and `GOOGLE_GEMINI_BASE_URL` pointing here; the proxy
forwards every request of the run to the real API with a real key leased from the run's key
source, and streams the answer back chunk by chunk as it arrives. On the way it:
- reports each request's cost (from `usageMetadata`) to the key source, and stops the run
  (refusing its further requests) once the task has spent more than its token budget;
- moves a request refused for its key (429 RESOURCE_EXHAUSTED, an invalid or revoked key) at
  once to another key, so the CLI sees no error; one warning event in the task's stream says
  which key was cooled or disabled and why. Only when no key is left does the CLI get a 429,
  with the delay until the next key has capacity.
The secret goes to the API in `x-goog-api-key` and nowhere else: not to the CLI, not to a log
(it is registered with `log_format.redact`), not to an event; error bodies are scrubbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from agentmesh import log_format
from agentmesh.config import ConfigError
from agentmesh.node.executors.gemini_errors import GoogleError, cooldown_seconds, parse_error_body
from agentmesh.node.gemini_usage import TokenUsage, UsageReader
from agentmesh.node.key_source import Budget, KeySource, KeySourceError, KeyUse, Lease, TaskRun
from agentmesh.tasks.events import Diagnostic, Payload

log = logging.getLogger(__name__)

_MODEL_PATH = re.compile(r"^/[^/]+/models/(?P<model>[^/:]+):(?P<action>[A-Za-z]+)$")
# Requests counted against a key's quotas (countTokens and the like are not).
COUNTED_ACTIONS = frozenset({"generateContent", "streamGenerateContent"})
# Large contexts are sent inline; the API itself takes up to 20 MB.
MAX_REQUEST_BYTES = 64 << 20
# A request moves on after a refused key at most this often (each move excludes a key).
MAX_KEYS_PER_REQUEST = 32
CONNECT_TIMEOUT_SECONDS = 30.0
# An answer silent for this long is given up (a thinking model may pause, not for minutes).
READ_TIMEOUT_SECONDS = 300.0
SHUTDOWN_TIMEOUT_SECONDS = 5.0
# Not forwarded: hop-by-hop headers, the credential, and what aiohttp sets itself (it asks
# for compression and decompresses, so the CLI gets the body plain).
_DROPPED_REQUEST_HEADERS = frozenset(
    {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te",
     "trailer", "upgrade", "proxy-authorization", "proxy-connection", "x-goog-api-key",
     "authorization", "accept-encoding"}
)  # fmt: skip
_DROPPED_RESPONSE_HEADERS = frozenset(
    {"content-length", "content-encoding", "connection", "keep-alive", "transfer-encoding",
     "trailer", "upgrade", "set-cookie"}
)  # fmt: skip
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


def _new_credential() -> str:
    return secrets.token_urlsafe(32)


@dataclass(eq=False)
class ProxyRun:
    """A gemini run the proxy serves: its credential, its key source, its event stream."""

    task: TaskRun
    source: KeySource
    # Adds a payload (an event) to the task's stream.
    emit: Callable[[Payload], None] = field(repr=False)
    credential: str = field(default_factory=_new_credential, repr=False)
    # Tokens of the task's successful counted requests, as this proxy saw them.
    tokens: int = 0
    # Why the run's requests are refused from now on ("token budget exceeded: ..."); "" = not.
    stopped: str = ""
    # Set when the run is unregistered: a request still waiting for its key is not sent.
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)


class GeminiProxy:
    """The loopback forwarding proxy; `start` it, `register` runs, `stop` it."""

    def __init__(self, upstream: str, runner: web.AppRunner, session: aiohttp.ClientSession):
        self._upstream = upstream.rstrip("/")
        self._runner = runner
        self.session = session
        self._runs: dict[str, ProxyRun] = {}
        self.url = ""
        self.port = 0

    @classmethod
    async def start(cls, upstream: str) -> GeminiProxy:
        """Serve on 127.0.0.1 (an ephemeral port), forwarding to `upstream`."""
        parsed = URL(upstream)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(f"GOOGLE_GEMINI_BASE_URL={upstream!r}: not an http(s) URL")
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS)
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=CONNECT_TIMEOUT_SECONDS, sock_read=READ_TIMEOUT_SECONDS
            )
        )
        proxy = cls(upstream, runner, session)
        app.router.add_route("*", "/{path:.*}", proxy._handle)
        try:
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
        except BaseException:
            await proxy.stop()
            raise
        host, port = runner.addresses[0][:2]
        proxy.url, proxy.port = f"http://{host}:{port}", port
        log.info("Gemini API proxy on %s, forwarding to %s", proxy.url, proxy._upstream)
        return proxy

    async def stop(self) -> None:
        await self._runner.cleanup()
        await self.session.close()

    def register(
        self, task: TaskRun, source: KeySource, emit: Callable[[Payload], None]
    ) -> ProxyRun:
        """Serve a run from now on; its `credential` is the CLI's GEMINI_API_KEY."""
        run = ProxyRun(task, source, emit)
        self._runs[run.credential] = run
        return run

    def unregister(self, run: ProxyRun) -> None:
        self._runs.pop(run.credential, None)
        run.ended.set()

    # ------------------------------------------------------------------------ serving

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        credential = request.headers.get("x-goog-api-key") or request.query.get("key", "")
        if not credential:
            return google_error(
                401, "UNAUTHENTICATED", "no API key: send the task's credential in x-goog-api-key"
            )
        run = self._runs.get(credential)
        if run is None:
            return google_error(
                403, "PERMISSION_DENIED", "API key not valid: not the credential of a running task"
            )
        if run.stopped:
            return google_error(429, "RESOURCE_EXHAUSTED", run.stopped)
        match = _MODEL_PATH.match(request.path)
        model = match["model"] if match else ""
        counted = match is not None and match["action"] in COUNTED_ACTIONS
        body = await request.read()
        forward = _Forwarding(self, request, run, model, counted, body)
        return await forward.answer()

    def target(self, request: web.Request) -> URL:
        """Where a request goes: the same path and query upstream, without the credential."""
        query = [(name, value) for name, value in request.rel_url.query.items() if name != "key"]
        return URL(self._upstream + request.rel_url.raw_path, encoded=True).with_query(query)


@dataclass
class _Forwarding:
    """One CLI request on its way through the proxy, over as many keys as it takes."""

    proxy: GeminiProxy
    request: web.Request
    run: ProxyRun
    model: str
    counted: bool
    body: bytes
    exclude: list[str] = field(default_factory=list)
    # What happened to the keys this request left, said once the next lease is known.
    notes: list[str] = field(default_factory=list)

    @property
    def fields(self) -> dict[str, object]:
        return {"task_id": self.run.task.task_id, "attempt": self.run.task.attempt}

    async def answer(self) -> web.StreamResponse:
        for _ in range(MAX_KEYS_PER_REQUEST):
            try:
                lease = await self.run.source.lease(
                    self.run.task, self.model, self.exclude, self.counted
                )
            except KeySourceError as exc:
                self._say_notes(f"no key could be leased: {exc}")
                log.warning("no key leased: %s", exc, extra=self.fields)
                return google_error(503, "UNAVAILABLE", str(exc))
            if lease.exhausted:
                self._say_notes("no other key has capacity: the request got a 429")
                return exhausted(lease)
            self._say_notes(f"the request moved to key {lease.shown}")
            log_format.redact(lease.secret)
            if lease.wait_seconds > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.run.ended.wait(), lease.wait_seconds)
            if self.run.ended.is_set():
                # The CLI is gone (its run ended while this request waited): spend nothing.
                await self._report(KeyUse(lease.fingerprint, self.model, 0, self.counted))
                return google_error(403, "PERMISSION_DENIED", "the task's run has ended")
            response = await self._forward(lease)
            if response is not None:
                return response
        return google_error(
            429, "RESOURCE_EXHAUSTED", f"the request was refused on {len(self.exclude)} keys"
        )

    async def _forward(self, lease: Lease) -> web.StreamResponse | None:
        """Send the request with the leased key: the CLI's answer, or None to try another."""
        headers = CIMultiDict(
            (name, value)
            for name, value in self.request.headers.items()
            if name.lower() not in _DROPPED_REQUEST_HEADERS
        )
        headers["x-goog-api-key"] = lease.secret
        try:
            upstream = await self.proxy.session.request(
                self.request.method,
                self.proxy.target(self.request),
                headers=headers,
                data=self.body if self.body else None,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self._report(KeyUse(lease.fingerprint, self.model, 0, self.counted))
            message = f"the Gemini API did not answer: {exc.__class__.__name__}"
            log.warning("%s", message, extra={**self.fields, "key": lease.fingerprint})
            return google_error(502, "UNAVAILABLE", message)
        async with upstream:
            if upstream.status < 300:
                return await self._stream(lease, upstream)
            raw = await upstream.read()
            error = parse_error_body(upstream.status, raw)
            if error.http_status == 429:
                await self._cooled(lease, error)
                return None
            if error.refused_key:
                await self._refused(lease, error)
                return None
            # 5xx and the request's own faults: no penalty on the key; the CLI decides.
            await self._report(
                KeyUse(lease.fingerprint, self.model, error.http_status, self.counted)
            )
            return web.Response(
                status=upstream.status,
                body=_scrubbed(raw, lease.secret),
                headers=_kept_headers(upstream.headers),
            )

    async def _stream(self, lease: Lease, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        """Pass a successful answer on as it arrives, reading its usage on the way."""
        response = web.StreamResponse(
            status=upstream.status, headers=_kept_headers(upstream.headers)
        )
        await response.prepare(self.request)
        reader = UsageReader(streamed=upstream.content_type == "text/event-stream")
        complete = True
        try:
            async for chunk in upstream.content.iter_any():
                reader.feed(chunk)
                await response.write(chunk)
        except (aiohttp.ClientError, ConnectionError) as exc:
            # The API broke off, or the CLI went away (its run was cancelled).
            log.info("response cut short: %s", exc.__class__.__name__, extra=self.fields)
            complete = False
        # Counted before the answer ends: the CLI's next request meets the budget's verdict.
        await self._account(lease, upstream.status, reader.finish())
        if complete:
            with contextlib.suppress(aiohttp.ClientError, ConnectionError):
                await response.write_eof()
        return response

    async def _account(self, lease: Lease, http_status: int, usage: TokenUsage) -> None:
        """Report a served request's usage; stop the run once it is over its budget."""
        if self.counted and usage.total_tokens:
            self.run.tokens += usage.total_tokens
        budget = await self._report(
            KeyUse(
                lease.fingerprint,
                self.model,
                http_status,
                self.counted,
                prompt_tokens=usage.prompt_tokens,
                output_tokens=usage.output_tokens,
                total_tokens=usage.total_tokens,
            )
        )
        if budget.exceeded and not self.run.stopped:
            self.run.stopped = (
                f"token budget exceeded: {budget.task_tokens} of {budget.token_budget} tokens"
            )
            log.warning("%s", self.run.stopped, extra=self.fields)
            self.run.emit(
                Diagnostic("error", f"{self.run.stopped}; further API requests are refused")
            )

    async def _cooled(self, lease: Lease, error: GoogleError) -> None:
        await self._report(
            KeyUse(
                lease.fingerprint,
                self.model,
                429,
                self.counted,
                retry_delay_seconds=error.retry_delay_seconds,
                quota_id=error.quota_id,
            )
        )
        seconds = cooldown_seconds(error)
        how_long = (
            f"until the daily reset (midnight Pacific, in {_duration(seconds)})"
            if error.daily
            else f"for {_duration(seconds)}"
        )
        quota = f" ({error.quota_id})" if error.quota_id else ""
        self._leave(
            lease,
            f"API key {lease.shown} cooled down for {self.model} {how_long}: HTTP 429"
            f" RESOURCE_EXHAUSTED{quota}",
        )

    async def _refused(self, lease: Lease, error: GoogleError) -> None:
        reason = error.reason or error.status or f"HTTP {error.http_status}"
        await self._report(
            KeyUse(
                lease.fingerprint, self.model, error.http_status, self.counted, error_reason=reason
            )
        )
        self._leave(
            lease,
            f"API key {lease.shown} disabled: the API refused it ({reason}, HTTP"
            f" {error.http_status})",
        )

    def _leave(self, lease: Lease, note: str) -> None:
        log.warning("%s", note, extra={**self.fields, "key": lease.fingerprint})
        self.exclude.append(lease.fingerprint)
        self.notes.append(note)

    def _say_notes(self, then: str) -> None:
        for note in self.notes:
            self.run.emit(Diagnostic("warning", f"{note}; {then}"))
        self.notes.clear()

    async def _report(self, use: KeyUse) -> Budget:
        try:
            return await self.run.source.report(self.run.task, use)
        except KeySourceError as exc:
            # The request went through; only the accounting is late. Count here meanwhile.
            log.warning(
                "key use not reported: %s", exc, extra={**self.fields, "key": use.fingerprint}
            )
            return Budget(self.run.tokens, self.run.task.token_budget)


def google_error(
    code: int, status: str, message: str, details: list[dict[str, Any]] | None = None
) -> web.Response:
    """An error in the Gemini API's own format, so the CLI reads it as the API's."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return web.json_response({"error": error}, status=code)


def exhausted(lease: Lease) -> web.Response:
    """A 429 for a request no key has capacity for, with the delay until one has."""
    delay = max(math.ceil(lease.retry_after_seconds), 0)
    message = f"{lease.reason}. Please retry in {delay}s."
    details = [{"@type": _RETRY_INFO, "retryDelay": f"{delay}s"}]
    return google_error(429, "RESOURCE_EXHAUSTED", message, details)


def _kept_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict(
        (name, value)
        for name, value in headers.items()
        if name.lower() not in _DROPPED_RESPONSE_HEADERS
    )


def _scrubbed(body: bytes, secret: str) -> bytes:
    """An error body with the key masked, should the API echo it."""
    return body.replace(secret.encode(), log_format.MASK.encode()) if secret else body


def _duration(seconds: float) -> str:
    seconds = math.ceil(seconds)
    if seconds < 120:
        return f"{seconds}s"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"
