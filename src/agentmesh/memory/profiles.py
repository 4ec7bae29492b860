"""User profiles (`user_profile`): read, written field by field, listed."""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from agentmesh.config import PermissionMode
from agentmesh.errors import NotFound
from agentmesh.memory.model import PROFILE_FIELDS, Profile, validate_username

COLUMNS = "username, " + ", ".join(PROFILE_FIELDS)
SELECT_PROFILE = f"SELECT {COLUMNS} FROM user_profile WHERE username = $1"
SELECT_DEFAULT_MODES = """
SELECT username, default_permissions FROM user_profile
WHERE username = ANY($1::text[]) AND default_permissions IS NOT NULL
"""
SELECT_PROFILES = f"SELECT {COLUMNS} FROM user_profile ORDER BY username NULLS LAST, id"


def _upsert(fields: list[str]) -> str:
    """Insert the profile or change only these fields of it ($2, $3, ... in this order)."""
    names = ", ".join(fields)
    values = ", ".join(f"${i}" for i in range(2, len(fields) + 2))
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in fields) or "username = username"
    return (
        f"INSERT INTO user_profile (username{', ' if fields else ''}{names})"
        f" VALUES ($1{', ' if fields else ''}{values})"
        f" ON CONFLICT (username) DO UPDATE SET {updates}"
        f" RETURNING {COLUMNS}"
    )


def _profile(row: asyncpg.Record) -> Profile:
    mode = row["default_permissions"]
    return Profile(
        username=row["username"] or "",
        default_permissions=PermissionMode(mode) if mode in tuple(PermissionMode) else None,
        throttle_tolerance=row["throttle_tolerance"],
        max_token_per_request=row["max_token_per_request"],
        timezone=row["timezone"],
        preferred_format=row["preferred_format"],
    )


class Profiles:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, username: str) -> Profile:
        validate_username(username)
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(SELECT_PROFILE, username)
        if row is None:
            raise NotFound(f"no profile for user {username!r} (agentmesh profile set)")
        return _profile(row)

    async def find(self, username: str) -> Profile | None:
        """The user's profile, or None (a user without one, or no user)."""
        if not username:
            return None
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(SELECT_PROFILE, username)
        return _profile(row) if row is not None else None

    async def default_modes(self, usernames: Iterable[str]) -> dict[str, str]:
        """The `default_permissions` of those of these users who have one."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(SELECT_DEFAULT_MODES, list(usernames))
        modes = tuple(PermissionMode)
        # A value written around the API (by hand, by SQL) that is no mode is no default.
        return {
            row["username"]: row["default_permissions"]
            for row in rows
            if row["default_permissions"] in modes
        }

    async def set(self, username: str, change: dict[str, object | None]) -> Profile:
        """Write these (checked: see model.profile_change) fields, creating the profile."""
        fields = [name for name in PROFILE_FIELDS if name in change]
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(_upsert(fields), username, *(change[f] for f in fields))
        assert row is not None
        return _profile(row)

    async def list(self) -> list[Profile]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(SELECT_PROFILES)
        return [_profile(row) for row in rows]
