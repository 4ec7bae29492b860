"""The key pool's values as they cross module lines: a key as anyone may see it (never its
secret), what adding or changing one asks for, and the limits in force."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from agentmesh.config import ApiPolicy

NODE_SOURCE_PREFIX = "node:"


@dataclass(frozen=True)
class Limits:
    """A key's limits: per minute, per day, tokens per day. None (in a key's own limits):
    api_policy's; 0 (in the limits in force): no limit."""

    requests_per_minute: int | None = None
    requests_per_day: int | None = None
    tokens_per_day: int | None = None


@dataclass(frozen=True)
class Cooldown:
    """A key cooling down for one model after a 429."""

    model: str
    until: datetime
    reason: str


@dataclass(frozen=True)
class ModelUsage:
    """What a key spent today on one model, and what running tasks hold of it."""

    model: str
    requests: int
    tokens: int
    reserved_requests: int
    reserved_tokens: int


@dataclass(frozen=True)
class KeyView:
    """A key as anyone may see it: never its secret."""

    id: int
    label: str
    fingerprint: str
    priority: int
    assigned_user: str
    rotating: bool
    source: str
    enabled: bool
    disabled_reason: str
    own_limits: Limits
    limits: Limits
    cooldowns: tuple[Cooldown, ...]
    usage_today: tuple[ModelUsage, ...]
    last_used: datetime | None
    created_at: datetime
    node_id: str


@dataclass(frozen=True)
class NewKey:
    """AddKey's fields; a limit of None or 0 is api_policy's."""

    label: str
    secret: str = field(repr=False)
    priority: int = 0
    assigned_user: str = ""
    rotating: bool = True
    limits: Limits = Limits()


@dataclass(frozen=True)
class KeyChanges:
    """UpdateKey's fields: None leaves a field as it is; "" clears the user; a limit of 0
    hands it back to api_policy."""

    label: str | None = None
    priority: int | None = None
    assigned_user: str | None = None
    rotating: bool | None = None
    limits: Limits = Limits()


def limits_in_force(own: Limits, policy: ApiPolicy) -> Limits:
    """A key's own limits where it has them, api_policy's elsewhere."""
    return Limits(
        requests_per_minute=_first(own.requests_per_minute, policy.rpm_soft_limit),
        requests_per_day=_first(own.requests_per_day, policy.max_requests_per_day),
        tokens_per_day=_first(own.tokens_per_day, policy.max_tokens_per_key),
    )


def _first(own: int | None, policy: int) -> int:
    return own if own is not None else policy
