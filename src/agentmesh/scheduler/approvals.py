"""Approvals as people see them: the questions tasks wait on, and the remembered answers.

The transitions (a task waits, is approved, is denied) are the task store's; this module
lists the pending questions and the user's remembered approvals (`permissions_profile`),
and forgets one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from agentmesh.errors import NotFound

SELECT_PENDING = """
SELECT r.id, r.task_id, r.user_id, r.command, r.rule, r.mode, r.detail, r.created_at
FROM approval_requests r JOIN tasks t ON t.id = r.task_id
WHERE r.answer IS NULL AND t.state = 'input_required' AND ($1 = '' OR r.user_id = $1)
ORDER BY r.created_at, r.id
"""
SELECT_REMEMBERED = """
SELECT id, user_id, command, prefix, approved_at, last_used FROM permissions_profile
WHERE allow_by_default AND ($1 = '' OR user_id = $1)
ORDER BY user_id, command, id
"""
FORGET = """
DELETE FROM permissions_profile WHERE id = $1
RETURNING id, user_id, command, prefix, approved_at, last_used
"""


@dataclass(frozen=True)
class ApprovalView:
    """A pending question (with its task, rule and mode) or a remembered approval."""

    id: int
    user: str
    command: str
    task_id: str = ""
    prefix: bool = False
    rule: str = ""
    mode: str = ""
    detail: str = ""
    created_at: datetime | None = None
    last_used: datetime | None = None


def _remembered(row: asyncpg.Record) -> ApprovalView:
    last_used = row["last_used"]  # the seed's column: a timestamp without zone, in UTC
    return ApprovalView(
        id=row["id"],
        user=row["user_id"] or "",
        command=row["command"] or "",
        prefix=row["prefix"],
        created_at=row["approved_at"],
        last_used=last_used.replace(tzinfo=UTC) if last_used else None,
    )


class ApprovalBook:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def pending(self, user: str = "") -> list[ApprovalView]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(SELECT_PENDING, user)
        return [
            ApprovalView(
                id=row["id"],
                user=row["user_id"],
                command=row["command"],
                task_id=row["task_id"],
                rule=row["rule"],
                mode=row["mode"],
                detail=row["detail"],
                created_at=row["created_at"],
            )
            for row in rows
        ]

    async def remembered(self, user: str = "") -> list[ApprovalView]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(SELECT_REMEMBERED, user)
        return [_remembered(row) for row in rows]

    async def forget(self, approval_id: int) -> ApprovalView:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(FORGET, approval_id)
        if row is None:
            raise NotFound(
                f"no remembered approval {approval_id} (agentmesh approvals --remembered)"
            )
        return _remembered(row)
