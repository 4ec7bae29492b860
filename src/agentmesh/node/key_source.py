"""Where the node's Gemini API proxy gets a key for each API request of a task, and whom it
tells what the request cost.

- `SchedulerKeySource`: the scheduler's KeyPool (LeaseKey / ReportKeyUse) decides, with
  quotas held in PostgreSQL for the whole mesh; a key this node holds itself is leased by
  fingerprint only and resolved here, so its secret never crosses the network.
- `LocalKeySource`: no scheduler: the key a direct run brought, or the node's own keys in
  turn, cooled in this process's memory after a 429 (per model, for the API's delay); no
  quotas. It counts the run's tokens itself.

`KeySources.choose` picks one per run. Secrets live in `LocalKey` and `Lease` objects only,
whose reprs leave them out; nothing here logs or returns one in a message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import grpc

from agentmesh.config import TlsSettings
from agentmesh.keys.pool import KeyFileError, fingerprint, read_key_file
from agentmesh.node.executors.gemini_errors import GoogleError, cooldown_seconds
from agentmesh.rpc.channel import open_channel
from agentmesh.v1 import keys_pb2, keys_pb2_grpc

log = logging.getLogger(__name__)

_Request = TypeVar("_Request")
_Reply = TypeVar("_Reply")

# The label of the key a direct run brings in ExecuteTaskRequest.api_key.
TASK_KEY_LABEL = "task-key"
RPC_TIMEOUT_SECONDS = 30.0
# A scheduler that is briefly away (a restart, a failover) is asked again this often.
RPC_RETRY_DELAYS_SECONDS = (0.5, 1.0, 2.0)


class KeySourceError(Exception):
    """No key could be asked for (the scheduler is unreachable, ...); the message names why
    and is safe to show."""


class NoApiKey(KeySourceError):
    """A gemini run has nowhere to get a key from."""


@dataclass(frozen=True)
class TaskRun:
    """The run an API request belongs to, as key sources see it."""

    task_id: str
    attempt: int
    # The key the scheduler reserved the task's forecast on (asked for first); "" = any.
    key_fingerprint: str = ""
    # The most tokens the task may spend; 0 = no limit.
    token_budget: int = 0


@dataclass(frozen=True)
class LocalKey:
    """A key whose secret this node process holds (in memory only)."""

    label: str
    fingerprint: str
    secret: str = field(repr=False)

    @classmethod
    def of(cls, label: str, secret: str) -> LocalKey:
        return cls(label, fingerprint(secret), secret)


@dataclass(frozen=True)
class Lease:
    """Mirrors `agentmesh.v1.KeyLease`: a key for one request, or why there is none."""

    fingerprint: str = ""
    label: str = ""
    secret: str = field(default="", repr=False)
    # Send no sooner than this many seconds from now (the key's per-minute spacing).
    wait_seconds: float = 0.0
    # No key has capacity: the request gets a 429 with this delay and reason.
    exhausted: bool = False
    retry_after_seconds: float = 0.0
    reason: str = ""

    @property
    def shown(self) -> str:
        """How messages name the key: label and fingerprint."""
        return f"{self.label} ({self.fingerprint})"


@dataclass(frozen=True)
class KeyUse:
    """Mirrors `agentmesh.v1.ReportKeyUseRequest`: how one API request on a key went."""

    fingerprint: str
    model: str
    # The API's HTTP status; 0 = the request never got an answer.
    http_status: int
    counted: bool
    prompt_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    # For a 429: RetryInfo's delay and QuotaFailure's quota id.
    retry_delay_seconds: float = 0.0
    quota_id: str = ""
    # For a refused key: the API's reason (API_KEY_INVALID, PERMISSION_DENIED, ...).
    error_reason: str = ""


@dataclass(frozen=True)
class Budget:
    """Mirrors `agentmesh.v1.ReportKeyUseResponse`: what the task has spent, and its limit."""

    task_tokens: int
    token_budget: int

    @property
    def exceeded(self) -> bool:
        return self.token_budget > 0 and self.task_tokens > self.token_budget


class KeySource(Protocol):
    async def lease(
        self, run: TaskRun, model: str, exclude: Sequence[str], counted: bool
    ) -> Lease: ...

    async def report(self, run: TaskRun, use: KeyUse) -> Budget: ...


# ------------------------------------------------------------------------- local keys


@dataclass
class _KeyState:
    key: LocalKey
    # model -> (monotonic end of its cooldown, why)
    cooling: dict[str, tuple[float, str]] = field(default_factory=dict)
    refused: str = ""


class LocalKeys:
    """Keys held in this process, with their cooldowns and refusals noted in memory only."""

    def __init__(
        self, keys: Iterable[LocalKey], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._states = {key.fingerprint: _KeyState(key) for key in keys}
        self._clock = clock

    @classmethod
    def from_file(cls, path: Path) -> LocalKeys:
        """The node's own keys from its GEMINI_API_KEY_FILE; KeyFileError if it has none."""
        key_file = read_key_file(path)
        if not key_file.keys:
            raise KeyFileError(f"GEMINI_API_KEY_FILE {key_file.path}: holds no key")
        return cls(LocalKey.of(key.name, key.value) for key in key_file.keys)

    @property
    def keys(self) -> tuple[LocalKey, ...]:
        return tuple(state.key for state in self._states.values())

    def by_fingerprint(self, fingerprint: str) -> LocalKey | None:
        state = self._states.get(fingerprint)
        return state.key if state else None

    def pick(self, model: str, exclude: Sequence[str], preferred: str = "") -> LocalKey | None:
        """The preferred key if usable, else the first usable one in the file's order."""
        usable = [s.key for s in self._states.values() if self._usable(s, model, exclude)]
        for key in usable:
            if key.fingerprint == preferred:
                return key
        return usable[0] if usable else None

    def cool(self, fingerprint: str, model: str, seconds: float, why: str) -> None:
        if state := self._states.get(fingerprint):
            until = self._clock() + seconds
            previous = state.cooling.get(model)
            if previous is None or previous[0] < until:
                state.cooling[model] = (until, why)

    def refuse(self, fingerprint: str, why: str) -> None:
        if state := self._states.get(fingerprint):
            state.refused = why

    def shortage(self, model: str) -> tuple[float, str]:
        """When the next key comes back for `model` (seconds; 0 = none will) and why none
        can be used now, in words."""
        now = self._clock()
        total = len(self._states)
        cooling = [
            (state.cooling[model][0] - now, state)
            for state in self._states.values()
            if not state.refused and state.cooling.get(model, (0.0, ""))[0] > now
        ]
        refused = [state for state in self._states.values() if state.refused]
        keys = f"{total} API key{'s' if total != 1 else ''}"
        parts = [
            f"{s.key.label} ({s.key.fingerprint}) {s.cooling[model][1]}, back in {left:.0f}s"
            for left, s in sorted(cooling, key=lambda item: item[0])
        ] + [
            f"{s.key.label} ({s.key.fingerprint}) refused by the API: {s.refused}" for s in refused
        ]
        if not cooling:
            return 0.0, f"no usable key among the {keys} for {model}: " + "; ".join(parts)
        soonest = min(left for left, _ in cooling)
        return soonest, (
            f"no key has capacity for {model} ({keys}): " + "; ".join(parts)
            + f"; next capacity in {soonest:.0f}s"
        )  # fmt: skip

    def _usable(self, state: _KeyState, model: str, exclude: Sequence[str]) -> bool:
        if state.refused or state.key.fingerprint in exclude:
            return False
        until, _ = state.cooling.get(model, (0.0, ""))
        return until <= self._clock()


