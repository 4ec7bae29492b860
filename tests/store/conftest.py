"""Fixtures for the task store's tests: a store on a fresh migrated database of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from agentmesh.db.connect import create_pool
from agentmesh.scheduler.store import TaskStore

DEFAULT_MAX_ATTEMPTS = 3


@pytest.fixture
async def pool(database_uri: str) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(database_uri, min_size=1, max_size=4)
    try:
        yield created
    finally:
        await created.close()


@pytest.fixture
def store(pool: asyncpg.Pool) -> TaskStore:
    return TaskStore(pool, default_max_attempts=DEFAULT_MAX_ATTEMPTS)
