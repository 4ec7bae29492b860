"""GEMINI_API_KEY_FILE into `api_keys`: sealed secrets, upserted by name, one row a secret;
and the plaintext an older version stored is sealed when the scheduler starts."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from agentmesh.keys.pool import fingerprint, load_key_file, read_key_file
from agentmesh.keys.vault import Vault
from tests.scheduler.conftest import Mesh

FIRST = "AIzaSy-file-first-5d0c7a11"
SECOND = "AIzaSy-file-second-e42b9930"
NEW_FIRST = "AIzaSy-file-first-renewed-77aa"


@pytest.fixture
async def pool(database_uri: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(database_uri, min_size=1, max_size=2) as running:
        yield running


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    return Vault.open(None, tmp_path / "data")


async def load(pool: asyncpg.Pool, vault: Vault, path: Path, text: str) -> int:
    path.write_text(text)
    return await load_key_file(pool, read_key_file(path), vault)


async def stored(pool: asyncpg.Pool, vault: Vault) -> dict[str, tuple[str, str, bool]]:
    """name -> (secret, source, enabled), the secrets opened by the vault."""
    rows = await pool.fetch("SELECT name, key_value, source, enabled FROM api_keys")
    return {
        row["name"]: (vault.open_secret(row["key_value"]), row["source"], row["enabled"])
        for row in rows
    }


async def test_file_keys_are_sealed_and_upserted_by_name(
    pool: asyncpg.Pool, vault: Vault, tmp_path: Path
) -> None:
    path = tmp_path / "api_keys.env"
    assert await load(pool, vault, path, f"FIRST={FIRST}\nSECOND={SECOND}\n") == 2
    await pool.execute("UPDATE api_keys SET priority = 7, enabled = false WHERE name = 'SECOND'")

    assert await load(pool, vault, path, f"FIRST={FIRST}\nSECOND={SECOND}\n") == 2

    source = f"file:{path}"
    assert await stored(pool, vault) == {
        "FIRST": (FIRST, source, True),
        # The same key again keeps what was set on it since (disabled, say).
        "SECOND": (SECOND, source, False),
    }
    values = [row["key_value"] for row in await pool.fetch("SELECT key_value FROM api_keys")]
    assert all(value.startswith("fernet:") for value in values)
    assert await pool.fetchval("SELECT priority FROM api_keys WHERE name = 'SECOND'") == 7


async def test_a_changed_secret_is_a_new_key_without_cooldowns(
    pool: asyncpg.Pool, vault: Vault, tmp_path: Path
) -> None:
    path = tmp_path / "api_keys.env"
    await load(pool, vault, path, f"FIRST={FIRST}\n")
    key_id = await pool.fetchval("SELECT id FROM api_keys")
    await pool.execute(
        "UPDATE api_keys SET enabled = false, disabled_reason = 'refused' WHERE id = $1", key_id
    )
    await pool.execute(
        "INSERT INTO api_key_models (key_id, model, cooling_until) VALUES"
        " ($1, 'gemini-2.5-flash', now() + interval '1 hour')",
        key_id,
    )

    await load(pool, vault, path, f"FIRST={NEW_FIRST}\n")

    row = await pool.fetchrow("SELECT * FROM api_keys WHERE id = $1", key_id)
    assert row is not None
    assert row["fingerprint"] == fingerprint(NEW_FIRST)
    assert vault.open_secret(row["key_value"]) == NEW_FIRST
    assert (row["enabled"], row["disabled_reason"]) == (True, None)
    assert await pool.fetch("SELECT * FROM api_key_models") == []


async def test_a_secret_stored_under_another_name_is_skipped_naming_both(
    pool: asyncpg.Pool, vault: Vault, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "api_keys.env"
    await load(pool, vault, path, f"FIRST={FIRST}\n")

    assert await load(pool, vault, path, f"FIRST={FIRST}\nCOPY={FIRST}\nSECOND={SECOND}\n") == 2

    assert set(await stored(pool, vault)) == {"FIRST", "SECOND"}
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage() == (
        f"API key COPY of file:{path} skipped: its secret is stored already as FIRST"
    )
    assert FIRST not in caplog.text


async def test_a_key_a_node_holds_becomes_central_when_the_file_has_it(
    pool: asyncpg.Pool, vault: Vault, tmp_path: Path
) -> None:
    await pool.execute(
        "INSERT INTO api_keys (name, fingerprint, source, node_id)"
        " VALUES ('desk/K', $1, 'node:desk', 'desk-1')",
        fingerprint(FIRST),
    )
    path = tmp_path / "api_keys.env"

    await load(pool, vault, path, f"FIRST={FIRST}\n")

    row = await pool.fetchrow("SELECT * FROM api_keys")
    assert row is not None
    assert (row["name"], row["source"], row["node_id"]) == ("FIRST", f"file:{path}", None)
    assert vault.open_secret(row["key_value"]) == FIRST


async def test_the_scheduler_seals_plaintext_keys_and_loads_its_file_sealed(
    mesh: Mesh, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(mesh.database_uri)
    try:
        await conn.execute(
            "INSERT INTO api_keys (name, key_value, fingerprint, source)"
            " VALUES ('OLD', $1, $2, 'manual')",
            SECOND,
            fingerprint(SECOND),
        )
        path = tmp_path / "api_keys.env"
        path.write_text(f"FIRST={FIRST}\n")
        mesh.configure(GEMINI_API_KEY_FILE=str(path))
        await mesh.start_scheduler()
        rows = await conn.fetch("SELECT name, key_value FROM api_keys ORDER BY name")
    finally:
        await conn.close()

    data_dir = mesh.settings.env.AGENTMESH_DATA_DIR
    assert data_dir is not None
    vault = Vault.open(None, data_dir)
    assert [row["name"] for row in rows] == ["FIRST", "OLD"]
    assert all(row["key_value"].startswith("fernet:") for row in rows)
    assert [vault.open_secret(row["key_value"]) for row in rows] == [FIRST, SECOND]