class LocalKeySource:
    """One run's keys without a scheduler; it counts the run's tokens itself."""

    def __init__(self, keys: LocalKeys) -> None:
        self._keys = keys
        self._tokens = 0

    async def lease(self, run: TaskRun, model: str, exclude: Sequence[str], counted: bool) -> Lease:
        key = self._keys.pick(model, exclude, run.key_fingerprint)
        if key is None:
            retry_after, reason = self._keys.shortage(model)
            return Lease(exhausted=True, retry_after_seconds=retry_after, reason=reason)
        return Lease(key.fingerprint, key.label, key.secret)

    async def report(self, run: TaskRun, use: KeyUse) -> Budget:
        if use.http_status == 429:
            error = GoogleError(
                429, retry_delay_seconds=use.retry_delay_seconds, quota_id=use.quota_id
            )
            quota = "daily quota" if error.daily else "per-minute quota"
            why = f"cooling down after HTTP 429 ({quota} {use.quota_id or 'exhausted'})"
            self._keys.cool(use.fingerprint, use.model, cooldown_seconds(error), why)
        elif use.error_reason:
            self._keys.refuse(use.fingerprint, f"{use.error_reason} (HTTP {use.http_status})")
        elif use.counted and 200 <= use.http_status < 300:
            self._tokens += use.total_tokens
        return Budget(self._tokens, run.token_budget)


