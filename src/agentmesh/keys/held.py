"""Keys held by nodes: a node started with its own GEMINI_API_KEY_FILE keeps the secrets on
its host and advertises only labels and fingerprints (`AgentCard.held_keys`).

The scheduler stores each as an `api_keys` row without a secret: `source` 'node:NAME',
`node_id` the agent id that registered it last, and the label `NAME/LABEL` (a `/` never
appears in a label given through `agentmesh keys`, so node labels cannot collide with
those, nor two nodes' labels with each other). A node is known by its name, so a node that
comes back with a new agent id (a wiped data directory) keeps its keys.

- A fingerprint already stored as a central key stays central: the scheduler holds the
  secret and can hand it to any node, which is the better of the two.
- The same secret on two nodes stays with the node that registered it first.
- A key the node no longer holds is disabled ("no longer held by node NAME"), not deleted:
  today's usage stays counted should it come back, and it is enabled again when it does.
- A label whose fingerprint changed is a new key: enabled, its cooldowns cleared.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import asyncpg

from agentmesh.db.connect import Connection
from agentmesh.errors import InvalidArgument
from agentmesh.node.card import HeldKey

log = logging.getLogger(__name__)

FINGERPRINT = re.compile(r"sha256:[0-9a-f]{12}")
MAX_HELD_KEYS = 1000
MAX_LABEL_CHARS = 200

SELECT_HELD_ROWS = """
SELECT id, name, fingerprint, coalesce(source, '') AS source, enabled,
       coalesce(disabled_reason, '') AS disabled_reason
FROM api_keys
WHERE source = $1 OR name = ANY($2::text[]) OR fingerprint = ANY($3::text[])
FOR UPDATE
"""
INSERT_HELD = """
INSERT INTO api_keys (name, key_value, fingerprint, source, node_id)
VALUES ($1, NULL, $2, $3, $4)
RETURNING id
"""
# The same key, registered again: its label may have changed, and it may come back.
REFRESH_HELD = """
UPDATE api_keys SET name = $2, node_id = $3,
    enabled = enabled OR disabled_reason = $4,
    disabled_reason = CASE WHEN disabled_reason = $4 THEN NULL ELSE disabled_reason END
WHERE id = $1
"""
# A label of this node with another secret: a new key.
REPLACE_HELD = """
UPDATE api_keys SET fingerprint = $2, node_id = $3, key_value = NULL, enabled = true,
                    disabled_reason = NULL
WHERE id = $1
"""
CLEAR_COOLDOWNS = "DELETE FROM api_key_models WHERE key_id = $1"
DISABLE_NOT_HELD = """
UPDATE api_keys SET enabled = false, disabled_reason = $2
WHERE id = ANY($1::bigint[]) AND enabled
"""


def node_source(node_name: str) -> str:
    return f"node:{node_name}"


def node_label(node_name: str, label: str) -> str:
    return f"{node_name}/{label}"


def not_held_reason(node_name: str) -> str:
    return f"no longer held by node {node_name}"


def validate_held_keys(held: Sequence[HeldKey], field: str = "card.held_keys") -> None:
    """Raise InvalidArgument naming the first bad entry."""
    if len(held) > MAX_HELD_KEYS:
        raise InvalidArgument(field, f"{len(held)} keys; at most {MAX_HELD_KEYS}")
    labels: set[str] = set()
    fingerprints: set[str] = set()
    for index, key in enumerate(held):
        where = f"{field}[{index}]"
        if not FINGERPRINT.fullmatch(key.fingerprint):
            raise InvalidArgument(f"{where}.fingerprint", "must be sha256: and 12 hex digits")
        if not key.label or len(key.label) > MAX_LABEL_CHARS:
            raise InvalidArgument(f"{where}.label", f"must be 1-{MAX_LABEL_CHARS} characters")
        if any(c.isspace() or not c.isprintable() for c in key.label):
            raise InvalidArgument(f"{where}.label", "must be printable, without spaces")
        if key.label in labels:
            raise InvalidArgument(f"{where}.label", f"{key.label!r} is listed twice")
        if key.fingerprint in fingerprints:
            raise InvalidArgument(f"{where}.fingerprint", f"{key.fingerprint} is listed twice")
        labels.add(key.label)
        fingerprints.add(key.fingerprint)


async def register_node_keys(
    conn: Connection, agent_id: str, node_name: str, held: Sequence[HeldKey]
) -> int:
    """Make `api_keys` agree with what the node holds now; return how many keys it holds
    there (central ones and other nodes' excluded). Run it in a transaction."""
    source = node_source(node_name)
    reason = not_held_reason(node_name)
    wanted = {node_label(node_name, key.label): key.fingerprint for key in held}
    rows = await conn.fetch(SELECT_HELD_ROWS, source, list(wanted), list(wanted.values()))
    by_name = {row["name"]: row for row in rows}
    by_fingerprint = {row["fingerprint"]: row for row in rows}
    kept: set[int] = set()
    for label, key_fingerprint in wanted.items():
        fields = {"key": key_fingerprint, "node": node_name}
        try:
            # A savepoint: a label swap that collides skips that key, not the heartbeat.
            async with conn.transaction():
                key_id = await _register_one(
                    conn, agent_id, node_name, label, key_fingerprint, by_name, by_fingerprint
                )
        except asyncpg.UniqueViolationError:  # another key took its label or secret meanwhile
            log.warning(
                "node key %s not registered: another key has its label or fingerprint",
                label,
                extra=fields,
            )
            continue
        if key_id is not None:
            kept.add(key_id)
    gone = [row["id"] for row in rows if row["source"] == source and row["id"] not in kept]
    if gone:
        await conn.execute(DISABLE_NOT_HELD, gone, reason)
    log.info(
        "node %s holds %d API key(s)",
        node_name,
        len(kept),
        extra={"agent": agent_id, "keys": ",".join(sorted(wanted.values()))},
    )
    return len(kept)


async def _register_one(
    conn: Connection,
    agent_id: str,
    node_name: str,
    label: str,
    key_fingerprint: str,
    by_name: dict[str, asyncpg.Record],
    by_fingerprint: dict[str, asyncpg.Record],
) -> int | None:
    """Store one held key; its id, or None when it is not this node's to hold."""
    source = node_source(node_name)
    fields = {"key": key_fingerprint, "node": node_name}
    known = by_fingerprint.get(key_fingerprint)
    if known is not None:
        if known["source"] == source:
            await conn.execute(
                REFRESH_HELD, known["id"], label, agent_id, not_held_reason(node_name)
            )
            return int(known["id"])
        if known["source"].startswith("node:"):
            log.warning(
                "node key %s is held by %s too: it stays with that node",
                label,
                known["source"],
                extra=fields,
            )
        else:
            log.debug("node key %s stays central as %s", label, known["name"], extra=fields)
        return None
    same_label = by_name.get(label)
    if same_label is not None:
        if same_label["source"] != source:
            log.warning("node key %s not registered: its label is taken", label, extra=fields)
            return None
        await conn.execute(REPLACE_HELD, same_label["id"], key_fingerprint, agent_id)
        await conn.execute(CLEAR_COOLDOWNS, same_label["id"])
        return int(same_label["id"])
    return int(await conn.fetchval(INSERT_HELD, label, key_fingerprint, source, agent_id))
