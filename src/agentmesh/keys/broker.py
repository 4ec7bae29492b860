"""The scheduler's side of the nodes' Gemini API proxies: a key per request, and its cost.

A node's proxy asks for a key before each API request of a running task (`lease`), and says
how the request went (`report`). A central key's secret goes back over the mesh's
authenticated channel, to the node that runs the task and only while it runs it; a key a
node holds itself is named by its fingerprint and never crosses the network. What the
proxy reports is what the pool counts: tokens from the response's usageMetadata, a 429 that
cools the key for the model, a refusal that disables it.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import asyncpg

from agentmesh import log_format
from agentmesh.errors import FailedPrecondition, InvalidArgument, NotFound
from agentmesh.keys import quota
from agentmesh.keys.quota import Limits
from agentmesh.keys.vault import Vault
from agentmesh.v1 import keys_pb2

log = logging.getLogger(__name__)

# A request waits at most this long for a key's next slot before the CLI is told 429.
LONGEST_WAIT_SECONDS = 60.0
# When nothing says when capacity comes back, the CLI is told to retry after this long.
DEFAULT_RETRY_SECONDS = 60.0
RUNNING_TASK = "SELECT user_name, state, attempt, assigned_agent FROM tasks WHERE id = $1"
# What says the key itself was refused (invalid, expired, revoked): a 401, or the API's
# reason. A 403 alone may be about a model or a region, not the key: no reason to disable it.
REFUSED_STATUS = 401
REFUSED_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED"})


class KeyBroker:
    def __init__(self, pool: asyncpg.Pool, vault: Vault, limits: Limits) -> None:
        self._pool = pool
        self._vault = vault
        self._limits = limits

    async def lease(self, request: keys_pb2.LeaseKeyRequest) -> keys_pb2.KeyLease:
        if not request.model:
            raise InvalidArgument("model", "is empty")
        async with self._pool.acquire() as conn:
            user = await self._running_user(
                conn, request.task_id, request.attempt, request.agent_id
            )
            choice = await quota.lease(
                conn,
                task_id=request.task_id,
                user=user,
                agent_id=request.agent_id,
                model=request.model,
                exclude=list(request.exclude),
                counted=request.counted,
                longest_wait_seconds=LONGEST_WAIT_SECONDS,
                limits=self._limits,
            )
            if choice is None:
                short = await quota.shortage(
                    conn,
                    user=user,
                    nodes=[request.agent_id],
                    model=request.model,
                    requests=1,
                    tokens=1,
                    limits=self._limits,
                )
        if choice is None:
            now = datetime.now(UTC)
            retry = (
                (short.retry_at - now).total_seconds()
                if short.retry_at is not None
                else DEFAULT_RETRY_SECONDS
            )
            return keys_pb2.KeyLease(
                exhausted=True, retry_after_seconds=max(retry, 1.0), reason=short.reason
            )
        log.debug(
            "key leased",
            extra={
                "task_id": request.task_id,
                "key": choice.label,
                "model": request.model,
                "counted": request.counted,
                "wait": round(choice.wait, 3),
            },
        )
        secret = ""
        if choice.node_id is None:
            if choice.sealed is None:
                raise FailedPrecondition(f"API key {choice.label} has no stored secret")
            secret = self._vault.open_secret(choice.sealed)
            log_format.redact(secret)
        return keys_pb2.KeyLease(
            fingerprint=choice.fingerprint,
            label=choice.label,
            secret=secret,
            wait_seconds=max(choice.wait, 0.0),
        )

    async def report(self, request: keys_pb2.ReportKeyUseRequest) -> keys_pb2.ReportKeyUseResponse:
        status = request.http_status
        async with self._pool.acquire() as conn:
            # What Google served counts even when the attempt ended meanwhile (a cancel while
            # the answer streamed): the attempt that ran there may report it.
            await self._running_user(
                conn, request.task_id, request.attempt, request.agent_id, ended_too=True
            )
            key = await conn.fetchrow(quota.KEY_BY_FINGERPRINT, request.fingerprint)
            if key is None:
                raise NotFound(f"no API key with fingerprint {request.fingerprint}")
            key_id, label = key["id"], key["name"]
            fields = {"task_id": request.task_id, "key": label, "model": request.model}
            if 200 <= status < 300:
                used, budget = await quota.spend_tokens(
                    conn,
                    task_id=request.task_id,
                    key_id=key_id,
                    model=request.model,
                    tokens=max(request.total_tokens, 0),
                )
                return keys_pb2.ReportKeyUseResponse(task_tokens=used, token_budget=budget)
            if request.counted:
                await quota.uncount_request(
                    conn, task_id=request.task_id, key_id=key_id, model=request.model
                )
            if status == 429:
                seconds = quota.cooldown_seconds(request.retry_delay_seconds, request.quota_id)
                scope = "daily" if "PerDay" in request.quota_id or seconds > 300 else "per-minute"
                reason = f"429 {scope} quota" + (
                    f" ({request.quota_id})" if request.quota_id else ""
                )
                await quota.cool(conn, key_id, request.model, seconds, reason)
                log.warning("API key cooling down", extra={**fields, "seconds": round(seconds)})
            elif status == REFUSED_STATUS or request.error_reason in REFUSED_REASONS:
                why = request.error_reason or f"HTTP {status}"
                await quota.disable(conn, key_id, f"refused by the API: {why}")
                log.warning("API key refused by the API: disabled", extra={**fields, "why": why})
            spent = await quota.task_spent(conn, request.task_id)
            budget = await conn.fetchval(
                "SELECT budget FROM key_reservations WHERE task_id = $1", request.task_id
            )
        return keys_pb2.ReportKeyUseResponse(
            task_tokens=spent[0] if spent else 0, token_budget=budget or 0
        )

    @staticmethod
    async def _running_user(
        conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
        task_id: str,
        attempt: int,
        agent_id: str,
        *,
        ended_too: bool = False,
    ) -> str:
        """The task's user, if this attempt of it runs on this agent now (or, `ended_too`,
        ran there last); else an error: a key goes only to a node that runs a task now."""
        row = await conn.fetchrow(RUNNING_TASK, task_id)
        if row is None:
            raise NotFound(f"no task {task_id}")
        running = row["state"] == "working" or (ended_too and row["state"] != "submitted")
        if not running or row["attempt"] != attempt:
            raise FailedPrecondition(
                f"task {task_id} attempt {attempt} is not running (state {row['state']},"
                f" attempt {row['attempt']})"
            )
        if row["assigned_agent"] != agent_id:
            raise FailedPrecondition(f"task {task_id} does not run on agent {agent_id}")
        return str(row["user_name"] or "")
