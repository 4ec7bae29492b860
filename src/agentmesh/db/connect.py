"""Where the database is, and connections to it."""

from __future__ import annotations

import contextlib
import errno
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from agentmesh.config import Settings
from agentmesh.db import embedded, json_codec

# A connection of its own or one borrowed from a pool: queries work the same on both.
Connection = asyncpg.Connection | PoolConnectionProxy


class DatabaseUnavailable(Exception):
    """The configured database cannot be reached; the message never contains a password."""


@dataclass(frozen=True)
class DatabaseTarget:
    dsn: str
    embedded: bool
    database: str

    @property
    def display(self) -> str:
        """The DSN with any password replaced by `***`."""
        return redact_dsn(self.dsn)


def redact_dsn(dsn: str) -> str:
    redacted = re.sub(r"(://[^:/@?]*):[^@/?]+@", r"\1:***@", dsn)
    return re.sub(r"(?i)(password=)[^&\s]+", r"\1***", redacted)


def data_dir(settings: Settings) -> Path:
    return settings.env.AGENTMESH_DATA_DIR or embedded.default_data_dir()


async def resolve_database(settings: Settings) -> DatabaseTarget:
    """The configured server, or the embedded one (started, with its database created)."""
    dsn = settings.database_dsn()
    if dsn is not None:
        return DatabaseTarget(dsn=dsn, embedded=False, database=settings.env.POSTGRES_DB)
    server_uri = embedded.start(data_dir(settings))
    database = settings.env.POSTGRES_DB
    await ensure_database(server_uri, database)
    return DatabaseTarget(
        dsn=embedded.uri_for(server_uri, database), embedded=True, database=database
    )


async def ensure_database(server_uri: str, database: str) -> None:
    """Create `database` on the server if it does not exist (tolerates a concurrent create)."""
    conn = await connect(server_uri)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            # Another process may create it first: that is as good.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                await conn.execute(f"CREATE DATABASE {quote_ident(database)}")
    finally:
        await conn.close()


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# The seed's TIMESTAMP columns (without time zone) hold UTC: every session of ours says so,
# so that their `now()` defaults and comparisons with `now()` agree on every machine.
SERVER_SETTINGS = {"timezone": "UTC"}
# The scheduler's sessions plan each statement once: PostgreSQL's default keeps planning
# afresh the statements that take arrays (the dispatch round's claim and start, the group
# commits), each time longer than it runs them. Its statements are written for plans made
# without their arguments' values (no `$1 IS NULL OR ...` filters on the large tables).
# A plan made once is made on the tables as they are then, and kept until their statistics
# change (autovacuum's next ANALYZE, a minute or more later): made on a new database's
# nearly empty tables, where reading a table whole is the cheapest way through it, it went on
# doing so as they grew (a claim of 20 tasks read 62,000 rows beside 1,000 waiting). Every
# statement of the scheduler reaches its rows through an index, so its sessions never plan a
# sequential scan where an index serves; and its tables' pages are in memory, where reading
# one out of order costs about what reading the next does (PostgreSQL's default of 4 is for
# spinning disks: with it, a statement on 20 queue rows scanned 3,000 rather than look them
# up). Nor do they compile statements (JIT): PostgreSQL compiles any statement estimated
# above `jit_above_cost`, and with sequential scans priced so, every read of a small table
# without an index for it was (a node's keys at its registration, the knowledge a task's
# context searches), afresh at each run: about 60 to 160 ms of the server's CPU for a
# statement of a millisecond or less. Debian's, Ubuntu's and the PostgreSQL project's
# packages come with JIT available and on.
GENERIC_PLANS = {
    "plan_cache_mode": "force_generic_plan",
    "random_page_cost": "1.1",
    "enable_seqscan": "off",
    "jit": "off",
}


async def connect(dsn: str, *, connect_timeout: float = 10.0) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn, timeout=connect_timeout, server_settings=SERVER_SETTINGS)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise _unavailable(dsn, exc, connect_timeout) from None


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSON columns come and go as Python values.
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json_codec.dumps, decoder=json_codec.loads, schema="pg_catalog"
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset round trip on release: pooled connections keep no session state
    (no LISTEN, no advisory locks, no SET); those live on dedicated connections."""


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, settings: Mapping[str, str] | None = None
) -> asyncpg.Pool:
    """A pool whose connections decode JSON (with these session `settings` besides ours);
    reconnects itself after a server restart."""
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            reset=_keep_session,
            server_settings={**SERVER_SETTINGS, **(settings or {})},
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise _unavailable(dsn, exc, 60.0) from None  # asyncpg's own connect timeout
    assert pool is not None
    return pool


def describe_server(dsn: str) -> str:
    """Where a DSN points, for messages: `HOST:PORT, database NAME` (never the password)."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "localhost"])[0]
    try:
        port = str(parts.port or 5432)
    except ValueError:  # not a number: asyncpg refuses it on its own terms
        port = parts.netloc.rpartition(":")[2]
    port = query.get("port", [port])[0]
    database = query.get("dbname", [unquote(parts.path.lstrip("/"))])[0]
    if host.startswith("/"):
        where = f"{host}/.s.PGSQL.{port} (Unix socket)"
    else:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"{where}, database {database or '(default)'}"


def _unavailable(dsn: str, exc: BaseException, timeout: float) -> DatabaseUnavailable:
    """One line: where the server was expected and why it did not answer."""
    if _refused(exc):
        reason = "connection refused (is the server running and listening there?)"
    elif isinstance(exc, socket.gaierror):
        reason = "unknown host"
    elif isinstance(exc, TimeoutError):
        reason = f"no answer within {timeout:g}s"
    else:
        reason = _safe_reason(exc, dsn)
    return DatabaseUnavailable(f"cannot connect to PostgreSQL at {describe_server(dsn)}: {reason}")


def _refused(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionRefusedError):
        return True
    # asyncio tried several addresses (`localhost` is ::1 and 127.0.0.1) and lists each error.
    codes = re.findall(r"\[Errno (-?\d+)\]", str(exc))
    return (
        isinstance(exc, OSError)
        and str(exc).startswith("Multiple exceptions:")
        and bool(codes)
        and all(int(code) == errno.ECONNREFUSED for code in codes)
    )


def _safe_reason(exc: BaseException, dsn: str) -> str:
    text = (str(exc) or exc.__class__.__name__).replace(dsn, redact_dsn(dsn))
    password = unquote(urlsplit(dsn).password or "")
    if password:
        text = text.replace(password, "***")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return redact_dsn(lines[0] if lines else exc.__class__.__name__)
