"""The agents table: nodes register and heartbeat; the scheduler reads who is online.

In a secured mesh (a user token is set) a heartbeat comes under a node credential, which it
binds to its agent id in the same transaction that writes the agent's row, and the row
remembers that credential: only agents whose row was written under their own live, bound
credential are dialled, with the dispatch secret derived for that credential and agent.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import asyncpg

from agentmesh.access import credentials
from agentmesh.access.credentials import NodeIdentity
from agentmesh.config import PermissionMode
from agentmesh.db import notify
from agentmesh.keys.held import register_node_keys
from agentmesh.node.card import AgentCard, HeldKey, held_keys_from
from agentmesh.scheduler.placement import AgentSlot
from agentmesh.scheduler.queries import WORKING_PER_AGENT

UPSERT_AGENT = """
INSERT INTO agents (id, hostname, ip_address, endpoint, last_heartbeat, capabilities, card,
                    current_task_id, running_tasks, max_concurrency, status, credential_id)
VALUES ($1, $2, $3, $4, now(), $5, $6, $7, $8, $9, $10, $12)
ON CONFLICT (id) DO UPDATE SET
    credential_id = EXCLUDED.credential_id,
    hostname = EXCLUDED.hostname, ip_address = EXCLUDED.ip_address,
    endpoint = EXCLUDED.endpoint, last_heartbeat = now(),
    capabilities = EXCLUDED.capabilities, card = EXCLUDED.card,
    -- The seed's current task: one the node runs, as its heartbeats report (the current
    -- one stays while it runs). A task's start and end do not write the agent's row: at
    -- full speed that rewrote it twice a task, on every replica's hot path.
    current_task_id = CASE WHEN agents.current_task_id = ANY($11::text[])
                           THEN agents.current_task_id ELSE EXCLUDED.current_task_id END,
    running_tasks = EXCLUDED.running_tasks,
    max_concurrency = EXCLUDED.max_concurrency,
    -- A heartbeat proves the node reaches us, not that we reach it: an unreachable agent
    -- stays so until a dial succeeds, or it advertises another endpoint.
    status = CASE WHEN agents.status = 'unreachable' AND EXCLUDED.status = 'online'
                       AND agents.endpoint = EXCLUDED.endpoint
                  THEN 'unreachable' ELSE EXCLUDED.status END
RETURNING status, credential_id, card - 'running_tasks' AS card
"""
# What placement reads of an agent (the heartbeat's count of running tasks aside), as it is
# before a heartbeat writes it; locked, so that no mark slips in between.
SELECT_PLACED_AS = """
SELECT status, credential_id, card - 'running_tasks' AS card,
       last_heartbeat > now() - make_interval(secs => $2) AS fresh
FROM agents WHERE id = $1 FOR UPDATE
"""
UPSERT_HOST = """
INSERT INTO home_network (host_name, ip_address, service, tags, last_seen)
VALUES ($1, $2, 'agentmesh-node', $3, now())
ON CONFLICT (host_name, service) DO UPDATE SET
    ip_address = EXCLUDED.ip_address, tags = EXCLUDED.tags, last_seen = now()
"""
# The inventory, as the seed defines it: any row, including those a person wrote by hand.
SELECT_HOSTS = """
SELECT host_name, ip_address, service, tags, notes, last_seen FROM home_network
ORDER BY host_name NULLS LAST, service NULLS LAST, id
"""
# $2: secured; then an agent counts only if its row was written under its own live, bound
# credential (a revoked one, or a row from an open mesh, is never dialled).
_CREDENTIAL = """
LEFT JOIN node_credentials c
    ON c.id = a.credential_id AND c.agent_id = a.id AND c.revoked_at IS NULL
"""
# With how many attempts each runs now, by any scheduler.
SELECT_ONLINE = f"""
SELECT a.id, a.card, a.status, c.id AS credential_id, coalesce(w.running, 0) AS running
FROM agents a {_CREDENTIAL}
LEFT JOIN ({WORKING_PER_AGENT}) w ON w.assigned_agent = a.id
WHERE a.status <> 'offline' AND a.last_heartbeat > now() - make_interval(secs => $1)
  AND (c.id IS NOT NULL OR NOT $2)
"""
# Every agent that may come back (offline ones too): which ceilings the mesh has.
SELECT_REGISTERED = f"""
SELECT a.id, a.card, a.status, c.id AS credential_id FROM agents a {_CREDENTIAL}
WHERE c.id IS NOT NULL OR NOT $1
"""
SELECT_ALL = """
SELECT id, card, status, last_heartbeat,
       (last_heartbeat > now() - make_interval(secs => $1)) AS fresh
