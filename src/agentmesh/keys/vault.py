"""Secrets at rest: API keys are stored Fernet-encrypted in `api_keys.key_value`.

The encryption key is `AGENTMESH_SECRET_KEY` (a Fernet key: 32 url-safe base64 bytes), or
else one generated once into the data directory (`secret.key`, mode 0600). A stored secret
reads `fernet:<token>`; a value without that prefix is a plaintext left by an older version,
which `seal_plaintext_keys` encrypts when the scheduler starts.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from pathlib import Path

import asyncpg
from cryptography.fernet import Fernet, InvalidToken

from agentmesh.config import ConfigError

log = logging.getLogger(__name__)

PREFIX = "fernet:"
KEY_FILE_NAME = "secret.key"


class VaultError(ConfigError):
    """A secret cannot be encrypted or decrypted; the message never holds a secret."""


class Vault:
    def __init__(self, key: bytes) -> None:
        self._key = key
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            raise VaultError(
                "AGENTMESH_SECRET_KEY is not a Fernet key (32 url-safe base64-encoded bytes;"
                " make one with `python -c 'from cryptography.fernet import Fernet;"
                " print(Fernet.generate_key().decode())'`)"
            ) from None

    @classmethod
    def open(cls, secret_key: str | None, data_dir: Path) -> Vault:
        """The vault of `secret_key`, or of the data directory's key file (made once)."""
        if secret_key:
            return cls(secret_key.encode())
        return cls(_key_file(data_dir / KEY_FILE_NAME))

    def seal(self, plaintext: str) -> str:
        return PREFIX + self._fernet.encrypt(plaintext.encode()).decode()

    def derive_secret(self, purpose: str) -> str:
        """A secret for `purpose`, the same on every replica that shares this vault's key
        (HMAC-SHA256 of it), and nothing anyone without the key can compute."""
        digest = hmac.new(self._key, b"agentmesh\0" + purpose.encode(), hashlib.sha256)
        return digest.hexdigest()

    def open_secret(self, stored: str) -> str:
        if not is_sealed(stored):
            return stored  # an older version's plaintext, until seal_plaintext_keys runs
        try:
            return self._fernet.decrypt(stored[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise VaultError(
                "an API key cannot be decrypted: it was sealed with another secret key"
                " (AGENTMESH_SECRET_KEY or the data directory's secret.key changed)"
            ) from None


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)


def _key_file(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    try:
        # O_EXCL: of two processes starting at once, one writes and the other reads.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as file:
        file.write(key + b"\n")
    log.info("generated the key that encrypts API keys at rest: %s", path)
    return key


async def seal_plaintext_keys(pool: asyncpg.Pool, vault: Vault) -> int:
    """Encrypt every key an older version stored in plaintext; return how many."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT id, key_value FROM api_keys"
            " WHERE key_value IS NOT NULL AND key_value NOT LIKE 'fernet:%' FOR UPDATE"
        )
        await conn.executemany(
            "UPDATE api_keys SET key_value = $2 WHERE id = $1",
            [(row["id"], vault.seal(row["key_value"])) for row in rows],
        )
    if rows:
        log.info("encrypted %d API key(s) stored in plaintext", len(rows))
    return len(rows)
