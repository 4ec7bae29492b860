"""The key pool: API keys in `api_keys`, loaded from GEMINI_API_KEY_FILE, picked by priority.

The key file is the seed's `api_keys.env`: dotenv lines `NAME=key`, the name becoming the
key's label (`api_keys.name`); a line that is a bare key is named by its fingerprint.
Only a key's name or fingerprint (a short hash) is ever shown or logged, never the key.
This first version picks the highest-priority enabled key that is not cooling down after a
429; the token-forecasting pool extends `pick_key` and `cool_down`.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from dotenv.parser import parse_stream

from agentmesh.config import ConfigError
from agentmesh.db.connect import Connection

log = logging.getLogger(__name__)

# A key whose value changed is a new key: it is not cooling down.
UPSERT_FILE_KEY = """
INSERT INTO api_keys (name, key_value, fingerprint, source)
VALUES ($1, $2, $3, $4)
ON CONFLICT (name) DO UPDATE SET
    key_value = EXCLUDED.key_value,
    fingerprint = EXCLUDED.fingerprint,
    source = EXCLUDED.source,
    enabled = true,
    cooldown_until = CASE WHEN api_keys.key_value = EXCLUDED.key_value
                          THEN api_keys.cooldown_until END
"""
PICK_KEY = """
SELECT id, key_value, fingerprint FROM api_keys
WHERE enabled AND provider = 'gemini'
  AND (cooldown_until IS NULL OR cooldown_until <= now())
  AND (assigned_user IS NULL OR assigned_user = $1)
ORDER BY (assigned_user IS NOT NULL) DESC, priority DESC, last_used_at NULLS FIRST, id
LIMIT 1
"""
MARK_USED = "UPDATE api_keys SET last_used_at = now() WHERE id = $1"
COOL_DOWN = """
UPDATE api_keys SET cooldown_until = greatest(coalesce(cooldown_until, now()),
                                              now() + make_interval(secs => $2))
WHERE id = $1
"""
DISABLE = "UPDATE api_keys SET enabled = false WHERE id = $1"
# Why PICK_KEY found nothing for a user: what exists, what is enabled, when one cools down.
KEY_SHORTAGE = """
SELECT count(*) AS total, count(*) FILTER (WHERE enabled) AS enabled,
       min(cooldown_until) FILTER (WHERE enabled AND cooldown_until > now()) AS next_ready
FROM api_keys
WHERE provider = 'gemini' AND (assigned_user IS NULL OR assigned_user = $1)
"""
# The keys PICK_KEY could hand out now (to someone), with the end of their last cooldown:
# when this set gains a member (a new key, or one back from a cooldown), tasks that waited
# for a key may go.
USABLE_KEYS = """
SELECT id, cooldown_until FROM api_keys
WHERE enabled AND provider = 'gemini' AND (cooldown_until IS NULL OR cooldown_until <= now())
"""
NO_KEY = "no API key available"


class KeyFileError(ConfigError):
    """GEMINI_API_KEY_FILE cannot be used; the message never contains a key."""


@dataclass(frozen=True)
class ApiKey:
    id: int
    fingerprint: str
    value: str = field(repr=False)


def fingerprint(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class FileKey:
    """One key of the key file and its label."""

    name: str
    value: str = field(repr=False)


@dataclass(frozen=True)
class KeyFile:
    path: Path
    keys: tuple[FileKey, ...]

    @property
    def source(self) -> str:
        """What `api_keys.source` says of these keys."""
        return f"file:{self.path}"


def read_key_file(path: Path) -> KeyFile:
    """Read GEMINI_API_KEY_FILE: `NAME=key` lines (comments, `export` and quotes as
    python-dotenv reads them) or bare keys. Errors name the line, never its text."""
    path = path.absolute()
    where = f"GEMINI_API_KEY_FILE {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyFileError(f"{where}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise KeyFileError(f"{where}: cannot read: not UTF-8 text") from None
    keys: list[FileKey] = []
    lines_of: dict[str, int] = {}
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line
        if binding.error:
            raise KeyFileError(f"{where}: line {line}: neither NAME=key nor a bare key")
        if binding.key is None:
            continue  # a blank line or a comment
        if binding.value is None:  # a bare key; its text must not reach a message
            value, name, shown = binding.key, f"file-{fingerprint(binding.key)}", "the key"
        else:
            value, name, shown = binding.value, binding.key, binding.key
        if not value:
            raise KeyFileError(f"{where}: line {line}: {shown} has no key after '='")
        if any(c.isspace() for c in value):
            raise KeyFileError(f"{where}: line {line}: {shown} contains whitespace")
        if name in lines_of:
            raise KeyFileError(f"{where}: line {line}: {shown} is already on line {lines_of[name]}")
        lines_of[name] = line
        keys.append(FileKey(name, value))
    return KeyFile(path, tuple(keys))


async def load_key_file(pool: asyncpg.Pool, key_file: KeyFile) -> int:
    """Upsert the file's keys into `api_keys` by name; return how many."""
    async with pool.acquire() as conn:
        await conn.executemany(
            UPSERT_FILE_KEY,
            [(k.name, k.value, fingerprint(k.value), key_file.source) for k in key_file.keys],
        )
    log.info("loaded %d API key(s) from %s", len(key_file.keys), key_file.path)
    return len(key_file.keys)


async def pick_key(conn: Connection, user: str) -> ApiKey | None:
    row = await conn.fetchrow(PICK_KEY, user)
    if row is None:
        return None
    await conn.execute(MARK_USED, row["id"])
    return ApiKey(id=row["id"], fingerprint=row["fingerprint"], value=row["key_value"])


async def cool_down(conn: Connection, key_id: int, seconds: float) -> None:
    await conn.execute(COOL_DOWN, key_id, float(seconds))


async def disable(conn: Connection, key_id: int) -> None:
    await conn.execute(DISABLE, key_id)


async def key_shortage(conn: Connection, user: str) -> str:
    """Why no key can be picked for the user now, in words (a task's waiting reason)."""
    row = await conn.fetchrow(KEY_SHORTAGE, user)
    assert row is not None  # an aggregate always returns a row
    whose = f" for user {user}" if user else ""
    if not row["total"]:
        return f"{NO_KEY}: none in api_keys{whose} (add one to GEMINI_API_KEY_FILE)"
    if not row["enabled"]:
        return f"{NO_KEY}: the {row['total']} key(s){whose} were refused by the API (disabled)"
    until = row["next_ready"]
    when = f" until {until:%Y-%m-%d %H:%M:%S %Z}" if until is not None else ""
    return f"{NO_KEY}: the {row['enabled']} key(s){whose} are cooling down after 429s{when}"


async def usable_keys(conn: Connection) -> frozenset[tuple[object, ...]]:
    """The usable keys as (id, end of last cooldown): comparable from one look to the next."""
    return frozenset((row["id"], row["cooldown_until"]) for row in await conn.fetch(USABLE_KEYS))
