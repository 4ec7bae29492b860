"""What a PostgreSQL server did in the background while a phase ran, from its own log.

Autovacuum and checkpoints share the cores (and the WAL) with what a benchmark measures.
PostgreSQL 16 logs each checkpoint's start and end, and each autovacuum or autoanalyze of a
table once `log_autovacuum_min_duration` is 0 (`log_every_autovacuum`), in every database,
system catalogs included: on a new cluster, autovacuum goes through `template1`'s and
`postgres`'s catalogs in its first minutes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg

LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) \S+ \[\d+\] \w+:  (.*)$")
AUTOVACUUM = re.compile(r'^automatic (?:aggressive )?(vacuum|analyze) of table "([^"]+)"')
ELAPSED = re.compile(r"elapsed: ([\d.]+) s")
CHECKPOINT = re.compile(r"^checkpoint (starting|complete)")


@dataclass
class Work:
    """A checkpoint, or autovacuum's vacuum or analyze of one table."""

    what: str  # "checkpoint", "vacuum DATABASE.SCHEMA.TABLE" or "analyze ..."
    began: datetime
    ended: datetime | None  # None: under way when the log was read

    def overlaps(self, since: datetime, until: datetime) -> bool:
        return self.began <= until and (self.ended is None or self.ended >= since)


async def log_every_autovacuum(conn: asyncpg.Connection) -> None:
    """Have the server log every autovacuum and autoanalyze (by default, those over 10
    minutes only)."""
    await conn.execute("ALTER SYSTEM SET log_autovacuum_min_duration = 0")
    await conn.execute("SELECT pg_reload_conf()")


def read(log: Path, zone: str) -> list[Work]:
    """The background work the log records, its times in the server's `log_timezone`."""
    works: list[Work] = []
    checkpoint: Work | None = None
    vacuum: Work | None = None  # logged when done: its start comes from its elapsed time
    for line in log.read_text(errors="replace").splitlines():
        match = LINE.match(line)
        if match is None:
            elapsed = ELAPSED.search(line) if vacuum is not None else None
            if vacuum is not None and elapsed is not None:
                vacuum.began = vacuum.began - timedelta(seconds=float(elapsed[1]))
                vacuum = None
            continue
        vacuum = None
        at = datetime.fromisoformat(match[1]).replace(tzinfo=ZoneInfo(zone))
        if found := AUTOVACUUM.match(match[2]):
            vacuum = Work(f"{found[1]} {found[2]}", at, at)
            works.append(vacuum)
        elif found := CHECKPOINT.match(match[2]):
            if found[1] == "starting":
                checkpoint = Work("checkpoint", at, None)
                works.append(checkpoint)
            elif checkpoint is not None:
                checkpoint.ended = at
                checkpoint = None
    return works


async def under_way(conn: asyncpg.Connection, now: datetime) -> list[Work]:
    """The vacuums under way `now`, in any database (the log has them once done), named as
    the log names them where they are in this database."""
    rows = await conn.fetch(
        "SELECT p.datname || '.' || coalesce(n.nspname || '.' || c.relname, p.relid::text)"
        " FROM pg_stat_progress_vacuum p"
        " LEFT JOIN pg_class c ON c.oid = p.relid AND p.datname = current_database()"
        " LEFT JOIN pg_namespace n ON n.oid = c.relnamespace"
    )
    return [Work(f"vacuum {row[0]}", now, None) for row in rows]


def merge(logged: list[Work], vacuuming: list[Work]) -> list[Work]:
    """The logged work and the vacuums under way: a vacuum under way at a phase's end may be
    done, and logged, by the time the log is read, and counts once (in this database: the
    others' tables are known by number only while they are vacuumed)."""
    done = {work.what for work in logged}
    return logged + [work for work in vacuuming if work.what not in done]


def describe(works: list[Work], own_database: str, since: datetime) -> str:
    """The work in a few words, each with how long it took: this database's tables by
    name, the other databases' work (their system catalogs, in a new cluster's first
    minutes) summed."""
    if not works:
        return "nothing"
    own = f" {own_database}."
    parts = []
    others: list[Work] = []
    for work in works:
        if work.what == "checkpoint":
            parts.append(f"a checkpoint (begun {(work.began - since).total_seconds():+.0f} s)")
        elif own in work.what:
            name = work.what.replace(own, " ").replace(" public.", " ")
            parts.append(f"{name} ({_took(work)})")
        else:
            others.append(work)
    if others:
        seconds = sum((w.ended - w.began).total_seconds() for w in others if w.ended)
        under_way = " and more under way" if any(w.ended is None for w in others) else ""
        parts.append(
            f"{len(others)} vacuums or analyzes in other databases ({seconds:.1f} s{under_way})"
        )
    return ", ".join(parts)


def _took(work: Work) -> str:
    if work.ended is None:
        return "under way"
    return f"{(work.ended - work.began).total_seconds():.1f} s"
