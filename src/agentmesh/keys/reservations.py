"""Keys for a dispatch round: each placed gemini task gets its forecast reserved on a key, or
waits with the reason (up to its user's throttle tolerance), or is rejected before any key
is spent because its forecast exceeds what its user allows a request.

Reserving also decides where a task runs when the best key is held by a node: the task goes
to that node if it is among those that could take it now.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from agentmesh.db.connect import Connection
from agentmesh.keys import quota
from agentmesh.keys.forecast import Forecast, Forecaster, over_limit_reason
from agentmesh.keys.quota import KeyChoice, Limits
from agentmesh.scheduler.queries import waiting
from agentmesh.tasks.model import TaskSpec

log = logging.getLogger(__name__)

USER_LIMITS = """
SELECT username, throttle_tolerance, max_token_per_request FROM user_profile
WHERE username = ANY($1::text[])
"""
# Since when each of these tasks waits for a key (now, for those that start waiting).
WAITING_SINCE = f"""
UPDATE tasks t SET key_wait_since = coalesce(key_wait_since, now())
WHERE id = ANY($1::text[]) AND {waiting("t")}
RETURNING id, extract(epoch FROM now() - key_wait_since)::float8 AS waited
"""


@dataclass(frozen=True)
class Candidate:
    """A placed gemini task, and every agent that could take it now (its placement first)."""

    task_id: str
    spec: TaskSpec
    agent_ids: Sequence[str]


@dataclass(frozen=True)
class Reserved:
    key: KeyChoice
    forecast: Forecast
    # The most tokens the task may spend (0 = no limit beyond the keys').
    budget: int


@dataclass
class RoundKeys:
    reserved: dict[str, Reserved] = field(default_factory=dict)
    # Tasks to move to the node that holds their key.
    moved: dict[str, str] = field(default_factory=dict)
    # Waiting tasks: the reason, and when to look again (None: when the keys change).
    waiting: dict[str, tuple[str, datetime | None]] = field(default_factory=dict)
    # Tasks that end now: rejected (the forecast is over the user's limit) or failed (they
    # waited longer than their user tolerates).
    rejected: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UserLimits:
    throttle_tolerance: float
    max_tokens: int  # 0 = none


class KeyReserver:
    def __init__(
        self,
        pool: asyncpg.Pool,
        forecaster: Forecaster,
        limits: Limits,
        *,
        default_model: str,
        default_tolerance_seconds: float,
    ) -> None:
        self._pool = pool
        self._forecaster = forecaster
        self._limits = limits
        self._default_model = default_model
        self._default_tolerance = default_tolerance_seconds

    def model_of(self, spec: TaskSpec) -> str:
        return spec.model or self._default_model

    async def reserve(self, conn: Connection, candidates: Sequence[Candidate]) -> RoundKeys:
        """Reserve keys for these tasks on `conn`, in the caller's transaction (the one that
        starts their attempts: a reservation exists only for a task that started)."""
        out = RoundKeys()
        if not candidates:
            return out
        users = await self._user_limits(conn, {c.spec.user for c in candidates})
        for model in {self.model_of(c.spec) for c in candidates}:
            await quota.ensure_rows(conn, model)
        short: dict[str, quota.Shortage] = {}
        # What found no key this round: a task of the same user, model and nodes that
        # needs as much or more will find none either (no query for it).
        failed: dict[tuple[object, ...], tuple[Forecast, quota.Shortage]] = {}
        for candidate in candidates:
            await self._reserve_one(conn, candidate, users[candidate.spec.user], out, short, failed)
        if short:
            await self._check_tolerance(conn, candidates, users, short, out)
        return out

    async def _reserve_one(
        self,
        conn: Connection,
        candidate: Candidate,
        user: UserLimits,
        out: RoundKeys,
        short: dict[str, quota.Shortage],
        failed: dict[tuple[object, ...], tuple[Forecast, quota.Shortage]],
    ) -> None:
        spec, model = candidate.spec, self.model_of(candidate.spec)
        forecast = await self._forecaster.forecast(
            user=spec.user, model=model, agent_mode=spec.agent_mode, prompt_chars=len(spec.prompt)
        )
        budget = min((n for n in (spec.max_tokens, user.max_tokens) if n > 0), default=0)
        reason = over_limit_reason(
            forecast, budget or None, user=spec.user, spec_max_tokens=spec.max_tokens
        )
        if reason:
            out.rejected[candidate.task_id] = reason
            return
        group = (spec.user, model, frozenset(candidate.agent_ids))
        if (seen := failed.get(group)) is not None and _covers(forecast, seen[0]):
            short[candidate.task_id] = seen[1]
            return
        args = {
            "user": spec.user,
            "nodes": list(candidate.agent_ids),
            "model": model,
            "requests": forecast.requests,
            "tokens": forecast.tokens,
            "limits": self._limits,
        }
        choice = await quota.reserve(conn, task_id=candidate.task_id, budget=budget, **args)  # type: ignore[arg-type]
        if choice is None:
            shortage = await quota.shortage(conn, **args)  # type: ignore[arg-type]
            short[candidate.task_id] = shortage
            if (seen := failed.get(group)) is None or _covers(seen[0], forecast):
                failed[group] = (forecast, shortage)
            return
        out.reserved[candidate.task_id] = Reserved(choice, forecast, budget)
        if choice.node_id is not None and choice.node_id != candidate.agent_ids[0]:
            out.moved[candidate.task_id] = choice.node_id
        await self._forecaster.log_prediction(
            conn,
            task_id=candidate.task_id,
            fingerprint=choice.fingerprint,
            user=spec.user,
            model=model,
            agent_mode=spec.agent_mode,
            prompt_chars=len(spec.prompt),
            forecast=forecast,
        )

    async def _check_tolerance(
        self,
        conn: Connection,
        candidates: Sequence[Candidate],
        users: dict[str, UserLimits],
        short: dict[str, quota.Shortage],
        out: RoundKeys,
    ) -> None:
        """Tasks that waited longer than their user tolerates fail with the reason; the others
        wait until capacity may be back, or their tolerance runs out, whichever is first."""
        user_of = {c.task_id: c.spec.user for c in candidates}
        now = datetime.now(UTC)
        for row in await conn.fetch(WAITING_SINCE, list(short)):
            task_id, waited = row["id"], row["waited"]
            tolerance = users[user_of[task_id]].throttle_tolerance
            shortage = short[task_id]
            if waited >= tolerance:
                out.failed[task_id] = (
                    f"{shortage.reason} (waited {waited:.0f} s, the throttle tolerance is"
                    f" {tolerance:g} s)"
                )
                continue
            deadline = now + timedelta(seconds=tolerance - waited)
            until = min(shortage.retry_at, deadline) if shortage.retry_at else deadline
            out.waiting[task_id] = (shortage.reason, until)

    async def _user_limits(self, conn: Connection, names: set[str]) -> dict[str, UserLimits]:
        rows = {r["username"]: r for r in await conn.fetch(USER_LIMITS, list(names))}
        limits = {}
        for name in names:
            row = rows.get(name)
            tolerance = row["throttle_tolerance"] if row is not None else None
            max_tokens = row["max_token_per_request"] if row is not None else None
            limits[name] = UserLimits(
                throttle_tolerance=(
                    float(tolerance) if tolerance is not None else self._default_tolerance
                ),
                max_tokens=max(int(max_tokens or 0), 0),
            )
        return limits

    async def count_context(self, task_id: str, chars: int) -> None:
        """The task's prompt came with `chars` of context: its prediction counts them."""
        await self._forecaster.count_context(task_id, chars)

    async def task_ended(self, task_id: str) -> None:
        """Write what the task spent beside its forecast."""
        async with self._pool.acquire() as conn:
            spent = await quota.task_spent(conn, task_id)
            if spent is not None:
                await self._forecaster.log_actual(
                    conn, task_id=task_id, actual_tokens=spent[0], actual_requests=spent[1]
                )


def _covers(needs: Forecast, than: Forecast) -> bool:
    """Whether a forecast needs at least as much as another."""
    return needs.requests >= than.requests and needs.tokens >= than.tokens
