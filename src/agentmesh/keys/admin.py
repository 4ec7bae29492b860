"""Managing the key pool: add, list, update, enable or disable, and remove API keys.

What the KeyPool admin RPCs and `agentmesh keys` do, over one database connection (the
caller holds the transaction). A key is named by its label (`api_keys.name`) or its
fingerprint (`sha256:` and 12 hex digits; the digits alone also do). A secret goes in
through `add_key`, sealed by the vault, and never comes out: not in a `KeyView`, an error
or a log line; even a secret given by mistake where a label or a reference belongs is
refused without being repeated.

Keys held by nodes (`source` 'node:NAME', no secret here) belong to their node's key file:
their label and secret change there, but priority, user, rotation, limits, enabling and
removal are managed here like any other key's.
"""

from __future__ import annotations

import logging

import asyncpg

from agentmesh import log_format
from agentmesh.config import ApiPolicy
from agentmesh.db.connect import Connection
from agentmesh.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from agentmesh.keys import validation
from agentmesh.keys.day import PACIFIC_TODAY_SQL
from agentmesh.keys.model import (
    NODE_SOURCE_PREFIX,
    Cooldown,
    KeyChanges,
    KeyView,
    Limits,
    ModelUsage,
    NewKey,
    limits_in_force,
)
from agentmesh.keys.pool import fingerprint
from agentmesh.keys.vault import Vault

log = logging.getLogger(__name__)

CLI_SOURCE = "cli"

_KEY_COLUMNS = """
id, name, fingerprint, coalesce(priority, 0) AS priority, coalesce(assigned_user, '') AS
assigned_user, coalesce(rotating, true) AS rotating, coalesce(source, '') AS source, enabled,
coalesce(disabled_reason, '') AS disabled_reason, requests_per_minute, requests_per_day,
tokens_per_day, last_used_at, created_at, coalesce(node_id, '') AS node_id
"""
# $1: one key's id, or NULL for all of them.
SELECT_KEYS = f"""
SELECT {_KEY_COLUMNS} FROM api_keys
WHERE $1::bigint IS NULL OR id = $1
ORDER BY coalesce(priority, 0) DESC, name
"""
SELECT_COOLDOWNS = """
SELECT key_id, model, cooling_until, coalesce(cooling_reason, '') AS cooling_reason
FROM api_key_models
WHERE cooling_until > now() AND ($1::bigint IS NULL OR key_id = $1)
ORDER BY key_id, model
"""
SELECT_USAGE_TODAY = f"""
SELECT key_id, model, requests, tokens, reserved_requests, reserved_tokens
FROM api_key_usage
WHERE day = {PACIFIC_TODAY_SQL} AND ($1::bigint IS NULL OR key_id = $1)
ORDER BY key_id, model
"""
# A label first, then a fingerprint with or without its prefix (fingerprints are unique,
# and a label cannot look like one, so at most one key answers either way).
FIND_KEY = """
SELECT id, name, source FROM api_keys
WHERE name = $1 OR fingerprint = $1 OR fingerprint = 'sha256:' || $1
ORDER BY (name = $1) DESC
LIMIT 1
FOR UPDATE
"""
SELECT_LABEL = "SELECT name FROM api_keys WHERE name = $1"
SELECT_BY_FINGERPRINT = "SELECT name FROM api_keys WHERE fingerprint = $1"
INSERT_KEY = """
INSERT INTO api_keys (name, key_value, fingerprint, priority, assigned_user, rotating, source,
                      requests_per_minute, requests_per_day, tokens_per_day)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
RETURNING id
"""
# NULL leaves a column as it is; '' clears the user; 0 hands a limit back to api_policy.
UPDATE_KEY = """
UPDATE api_keys SET
    name = coalesce($2, name),
    priority = coalesce($3, priority),
    assigned_user = CASE WHEN $4::text IS NULL THEN assigned_user ELSE nullif($4, '') END,
    rotating = coalesce($5, rotating),
    requests_per_minute = CASE WHEN $6::int IS NULL THEN requests_per_minute
                               ELSE nullif($6, 0) END,
    requests_per_day = CASE WHEN $7::int IS NULL THEN requests_per_day ELSE nullif($7, 0) END,
    tokens_per_day = CASE WHEN $8::bigint IS NULL THEN tokens_per_day ELSE nullif($8, 0) END
WHERE id = $1
"""
SET_ENABLED = """
UPDATE api_keys SET enabled = $2, disabled_reason = CASE WHEN $2 THEN NULL ELSE $3 END
WHERE id = $1
"""
DELETE_KEY = "DELETE FROM api_keys WHERE id = $1"


