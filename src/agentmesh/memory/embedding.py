"""Embeddings of knowledge rows and search queries: one small interface, and the Gemini API
behind it through the scheduler's key pool.

`Embedder` is all the knowledge store knows: a text in, a unit vector of `DIMENSIONS` out,
or `EmbeddingUnavailable` saying why not. Tests (or a future local model) supply their own.

`GeminiEmbedder` asks `models/{model}:embedContent` with `outputDimensionality` 768. Its
requests spend quota like any other: each leases a key from the pool (`keys.quota.lease`:
enabled, not cooling down for the model, the user's or anyone's, spaced within the key's
per-minute limit, counted against its daily limits). A 429 cools that key for the model
(RetryInfo's delay, or until the daily reset for a per-day quota) and the request moves to
another key; a refused key is disabled, as the broker does for the nodes' requests. Only
keys whose secret the scheduler holds are used (a node's own keys never leave it).
Google returns 768-dimension embeddings unnormalised: they are normalised here, so that a
dot product is the cosine similarity.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Sequence
from typing import Literal, Protocol

import aiohttp
import asyncpg

from agentmesh import log_format
from agentmesh.config import Settings
from agentmesh.keys import quota
from agentmesh.keys.quota import KeyChoice, Limits
from agentmesh.keys.vault import Vault
from agentmesh.node.executors.gemini_errors import (
    GoogleError,
    cooldown_seconds,
    parse_error_body,
)

log = logging.getLogger(__name__)

DIMENSIONS = 768
DEFAULT_MODEL = "gemini-embedding-001"
# The scheduler's own requests have no task: their leases are booked under this name.
EMBEDDING_TASK = "agentmesh:knowledge-embedding"
# How many keys one embedding tries before it gives up (each 429 moves to another key).
MAX_KEYS_PER_REQUEST = 8
REQUEST_TIMEOUT_SECONDS = 30.0
# How long a request may wait for a key's next slot (the per-minute spacing): a stored row
# can wait; a search query is not worth booking a slot it would not wait for.
DOCUMENT_WAIT_SECONDS = 10.0
QUERY_WAIT_SECONDS = 1.0
# Google's rule of thumb for counting a request's tokens when the answer does not say.
CHARS_PER_TOKEN = 4

Purpose = Literal["document", "query"]
_TASK_TYPES: dict[Purpose, str] = {"document": "RETRIEVAL_DOCUMENT", "query": "RETRIEVAL_QUERY"}


class EmbeddingUnavailable(Exception):
    """No embedding could be made; the message says why and never holds a secret.

    `no_capacity`: no key could take the request (none at all, all cooling down or at
    their limits): trying other texts now is pointless."""

    def __init__(self, message: str, *, no_capacity: bool = False) -> None:
        super().__init__(message)
        self.no_capacity = no_capacity


class Embedder(Protocol):
    """Turns a text into a unit vector of `DIMENSIONS` floats (or raises
    EmbeddingUnavailable). `user`: whose request it is (the key pool may hold keys for
    them); `purpose`: a stored document or a search query."""

    @property
    def model(self) -> str: ...

    async def embed(self, text: str, *, user: str, purpose: Purpose) -> list[float]: ...


def normalized(values: Sequence[float]) -> list[float]:
    """`values` scaled to length 1 (a zero vector cannot be: EmbeddingUnavailable)."""
    norm = math.sqrt(math.fsum(v * v for v in values))
    if not norm or not math.isfinite(norm):
        raise EmbeddingUnavailable("the embedding is a zero or non-finite vector")
    return [v / norm for v in values]


class GeminiEmbedder:
    """`Embedder` on the Gemini API's embedContent, with keys from the scheduler's pool."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        vault: Vault,
        limits: Limits,
        *,
        base_url: str,
        model: str = DEFAULT_MODEL,
        longest_wait_seconds: float = DOCUMENT_WAIT_SECONDS,
    ) -> None:
        self._pool = pool
        self._vault = vault
        self._limits = limits
        self._url = f"{base_url.rstrip('/')}/v1beta/models/{model}:embedContent"
        self._model = model
        self._longest_wait = longest_wait_seconds

    @property
    def model(self) -> str:
        return self._model

    async def embed(self, text: str, *, user: str, purpose: Purpose) -> list[float]:
        body = {
            "content": {"parts": [{"text": text}]},
            "taskType": _TASK_TYPES[purpose],
            "outputDimensionality": DIMENSIONS,
        }
        tried: list[str] = []
        wait = self._longest_wait if purpose == "document" else QUERY_WAIT_SECONDS
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while len(tried) < MAX_KEYS_PER_REQUEST:
                key = await self._lease(user, tried, wait)
                tried.append(key.fingerprint)
                if key.wait > 0:
                    await asyncio.sleep(key.wait)
                assert key.sealed is not None  # central keys only (see _lease)
                secret = self._vault.open_secret(key.sealed)
                log_format.redact(secret)
                try:
                    async with session.post(
                        self._url, json=body, headers={"x-goog-api-key": secret}
                    ) as response:
                        status, answer = response.status, await response.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    await self._uncount(key)
                    raise EmbeddingUnavailable(
                        f"the Gemini API did not answer: {exc.__class__.__name__}"
                    ) from None
                if status == 200:
                    await self._spend(key, len(text) // CHARS_PER_TOKEN + 1)
                    return _values(answer)
                await self._uncount(key)
                error = parse_error_body(status, answer)
                if status == 429:
                    await self._cool(key, error)
                    continue
                if error.refused_key:
                    await self._disable(key, error)
                    continue
                raise EmbeddingUnavailable(
                    f"the Gemini API answered {status} {error.status}: {error.message}".rstrip()
                )
        raise EmbeddingUnavailable(
            f"{len(tried)} API keys tried, each refused or out of quota", no_capacity=True
        )

    async def _lease(self, user: str, exclude: list[str], wait: float) -> KeyChoice:
        async with self._pool.acquire() as conn:
            choice = await quota.lease(
                conn,
                task_id=EMBEDDING_TASK,
                user=user,
                # No node: only central keys, whose secrets the scheduler holds.
                agent_id="",
                model=self._model,
                exclude=exclude,
                counted=True,
                longest_wait_seconds=wait,
                limits=self._limits,
            )
            if choice is None or choice.sealed is None:
                short = await quota.shortage(
                    conn,
                    user=user,
                    nodes=[],
                    model=self._model,
                    requests=1,
                    tokens=1,
                    limits=self._limits,
                )
                raise EmbeddingUnavailable(short.reason, no_capacity=True)
        return choice

    async def _spend(self, key: KeyChoice, tokens: int) -> None:
        async with self._pool.acquire() as conn:
            await quota.spend_tokens(
                conn, task_id=EMBEDDING_TASK, key_id=key.key_id, model=self._model, tokens=tokens
            )

    async def _uncount(self, key: KeyChoice) -> None:
        """A request Google did not serve was not spent."""
        async with self._pool.acquire() as conn:
            await quota.uncount_request(
                conn, task_id=EMBEDDING_TASK, key_id=key.key_id, model=self._model
            )

    async def _cool(self, key: KeyChoice, error: GoogleError) -> None:
        seconds = cooldown_seconds(error)
        scope = "daily" if error.daily else "per-minute"
        reason = f"429 {scope} quota" + (f" ({error.quota_id})" if error.quota_id else "")
        async with self._pool.acquire() as conn:
            await quota.cool(conn, key.key_id, self._model, seconds, reason)
        log.warning(
            "API key cooling down after a 429 on an embedding; trying another",
            extra={"key": key.label, "model": self._model, "seconds": round(seconds)},
        )

    async def _disable(self, key: KeyChoice, error: GoogleError) -> None:
        why = error.reason or f"HTTP {error.http_status}"
        async with self._pool.acquire() as conn:
            await quota.disable(conn, key.key_id, f"refused by the API: {why}")
        log.warning("API key refused by the API: disabled", extra={"key": key.label, "why": why})


def _values(answer: bytes) -> list[float]:
    """The vector of an embedContent answer, `{"embedding": {"values": [...]}}`, normalised."""
    try:
        values = json.loads(answer)["embedding"]["values"]
    except (ValueError, KeyError, TypeError):
        raise EmbeddingUnavailable("the Gemini API's answer holds no embedding") from None
    if (
        not isinstance(values, list)
        or len(values) != DIMENSIONS
        or not all(isinstance(v, int | float) for v in values)
    ):
        raise EmbeddingUnavailable(
            f"the Gemini API's embedding is not {DIMENSIONS} numbers"
        ) from None
    return normalized([float(v) for v in values])


def scheduler_embedder(pool: asyncpg.Pool, vault: Vault, settings: Settings) -> GeminiEmbedder:
    """The scheduler's embedder: the Gemini API at GOOGLE_GEMINI_BASE_URL, keys from its pool
    under api_policy's limits."""
    return GeminiEmbedder(
        pool, vault, Limits.of(settings.api_policy), base_url=settings.env.GOOGLE_GEMINI_BASE_URL
    )
