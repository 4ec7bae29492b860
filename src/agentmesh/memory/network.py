"""The home network (`home_network`) as people edit it: hosts and services that run no node.

Nodes add and refresh their own row as they heartbeat (scheduler.agents); here a person adds
any host and service, tags hosts and removes them. A row is a host and one service."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import asyncpg

from agentmesh.errors import InvalidArgument, NotFound
from agentmesh.scheduler.agents import HostEntry, host_entry

MAX_FIELD = 255
COLUMNS = "host_name, ip_address, service, tags, notes, last_seen"
ADD_HOST = f"""
INSERT INTO home_network (host_name, ip_address, service, tags, notes)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (host_name, service) DO UPDATE SET
    ip_address = EXCLUDED.ip_address, tags = EXCLUDED.tags, notes = EXCLUDED.notes
RETURNING {COLUMNS}
"""
TAG_HOST = f"""
UPDATE home_network SET tags = ARRAY(
    SELECT DISTINCT t FROM unnest(coalesce(tags, '{{}}') || $2::text[]) AS t
    WHERE t <> ALL($3::text[]) ORDER BY t
)
WHERE host_name = $1
RETURNING {COLUMNS}
"""
REMOVE_HOST = """
DELETE FROM home_network WHERE host_name = $1 AND ($2::text IS NULL OR service = $2)
"""


def _name(value: str, field_name: str) -> str:
    if not value or len(value) > MAX_FIELD or any(c.isspace() for c in value):
        raise InvalidArgument(field_name, f"must be 1-{MAX_FIELD} characters without spaces")
    return value


def _tags(values: Sequence[str], field_name: str = "tags") -> list[str]:
    for value in values:
        _name(value, field_name)
    return sorted(set(values))


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise InvalidArgument("ip_address", f"{value!r} is not an IPv4 or IPv6 address") from None


class HomeNetwork:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def add(
        self, host: str, ip: str, service: str, tags: Sequence[str], notes: str
    ) -> HostEntry:
        row_values = (
            _name(host, "host_name"),
            _ip(ip) if ip else None,
            _name(service, "service"),
            _tags(tags),
            notes[: MAX_FIELD * 16] or None,
        )
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(ADD_HOST, *row_values)
        assert row is not None
        return host_entry(row)

    async def tag(self, host: str, add: Sequence[str], remove: Sequence[str]) -> list[HostEntry]:
        _name(host, "host_name")
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(TAG_HOST, host, _tags(add, "add"), _tags(remove, "remove"))
        if not rows:
            raise NotFound(f"no host {host!r} in the home network (agentmesh network)")
        return [host_entry(row) for row in rows]

    async def remove(self, host: str, service: str = "") -> int:
        _name(host, "host_name")
        async with self._pool.acquire() as conn:
            status = await conn.execute(REMOVE_HOST, host, service or None)
        removed = int(status.rsplit(" ", 1)[-1])
        if not removed:
            what = f"{host!r} with service {service!r}" if service else repr(host)
            raise NotFound(f"no host {what} in the home network")
        return removed
