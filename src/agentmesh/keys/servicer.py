"""`agentmesh.v1.KeyPool` over gRPC: the only key module that knows the generated code.

The admin RPCs run `agentmesh.keys.admin` in one transaction each; leasing and reporting
belong to the key broker, and the token report to the forecaster, both passed in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from agentmesh.access.credentials import NodeIdentity
from agentmesh.config import ApiPolicy
from agentmesh.errors import InvalidArgument, PermissionDenied, Reason
from agentmesh.keys import admin
from agentmesh.keys.model import KeyChanges, KeyView, Limits, NewKey
from agentmesh.keys.vault import Vault
from agentmesh.rpc import auth
from agentmesh.rpc.errors import unary
from agentmesh.v1 import keys_pb2, keys_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE_NAME = keys_pb2.DESCRIPTOR.services_by_name["KeyPool"].full_name
DEFAULT_REPORT_DAYS = 30


class KeyBroker(Protocol):
    """Hands out keys to nodes' Gemini API proxies and takes their reports."""

    async def lease(self, request: keys_pb2.LeaseKeyRequest) -> keys_pb2.KeyLease: ...

    async def report(
        self, request: keys_pb2.ReportKeyUseRequest
    ) -> keys_pb2.ReportKeyUseResponse: ...


# The forecast's errors over the last this many days (never 0: the default is resolved here).
TokenReporter = Callable[[int], Awaitable[keys_pb2.TokenReportResponse]]


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _limits_to_proto(limits: Limits) -> keys_pb2.KeyLimits:
    return keys_pb2.KeyLimits(
        requests_per_minute=limits.requests_per_minute or 0,
        requests_per_day=limits.requests_per_day or 0,
        tokens_per_day=limits.tokens_per_day or 0,
    )


def key_to_proto(view: KeyView) -> keys_pb2.ApiKey:
    own = _limits_to_proto(view.own_limits)
    return keys_pb2.ApiKey(
        id=view.id,
        label=view.label,
        fingerprint=view.fingerprint,
        priority=view.priority,
        assigned_user=view.assigned_user,
        rotating=view.rotating,
        source=view.source,
        enabled=view.enabled,
        disabled_reason=view.disabled_reason,
        requests_per_minute=own.requests_per_minute,
        requests_per_day=own.requests_per_day,
        tokens_per_day=own.tokens_per_day,
        limits=_limits_to_proto(view.limits),
        cooldowns=[
            keys_pb2.KeyCooldown(model=c.model, until=_timestamp(c.until), reason=c.reason)
            for c in view.cooldowns
        ],
        usage_today=[
            keys_pb2.KeyUsage(
                model=u.model,
                requests=u.requests,
                tokens=u.tokens,
                reserved_requests=u.reserved_requests,
                reserved_tokens=u.reserved_tokens,
            )
            for u in view.usage_today
        ],
        last_used=_timestamp(view.last_used),
        created_at=_timestamp(view.created_at),
        node_id=view.node_id,
    )


def _ref(request: Any) -> str:
    if not request.HasField("ref"):
        raise InvalidArgument("ref.key", "is required: a key's label or fingerprint")
    return str(request.ref.key)


def _optional(request: Any, name: str) -> Any:
    return getattr(request, name) if request.HasField(name) else None


class KeyPoolServicer(keys_pb2_grpc.KeyPoolServicer):
    def __init__(
        self,
        pool: asyncpg.Pool,
        vault: Vault,
        policy: ApiPolicy,
        *,
        broker: KeyBroker,
        token_report: TokenReporter,
    ) -> None:
        self._pool = pool
        self._vault = vault
        self._policy = policy
        self._broker = broker
        self._token_report = token_report

    @unary
    async def AddKey(self, request: keys_pb2.AddKeyRequest, context: Context) -> keys_pb2.ApiKey:
        new = NewKey(
            label=request.label,
            secret=request.secret,
            priority=request.priority,
            assigned_user=request.assigned_user,
            rotating=request.rotating if request.HasField("rotating") else True,
            limits=Limits(
                request.requests_per_minute, request.requests_per_day, request.tokens_per_day
            ),
        )
        async with self._pool.acquire() as conn, conn.transaction():
            view = await admin.add_key(conn, self._vault, new, self._policy)
        return key_to_proto(view)

    @unary
    async def ListKeys(
        self, request: keys_pb2.ListKeysRequest, context: Context
    ) -> keys_pb2.ListKeysResponse:
        async with self._pool.acquire() as conn, conn.transaction(readonly=True):
            views = await admin.list_keys(conn, self._policy)
        return keys_pb2.ListKeysResponse(keys=[key_to_proto(v) for v in views])

    @unary
    async def UpdateKey(
        self, request: keys_pb2.UpdateKeyRequest, context: Context
    ) -> keys_pb2.ApiKey:
        changes = KeyChanges(
            label=_optional(request, "label"),
            priority=_optional(request, "priority"),
            assigned_user=_optional(request, "assigned_user"),
            rotating=_optional(request, "rotating"),
            limits=Limits(
                _optional(request, "requests_per_minute"),
                _optional(request, "requests_per_day"),
                _optional(request, "tokens_per_day"),
            ),
        )
        ref = _ref(request)
        async with self._pool.acquire() as conn, conn.transaction():
            view = await admin.update_key(conn, ref, changes, self._policy)
        return key_to_proto(view)

    @unary
    async def SetKeyEnabled(
        self, request: keys_pb2.SetKeyEnabledRequest, context: Context
    ) -> keys_pb2.ApiKey:
        ref = _ref(request)
        async with self._pool.acquire() as conn, conn.transaction():
            view = await admin.set_key_enabled(
                conn, ref, request.enabled, request.reason, self._policy
            )
        return key_to_proto(view)

    @unary
    async def RemoveKey(
        self, request: keys_pb2.RemoveKeyRequest, context: Context
    ) -> keys_pb2.RemoveKeyResponse:
        ref = _ref(request)
        async with self._pool.acquire() as conn, conn.transaction():
            view = await admin.remove_key(conn, ref, self._policy)
        return keys_pb2.RemoveKeyResponse(key=key_to_proto(view))

    @unary
    async def TokenReport(
        self, request: keys_pb2.TokenReportRequest, context: Context
    ) -> keys_pb2.TokenReportResponse:
        if request.days < 0:
            raise InvalidArgument("days", "must not be negative (0 = the last 30 days)")
        return await self._token_report(request.days or DEFAULT_REPORT_DAYS)

    @unary
    async def LeaseKey(
        self, request: keys_pb2.LeaseKeyRequest, context: Context
    ) -> keys_pb2.KeyLease:
        _check_speaks_for(request.agent_id)
        return await self._broker.lease(request)

    @unary
    async def ReportKeyUse(
        self, request: keys_pb2.ReportKeyUseRequest, context: Context
    ) -> keys_pb2.ReportKeyUseResponse:
        _check_speaks_for(request.agent_id)
        return await self._broker.report(request)


def _check_speaks_for(agent_id: str) -> None:
    """Under a node credential (a secured mesh), a node leases keys for its own tasks only."""
    caller = auth.caller()
    if isinstance(caller, NodeIdentity) and caller.agent_id != agent_id:
        bound = caller.agent_id or "no agent yet (it has not heartbeated)"
        raise PermissionDenied(
            f"node credential {caller.name} speaks for {bound}, not agent {agent_id}",
            reason=Reason.AGENT_NOT_BOUND,
        )


def register(servicer: KeyPoolServicer) -> Callable[[grpc.aio.Server], None]:
    return lambda server: keys_pb2_grpc.add_KeyPoolServicer_to_server(servicer, server)
