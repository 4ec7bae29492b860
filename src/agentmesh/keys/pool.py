"""Key files: GEMINI_API_KEY_FILE read, and loaded into `api_keys` (picking: `quota`).

The key file is the seed's `api_keys.env`: dotenv lines `NAME=key`, the name becoming the
key's label (`api_keys.name`); a line that is a bare key is named by its fingerprint.
Secrets are stored sealed by the vault (`fernet:...`); only a key's name or fingerprint (a
short hash) is ever shown or logged, never the key. A key is its fingerprint: the same
secret is never stored twice, and a name whose secret changed is a new key.
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
from agentmesh.keys.vault import Vault

log = logging.getLogger(__name__)

# The rows a file line may be: the key of that name, the key of that secret (one, both or
# neither; locked while the line is loaded).
SELECT_FILE_KEY = """
SELECT id, name, fingerprint, coalesce(source, '') AS source FROM api_keys
WHERE name = $1 OR fingerprint = $2
FOR UPDATE
"""
INSERT_FILE_KEY = """
INSERT INTO api_keys (name, key_value, fingerprint, source) VALUES ($1, $2, $3, $4)
"""
# The same key, from the file now (resealed: the vault's key may have changed since).
RESEAL_FILE_KEY = """
UPDATE api_keys SET name = $2, key_value = $3, source = $4, node_id = NULL WHERE id = $1
"""
# A name whose secret changed: a new key, enabled, with no cooldowns (the usage of the day
# stays: running tasks' reservations are counted in it).
REPLACE_FILE_KEY = """
UPDATE api_keys SET key_value = $2, fingerprint = $3, source = $4, node_id = NULL,
                    enabled = true, disabled_reason = NULL
WHERE id = $1
"""
CLEAR_COOLDOWNS = "DELETE FROM api_key_models WHERE key_id = $1"


class KeyFileError(ConfigError):
    """GEMINI_API_KEY_FILE cannot be used; the message never contains a key."""


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


async def load_key_file(pool: asyncpg.Pool, key_file: KeyFile, vault: Vault) -> int:
    """Upsert the file's keys into `api_keys` by name, their secrets sealed; return how many
    were loaded. A line whose secret is stored under another name is skipped (one secret,
    one quota), with a warning naming both labels; a key a node holds becomes central."""
    loaded = 0
    async with pool.acquire() as conn, conn.transaction():
        for key in key_file.keys:
            if await _load_file_key(conn, key, key_file.source, vault):
                loaded += 1
    log.info("loaded %d API key(s) from %s", loaded, key_file.path)
    return loaded


async def _load_file_key(conn: Connection, key: FileKey, source: str, vault: Vault) -> bool:
    key_fingerprint = fingerprint(key.value)
    rows = await conn.fetch(SELECT_FILE_KEY, key.name, key_fingerprint)
    by_name = next((row for row in rows if row["name"] == key.name), None)
    by_secret = next((row for row in rows if row["fingerprint"] == key_fingerprint), None)
    # The secret is another key's: skipped, unless it is a node's key and the name is free
    # (the node's key then becomes central, under the file's name).
    if (
        by_secret is not None
        and by_secret["name"] != key.name
        and (by_name is not None or not by_secret["source"].startswith("node:"))
    ):
        log.warning(
            "API key %s of %s skipped: its secret is stored already as %s",
            key.name,
            source,
            by_secret["name"],
            extra={"key": key_fingerprint},
        )
        return False
    sealed = vault.seal(key.value)
    if by_secret is not None:
        await conn.execute(RESEAL_FILE_KEY, by_secret["id"], key.name, sealed, source)
    elif by_name is not None:
        await conn.execute(REPLACE_FILE_KEY, by_name["id"], sealed, key_fingerprint, source)
        await conn.execute(CLEAR_COOLDOWNS, by_name["id"])
        log.info(
            "API key %s has a new secret",
            key.name,
            extra={"key": key_fingerprint, "was": by_name["fingerprint"]},
        )
    else:
        await conn.execute(INSERT_FILE_KEY, key.name, sealed, key_fingerprint, source)
    return True