async def list_keys(conn: Connection, policy: ApiPolicy) -> list[KeyView]:
    """Every key, highest priority first, with its cooldowns and today's usage."""
    return await _views(conn, policy, None)


async def add_key(conn: Connection, vault: Vault, new: NewKey, policy: ApiPolicy) -> KeyView:
    """Store a key (its secret sealed) with source 'cli'."""
    if new.label == new.secret:
        raise InvalidArgument("label", validation.KEY_GIVEN_AS_LABEL)
    await _check_label(conn, "label", new.label)
    validation.check_secret(new.secret)
    validation.check_user("assigned_user", new.assigned_user)
    validation.check_priority("priority", new.priority)
    validation.check_limits(new.limits)
    log_format.redact(new.secret)  # the net under "never logged"
    if await conn.fetchval(SELECT_LABEL, new.label) is not None:
        raise AlreadyExists(f"an API key labelled {new.label!r} exists already")
    key_fingerprint = fingerprint(new.secret)
    holder = await conn.fetchval(SELECT_BY_FINGERPRINT, key_fingerprint)
    if holder is not None:
        raise AlreadyExists(f"this secret is stored already, as the key labelled {holder!r}")
    try:
        key_id = await conn.fetchval(
            INSERT_KEY,
            new.label,
            vault.seal(new.secret),
            key_fingerprint,
            new.priority,
            new.assigned_user or None,
            new.rotating,
            CLI_SOURCE,
            new.limits.requests_per_minute or None,
            new.limits.requests_per_day or None,
            new.limits.tokens_per_day or None,
        )
    except asyncpg.UniqueViolationError:  # added by someone else since we looked
        raise AlreadyExists(
            f"an API key labelled {new.label!r} or with this secret exists already"
        ) from None
    log.info("API key added", extra={"key": key_fingerprint, "label": new.label})
    return await _view(conn, policy, key_id)


async def update_key(conn: Connection, ref: str, changes: KeyChanges, policy: ApiPolicy) -> KeyView:
    """Change the fields that are set."""
    if changes.label is not None:
        await _check_label(conn, "label", changes.label)
    if changes.assigned_user is not None:
        validation.check_user("assigned_user", changes.assigned_user)
    if changes.priority is not None:
        validation.check_priority("priority", changes.priority)
    validation.check_limits(changes.limits)
    row = await _find(conn, ref)
    if changes.label is not None and changes.label != row["name"]:
        if (row["source"] or "").startswith(NODE_SOURCE_PREFIX):
            raise FailedPrecondition(
                f"key {row['name']!r} is held by a node ({row['source']}): its label comes"
                " from the node's key file"
            )
        if await conn.fetchval(SELECT_LABEL, changes.label) is not None:
            raise AlreadyExists(f"an API key labelled {changes.label!r} exists already")
    limits = changes.limits
    try:
        await conn.execute(
            UPDATE_KEY,
            row["id"],
            changes.label,
            changes.priority,
            changes.assigned_user,
            changes.rotating,
            limits.requests_per_minute,
            limits.requests_per_day,
            limits.tokens_per_day,
        )
    except asyncpg.UniqueViolationError:
        raise AlreadyExists(f"an API key labelled {changes.label!r} exists already") from None
    view = await _view(conn, policy, row["id"])
    log.info("API key updated", extra={"key": view.fingerprint, "label": view.label})
    return view