FROM agents ORDER BY card->>'name', id
"""


def _told(update: str) -> str:
    """`update` (of agents rows), telling every replica on the queue channel when it
    changed any (PostgreSQL folds a transaction's equal notifications into one): a replica
    that kept the agents as its last round read them (see Dispatcher.next_round) must read
    them again before it places anything there."""
    return f"""
WITH changed AS ({update} RETURNING 1)
SELECT {notify.NOTIFY_QUEUE} FROM changed
"""


MARK_STALE_OFFLINE = _told("""
UPDATE agents SET status = 'offline'
WHERE status <> 'offline' AND last_heartbeat <= now() - make_interval(secs => $1)
""")
MARK_OFFLINE = _told("UPDATE agents SET status = 'offline' WHERE id = $1 AND status <> 'offline'")
MARK_DRAINING = _told("UPDATE agents SET status = 'draining' WHERE id = $1 AND status = 'online'")
MARK_UNREACHABLE = _told(
    "UPDATE agents SET status = 'unreachable' WHERE id = $1 AND status = 'online'"
)
# A node back in reach may fit tasks that wait.
MARK_REACHABLE = _told(
    "UPDATE agents SET status = 'online' WHERE id = $1 AND status = 'unreachable' AND endpoint = $2"
)
SELECT_UNREACHABLE = f"""
SELECT a.id, a.endpoint, c.id AS credential_id FROM agents a {_CREDENTIAL}
WHERE a.status = 'unreachable' AND a.last_heartbeat > now() - make_interval(secs => $1)
  AND (c.id IS NOT NULL OR NOT $2)
"""


@dataclass(frozen=True)
class HostEntry:
    """A row of `home_network`: a host and one service on it."""

    host_name: str
    ip_address: str
    service: str
    tags: tuple[str, ...]
    notes: str
    # The seed's column has no time zone: it holds UTC.
    last_seen: datetime | None


def host_entry(row: asyncpg.Record) -> HostEntry:
    """A `home_network` row as a HostEntry."""
    return HostEntry(
        host_name=row["host_name"] or "",
        ip_address=row["ip_address"] or "",
        service=row["service"] or "",
        tags=tuple(row["tags"] or ()),
        notes=row["notes"] or "",
        last_seen=row["last_seen"].replace(tzinfo=UTC) if row["last_seen"] else None,
    )


@dataclass(frozen=True)
class AgentView:
    card: AgentCard
    status: str
    last_heartbeat: datetime


def card_to_json(card: AgentCard) -> dict[str, object]:
    return dataclasses.asdict(card)


_CARD_FIELDS = frozenset(f.name for f in dataclasses.fields(AgentCard))


def card_from_json(values: dict[str, object]) -> AgentCard:
    data = {k: v for k, v in values.items() if k in _CARD_FIELDS}
    for name in ("ip_addresses", "executors", "models", "capabilities"):
        data[name] = tuple(cast(list[str], data.get(name) or []))
    data["held_keys"] = held_keys_from(data.get("held_keys"))
    return AgentCard(**data)  # type: ignore[arg-type]


def _primary_address(card: AgentCard) -> str | None:
    """The first non-loopback address, else the first one (the `ip_address` column)."""
    addresses = [a for a in card.ip_addresses if _is_ip(a)]
    for address in addresses:
        if not ipaddress.ip_address(address).is_loopback:
            return address
    return addresses[0] if addresses else None


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _placement_changed(before: asyncpg.Record | None, after: asyncpg.Record) -> bool:
    """Whether a heartbeat changed what placement reads of its agent: then every replica
    must read the agents again (a new or returning agent may fit tasks that wait, a changed
    one may no longer fit what a replica would place there). Most heartbeats change only
    the time and the running tasks, and wake nobody."""
    if before is None or not before["fresh"]:
        return True
    return any(before[name] != after[name] for name in ("status", "credential_id", "card"))


# The dispatch secret of (credential id, agent id): what the scheduler presents to the node.
DispatchSecrets = Callable[[str, str], str]


class AgentRegistry:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        ttl_seconds: float,
        dispatch_secrets: DispatchSecrets | None = None,
    ) -> None:
        """With `dispatch_secrets` the mesh is secured: see the module's docstring."""
        self._pool = pool
        self.ttl_seconds = ttl_seconds
        self._dispatch_secrets = dispatch_secrets
        # What each agent's keys were when this replica last registered them: a heartbeat
        # writes them only when they change (and once after this replica starts).
        self._held_keys: dict[str, tuple[str, frozenset[HeldKey]]] = {}
        # Each agent's card as last read, and parsed: every round reads the cards, and they
        # change only when their nodes do.
        self._cards: dict[str, tuple[dict[str, object], AgentCard]] = {}

    @property
    def secured(self) -> bool:
        return self._dispatch_secrets is not None

    def _secret(self, credential_id: str | None, agent_id: str) -> str | None:
        if self._dispatch_secrets is None or credential_id is None:
            return None
        return self._dispatch_secrets(credential_id, agent_id)

    async def heartbeat(
        self,
        card: AgentCard,
        running_task_ids: tuple[str, ...],
        identity: NodeIdentity | None = None,
    ) -> str:
        """Record a heartbeat (under `identity`'s credential, which it binds to the agent id,
        or refuses with PermissionDenied); the keys the node holds are registered when they
        change. Returns the dispatch secret the node is to expect ("" in an open mesh)."""
        held = (card.name, frozenset(card.held_keys))
        register_keys = self._held_keys.get(card.agent_id) != held
        status = "draining" if card.draining else "online"
        address = _primary_address(card)
        credential_id = identity.credential_id if identity is not None else None
        async with self._pool.acquire() as conn, conn.transaction():
            if identity is not None:
                await credentials.bind(conn, identity, card.agent_id)
            before = await conn.fetchrow(SELECT_PLACED_AS, card.agent_id, self.ttl_seconds)
            after = await conn.fetchrow(
                UPSERT_AGENT,
                card.agent_id,
                card.hostname,
                address,
                card.endpoint,
                list(card.capabilities),
                card_to_json(card),
                running_task_ids[0] if running_task_ids else None,
                len(running_task_ids),
                card.max_concurrency,
                status,
                list(running_task_ids),
                credential_id,
            )
            assert after is not None  # an upsert returns its row
            await conn.execute(UPSERT_HOST, card.hostname, address, list(card.capabilities))
            if register_keys:
                await register_node_keys(conn, card.agent_id, card.name, card.held_keys)
            if _placement_changed(before, after):
                await conn.execute(notify.WAKE_QUEUE)
        if register_keys:
            self._held_keys[card.agent_id] = held
        return self._secret(credential_id, card.agent_id) or ""

    async def online(self, own: Mapping[str, int]) -> list[AgentSlot]:
        """The agents that may get work, each with its running attempts: as the database
        counts them, or as `own` does (this scheduler's attempts, whose rows may not be
        visible yet), whichever is more."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(SELECT_ONLINE, self.ttl_seconds, self.secured)
        return [
            self._slot(row, {row["id"]: max(row["running"], own.get(row["id"], 0))}) for row in rows
        ]

    async def registered(self) -> list[AgentSlot]:
        """Every agent that may come back, online or not (placement reads their ceilings)."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(SELECT_REGISTERED, self.secured)
        return [self._slot(row, {}) for row in rows]

    def _card(self, row: asyncpg.Record) -> AgentCard:
        values = row["card"]
        cached = self._cards.get(row["id"])
        if cached is not None and cached[0] == values:
            return cached[1]
        card = card_from_json(values)
        self._cards[row["id"]] = (values, card)
        return card

    def _slot(self, row: asyncpg.Record, running: dict[str, int]) -> AgentSlot:
        card = self._card(row)
        try:
            ceiling = PermissionMode(card.max_permission_mode)
        except ValueError:
            ceiling = PermissionMode.WEAK
        return AgentSlot(
            agent_id=card.agent_id,
            name=card.name,
            hostname=card.hostname,
            endpoint=card.endpoint,
            capabilities=frozenset(card.capabilities),
            executors=frozenset(card.executors),
            max_concurrency=max(card.max_concurrency, 1),
            running=running.get(card.agent_id, 0),
            draining=row["status"] == "draining",
            unreachable=row["status"] == "unreachable",
            max_permission_mode=ceiling,
            dispatch_secret=self._secret(row["credential_id"], card.agent_id),
        )

    async def list_agents(self, *, include_offline: bool) -> list[AgentView]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(SELECT_ALL, self.ttl_seconds)
        views = []
        for row in rows:
            status = row["status"] if row["fresh"] else "offline"
            if status == "offline" and not include_offline:
                continue
            views.append(AgentView(card_from_json(row["card"]), status, row["last_heartbeat"]))
        return views

    async def list_hosts(self) -> list[HostEntry]:
        """The `home_network` inventory, by host name."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(SELECT_HOSTS)
        return [host_entry(row) for row in rows]

    async def mark_stale_offline(self) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(MARK_STALE_OFFLINE, self.ttl_seconds)

    async def mark_offline(self, agent_id: str) -> None:
        """A node that stopped answering is offline until its next heartbeat."""
        async with self._pool.acquire() as conn:
            await conn.execute(MARK_OFFLINE, agent_id)

    async def mark_unreachable(self, agent_id: str) -> None:
        """The scheduler could not dial the agent: no work goes there until a dial succeeds."""
        async with self._pool.acquire() as conn:
            await conn.execute(MARK_UNREACHABLE, agent_id)

    async def mark_reachable(self, agent_id: str, endpoint: str) -> None:
        """A dial to the agent's endpoint succeeded: it may get work again."""
        async with self._pool.acquire() as conn:
            await conn.execute(MARK_REACHABLE, agent_id, endpoint)

    async def unreachable(self) -> list[tuple[str, str, str | None]]:
        """(agent id, endpoint, dispatch secret) of the heartbeating agents the scheduler
        could not dial."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(SELECT_UNREACHABLE, self.ttl_seconds, self.secured)
        return [
            (row["id"], row["endpoint"], self._secret(row["credential_id"], row["id"]))
            for row in rows
        ]

    async def mark_draining(self, agent_id: str) -> None:
        """A node that said it is shutting down gets no new work (its heartbeat agrees)."""
        async with self._pool.acquire() as conn:
            await conn.execute(MARK_DRAINING, agent_id)
