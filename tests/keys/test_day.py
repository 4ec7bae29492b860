"""PostgreSQL computes the quota day as Python does, whatever the session's time zone."""

from __future__ import annotations

import asyncpg
import pytest

from agentmesh.keys.day import PACIFIC_TODAY_SQL, quota_day


@pytest.mark.parametrize("zone", ["UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago"])
async def test_the_sql_quota_day_is_the_pacific_date(database_uri: str, zone: str) -> None:
    conn = await asyncpg.connect(database_uri, server_settings={"TimeZone": zone})
    try:
        row = await conn.fetchrow(f"SELECT now() AS now, {PACIFIC_TODAY_SQL} AS day")
    finally:
        await conn.close()
    assert row is not None
    assert row["day"] == quota_day(row["now"])