async def set_key_enabled(
    conn: Connection, ref: str, enabled: bool, reason: str, policy: ApiPolicy
) -> KeyView:
    """Enable a key (its disabled reason goes) or disable it, saying why."""
    validation.check_reason(reason)
    row = await _find(conn, ref)
    why = f"disabled: {reason.strip()}" if reason.strip() else "disabled by request"
    await conn.execute(SET_ENABLED, row["id"], enabled, why)
    view = await _view(conn, policy, row["id"])
    log.info(
        "API key enabled" if enabled else "API key disabled",
        extra={"key": view.fingerprint, "label": view.label},
    )
    return view


async def remove_key(conn: Connection, ref: str, policy: ApiPolicy) -> KeyView:
    """Delete a key (its cooldowns and usage go with it); return it as it was."""
    row = await _find(conn, ref)
    view = await _view(conn, policy, row["id"])
    await conn.execute(DELETE_KEY, row["id"])
    log.info("API key removed", extra={"key": view.fingerprint, "label": view.label})
    return view


async def _find(conn: Connection, ref: str) -> asyncpg.Record:
    """The key a reference names (locked for the caller's transaction)."""
    if not ref:
        raise InvalidArgument("ref.key", "is required: a key's label or fingerprint")
    row = await conn.fetchrow(FIND_KEY, ref)
    if row is not None:
        return row
    if validation.looks_like_a_key(ref) or await _is_stored_secret(conn, ref):
        raise InvalidArgument(
            "ref.key",
            "is an API key's secret, not its label or fingerprint (the secret was not"
            " repeated here; see `agentmesh keys list`)",
        )
    if len(ref) > 64:  # longer than any label or fingerprint: do not repeat it
        raise NotFound("no API key has this label or fingerprint (it is longer than any)")
    raise NotFound(f"no API key has the label or fingerprint {ref!r}")


async def _is_stored_secret(conn: Connection, text: str) -> bool:
    return await conn.fetchval(SELECT_BY_FINGERPRINT, fingerprint(text)) is not None


async def _check_label(conn: Connection, name: str, label: str) -> None:
    validation.check_label(name, label, is_stored_secret=await _is_stored_secret(conn, label))


async def _view(conn: Connection, policy: ApiPolicy, key_id: int) -> KeyView:
    views = await _views(conn, policy, key_id)
    assert views, f"key {key_id} vanished inside its transaction"
    return views[0]


async def _views(conn: Connection, policy: ApiPolicy, key_id: int | None) -> list[KeyView]:
    rows = await conn.fetch(SELECT_KEYS, key_id)
    cooldowns: dict[int, list[Cooldown]] = {}
    for row in await conn.fetch(SELECT_COOLDOWNS, key_id):
        cooldowns.setdefault(row["key_id"], []).append(
            Cooldown(row["model"], row["cooling_until"], row["cooling_reason"])
        )
    usage: dict[int, list[ModelUsage]] = {}
    for row in await conn.fetch(SELECT_USAGE_TODAY, key_id):
        usage.setdefault(row["key_id"], []).append(
            ModelUsage(
                row["model"],
                row["requests"],
                row["tokens"],
                row["reserved_requests"],
                row["reserved_tokens"],
            )
        )
    views = []
    for row in rows:
        own = Limits(row["requests_per_minute"], row["requests_per_day"], row["tokens_per_day"])
        views.append(
            KeyView(
                id=row["id"],
                label=row["name"],
                fingerprint=row["fingerprint"],
                priority=row["priority"],
                assigned_user=row["assigned_user"],
                rotating=row["rotating"],
                source=row["source"],
                enabled=row["enabled"],
                disabled_reason=row["disabled_reason"],
                own_limits=own,
                limits=limits_in_force(own, policy),
                cooldowns=tuple(cooldowns.get(row["id"], ())),
                usage_today=tuple(usage.get(row["id"], ())),
                last_used=row["last_used_at"],
                created_at=row["created_at"],
                node_id=row["node_id"],
            )
        )
    return views
