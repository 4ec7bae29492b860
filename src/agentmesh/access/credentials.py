"""Node credentials (`node_credentials`): one random token per node, kept only as a hash.

A credential is issued by `agentmesh nodes enroll` and shown once. The first heartbeat
under it binds the agent id that heartbeat names; from then on it speaks for that agent
only, and an agent id bound to one live credential cannot be spoken for by another (a
unique index holds that even between scheduler replicas). Revoking one takes effect on
the next call: it is looked up on every call, never cached.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from agentmesh.config import Settings
from agentmesh.db.connect import Connection
from agentmesh.db.notify import NOTIFY_QUEUE
from agentmesh.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied, Reason

# Says what a leaked token is (an agentmesh node credential) to a secret scanner or a person.
TOKEN_PREFIX = "amn_"  # noqa: S105 - a prefix, not a secret
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")

INSERT_CREDENTIAL = """
INSERT INTO node_credentials (id, name, token_hash) VALUES ($1, $2, $3)
RETURNING id, name, agent_id, created_at, last_used_at, revoked_at
"""
SELECT_BY_HASH = """
SELECT id, name, agent_id, revoked_at IS NOT NULL AS revoked FROM node_credentials
WHERE token_hash = $1
"""
SELECT_ALL = """
SELECT id, name, agent_id, created_at, last_used_at, revoked_at FROM node_credentials
ORDER BY revoked_at IS NOT NULL, name, created_at
"""
# A live credential by id, or by name (names are unique among live credentials).
# A revoked credential's agent gets no more work: the schedulers hear of it on the queue
# channel and read the agents again before they place anything (see Dispatcher.wake).
REVOKE = f"""
WITH r AS (
    UPDATE node_credentials SET revoked_at = now()
    WHERE revoked_at IS NULL AND (id = $1 OR name = $1)
    RETURNING id, name, agent_id, created_at, last_used_at, revoked_at
)
SELECT r.*, {NOTIFY_QUEUE} FROM r
"""
REVOKE_NAME = f"""
WITH r AS (
    UPDATE node_credentials SET revoked_at = now() WHERE revoked_at IS NULL AND name = $1
    RETURNING id
)
SELECT {NOTIFY_QUEUE} FROM r
"""
# Who else speaks for the agent: a live credential other than $1 bound to $2.
SELECT_OTHER_HOLDER = """
SELECT name FROM node_credentials
WHERE agent_id = $2 AND id <> $1 AND revoked_at IS NULL
"""
# The credential speaks for agent $2 from now on, if it spoke for no one yet.
BIND = """
UPDATE node_credentials SET agent_id = COALESCE(agent_id, $2), last_used_at = now()
WHERE id = $1 AND revoked_at IS NULL
RETURNING agent_id
"""


@dataclass(frozen=True)
class NodeIdentity:
    """Who a call under a node credential comes from."""

    credential_id: str
    name: str
    # The agent id its first heartbeat bound; None before that.
    agent_id: str | None


@dataclass(frozen=True)
class CredentialView:
    """A credential as `agentmesh nodes list` shows it: never its token or hash."""

    id: str
    name: str
    agent_id: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class Verified:
    """A token's credential, live or revoked."""

    identity: NodeIdentity
    revoked: bool


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _view(row: asyncpg.Record) -> CredentialView:
    return CredentialView(
        id=row["id"],
        name=row["name"],
        agent_id=row["agent_id"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


async def enroll(
    conn: Connection, name: str, *, replace: bool = False
) -> tuple[CredentialView, str]:
    """Issue a credential named `name`; return it and its token (shown once, stored hashed).

    With `replace`, a live credential of that name is revoked first (a local mesh that
    enrolls its own nodes at every start); otherwise the name must be free."""
    if not _NAME.match(name):
        raise InvalidArgument("name", "1-64 of letters, digits, . _ : - (a letter or digit first)")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    async with conn.transaction():
        if replace:
            await conn.execute(REVOKE_NAME, name)
        try:
            row = await conn.fetchrow(
                INSERT_CREDENTIAL, f"nc-{uuid.uuid4().hex[:12]}", name, token_hash(token)
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyExists(
                f"a live node credential is named {name} already: revoke it first"
                " (agentmesh nodes revoke), or choose another --name"
            ) from None
    assert row is not None
    return _view(row), token


async def list_credentials(conn: Connection) -> list[CredentialView]:
    return [_view(row) for row in await conn.fetch(SELECT_ALL)]


async def revoke(conn: Connection, ref: str) -> CredentialView:
    """Revoke the live credential with this id or name."""
    row = await conn.fetchrow(REVOKE, ref)
    if row is None:
        raise NotFound(f"no live node credential has the id or name {ref}")
    return _view(row)


async def verify(conn: Connection, token: str) -> Verified | None:
    """The credential whose token this is, or None."""
    row = await conn.fetchrow(SELECT_BY_HASH, token_hash(token))
    if row is None:
        return None
    identity = NodeIdentity(row["id"], row["name"], row["agent_id"])
    return Verified(identity, revoked=row["revoked"])


async def bind(conn: Connection, identity: NodeIdentity, agent_id: str) -> None:
    """Let the credential speak for `agent_id` (binding it on first use), or refuse.

    Run in the heartbeat's transaction, before the agent's row is written."""
    holder = await conn.fetchval(SELECT_OTHER_HOLDER, identity.credential_id, agent_id)
    if holder is not None:
        raise _bound_elsewhere(agent_id)
    try:
        bound = await conn.fetchval(BIND, identity.credential_id, agent_id)
    except asyncpg.UniqueViolationError:  # another replica bound it a moment ago
        raise _bound_elsewhere(agent_id) from None
    if bound is None:
        raise PermissionDenied(
            f"node credential {identity.name} was revoked", reason=Reason.AGENT_NOT_BOUND
        )
    if bound != agent_id:
        raise PermissionDenied(
            f"node credential {identity.name} speaks for agent {bound}, not {agent_id}:"
            " each node needs a credential of its own (agentmesh nodes enroll)",
            reason=Reason.AGENT_NOT_BOUND,
        )


def _bound_elsewhere(agent_id: str) -> PermissionDenied:
    return PermissionDenied(
        f"agent {agent_id} is bound to another node credential: only that node may"
        " heartbeat for it (revoke its credential to move the agent id)",
        reason=Reason.AGENT_NOT_BOUND,
    )


async def enroll_local_node(pool: asyncpg.Pool, settings: Settings, node_name: str) -> Settings:
    """`settings` for a node that a local mesh (`agentmesh up`, `demo`) starts in its own
    process: in a secured mesh, with a fresh credential named `local:NAME` (replacing that
    name's last one, from an earlier start); in an open mesh, as they are."""
    if settings.token is None:
        return settings
    async with pool.acquire() as conn:
        _, token = await enroll(conn, f"local:{node_name}", replace=True)
    return settings.with_node_token(token)