# ------------------------------------------------------------------------ the scheduler


class SchedulerKeySource:
    """Leases keys from the scheduler's KeyPool per request and reports their use.

    Shared by every run of the node. A lease without a secret is for a key this node holds:
    it is resolved from `held` by fingerprint.
    """

    def __init__(self, channel: grpc.aio.Channel, *, agent_id: str, held: LocalKeys | None) -> None:
        self._channel = channel
        self._stub = keys_pb2_grpc.KeyPoolStub(channel)
        self._agent_id = agent_id
        self._held = held

    @classmethod
    def connect(
        cls,
        scheduler: str,
        *,
        token: str | None,
        tls: TlsSettings,
        agent_id: str,
        held: LocalKeys | None,
    ) -> SchedulerKeySource:
        return cls(open_channel(scheduler, token=token, tls=tls), agent_id=agent_id, held=held)

    async def close(self) -> None:
        await self._channel.close()

    async def lease(self, run: TaskRun, model: str, exclude: Sequence[str], counted: bool) -> Lease:
        request = keys_pb2.LeaseKeyRequest(
            task_id=run.task_id,
            attempt=run.attempt,
            agent_id=self._agent_id,
            model=model,
            exclude=list(exclude),
            counted=counted,
        )
        reply: keys_pb2.KeyLease = await self._call(self._stub.LeaseKey, request, "LeaseKey")
        if reply.exhausted:
            return Lease(
                exhausted=True,
                retry_after_seconds=reply.retry_after_seconds,
                reason=reply.reason or f"no API key has capacity for {model}",
            )
        secret = reply.secret
        if not secret:
            held = self._held.by_fingerprint(reply.fingerprint) if self._held else None
            if held is None:
                raise KeySourceError(
                    f"the scheduler leased key {reply.label} ({reply.fingerprint}) as held by"
                    " this node, which does not hold it"
                )
            secret = held.secret
        return Lease(
            fingerprint=reply.fingerprint,
            label=reply.label,
            secret=secret,
            wait_seconds=max(reply.wait_seconds, 0.0),
        )

    async def report(self, run: TaskRun, use: KeyUse) -> Budget:
        request = keys_pb2.ReportKeyUseRequest(
            task_id=run.task_id,
            attempt=run.attempt,
            agent_id=self._agent_id,
            fingerprint=use.fingerprint,
            model=use.model,
            http_status=use.http_status,
            prompt_tokens=use.prompt_tokens,
            output_tokens=use.output_tokens,
            total_tokens=use.total_tokens,
            retry_delay_seconds=use.retry_delay_seconds,
            quota_id=use.quota_id,
            error_reason=use.error_reason,
            counted=use.counted,
        )
        reply: keys_pb2.ReportKeyUseResponse = await self._call(
            self._stub.ReportKeyUse, request, "ReportKeyUse"
        )
        return Budget(reply.task_tokens, reply.token_budget or run.token_budget)

    async def _call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Reply],
        request: _Request,
        name: str,
    ) -> _Reply:
        for delay in (*RPC_RETRY_DELAYS_SECONDS, None):
            try:
                return await method(request, timeout=RPC_TIMEOUT_SECONDS)
            except grpc.aio.AioRpcError as error:
                if error.code() is grpc.StatusCode.UNAVAILABLE and delay is not None:
                    log.warning(
                        "%s: the scheduler is unavailable; asking again in %gs", name, delay
                    )
                    await asyncio.sleep(delay)
                    continue
                raise KeySourceError(
                    f"the scheduler's key pool did not answer {name}: {error.code().name}"
                    + (f": {error.details()}" if error.details() else "")
                ) from None
        raise AssertionError("unreachable")


# --------------------------------------------------------------------------- choosing


class KeySources:
    """Which source a gemini run gets its keys from: the key the request brought; else the
    scheduler, when the node has one; else the node's own keys; else none (`NoApiKey`)."""

    def __init__(self, held: LocalKeys | None, scheduler: SchedulerKeySource | None) -> None:
        self.held = held
        self.scheduler = scheduler

    def choose(self, api_key: str) -> KeySource:
        if api_key:
            return LocalKeySource(LocalKeys([LocalKey.of(TASK_KEY_LABEL, api_key)]))
        if self.scheduler is not None:
            return self.scheduler
        if self.held is not None:
            return LocalKeySource(self.held)
        raise NoApiKey(
            "no API key: the task brought none (ExecuteTaskRequest.api_key), this node holds"
            " none (GEMINI_API_KEY_FILE) and has no scheduler to lease one from"
        )
