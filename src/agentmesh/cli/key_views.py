"""What `agentmesh keys` shows of a key: its JSON document (the stable, documented fields of
`--json`) and the cells of `keys list`'s table. A key as the scheduler answers it never
holds its secret."""

from __future__ import annotations

import time
from datetime import UTC
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from rich.text import Text

from agentmesh.cli.output import Cell, Output
from agentmesh.cli.views import duration_text
from agentmesh.v1 import keys_pb2

HEADERS = (
    "LABEL", "FINGERPRINT", "PRIO", "USER", "ROTATING", "SOURCE", "STATE", "COOLING", "LIMITS",
    "TODAY",
)  # fmt: skip


def _iso(stamp: Timestamp, present: bool) -> str | None:
    return stamp.ToDatetime(tzinfo=UTC).isoformat() if present else None


def _limits_json(limits: keys_pb2.KeyLimits) -> dict[str, int]:
    return {
        "requests_per_minute": limits.requests_per_minute,
        "requests_per_day": limits.requests_per_day,
        "tokens_per_day": limits.tokens_per_day,
    }


def key_json(key: keys_pb2.ApiKey) -> dict[str, Any]:
    """A key as `keys list --json` prints it (the README lists the fields)."""
    return {
        "id": key.id,
        "label": key.label,
        "fingerprint": key.fingerprint,
        "priority": key.priority,
        "assigned_user": key.assigned_user,
        "rotating": key.rotating,
        "source": key.source,
        "enabled": key.enabled,
        "disabled_reason": key.disabled_reason,
        # The key's own limits; 0: api_policy's.
        "requests_per_minute": key.requests_per_minute,
        "requests_per_day": key.requests_per_day,
        "tokens_per_day": key.tokens_per_day,
        # The limits in force; 0: none.
        "limits": _limits_json(key.limits),
        "cooldowns": [
            {"model": c.model, "until": _iso(c.until, c.HasField("until")), "reason": c.reason}
            for c in key.cooldowns
        ],
        "usage_today": [
            {
                "model": u.model,
                "requests": u.requests,
                "tokens": u.tokens,
                "reserved_requests": u.reserved_requests,
                "reserved_tokens": u.reserved_tokens,
            }
            for u in key.usage_today
        ],
        "last_used": _iso(key.last_used, key.HasField("last_used")),
        "created_at": _iso(key.created_at, key.HasField("created_at")),
        "node_id": key.node_id,
    }


def compact(number: int) -> str:
    """1234 -> 1.2k, 1000000 -> 1M: a table's numbers at a glance."""
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if abs(number) >= size:
            text = f"{number / size:.1f}".removesuffix(".0")
            return text + unit
    return str(number)


def _of(used: int, limit: int) -> str:
    return f"{compact(used)}/{compact(limit)}" if limit else compact(used)


def _state(key: keys_pb2.ApiKey) -> Text:
    if key.enabled:
        return Text("enabled", style="green")
    return Text(key.disabled_reason or "disabled", style="red")


def _cooling(key: keys_pb2.ApiKey) -> str:
    now = time.time()
    parts = []
    for cooldown in key.cooldowns:
        left = max(cooldown.until.ToMicroseconds() / 1e6 - now, 0)
        reason = f" ({cooldown.reason})" if cooldown.reason else ""
        parts.append(f"{cooldown.model} {duration_text(left)}{reason}")
    return "; ".join(parts) or "-"


def _today(key: keys_pb2.ApiKey) -> str:
    limits = key.limits
    parts = [
        f"{u.model} {_of(u.requests, limits.requests_per_day)} req"
        f" {_of(u.tokens, limits.tokens_per_day)} tok"
        for u in key.usage_today
    ]
    return "; ".join(parts) or "-"


def _limits(key: keys_pb2.ApiKey) -> str:
    limits = key.limits
    parts = [
        f"{compact(limits.requests_per_minute)}/min" if limits.requests_per_minute else "",
        f"{compact(limits.requests_per_day)}/day" if limits.requests_per_day else "",
        f"{compact(limits.tokens_per_day)} tok/day" if limits.tokens_per_day else "",
    ]
    return " ".join(part for part in parts if part) or "none"


def key_table(output: Output, listed: Any) -> None:
    """`keys list`: one row a key."""
    rows: list[list[Cell]] = [
        [
            key.label,
            key.fingerprint,
            str(key.priority),
            key.assigned_user or "-",
            "yes" if key.rotating else "no",
            key.source or "-",
            _state(key),
            _cooling(key),
            _limits(key),
            _today(key),
        ]
        for key in listed
    ]
    output.table(HEADERS, rows)
