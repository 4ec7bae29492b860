"""A database that is briefly gone (a restart, a failover): which errors say so, and how
an operation waits it out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

log = logging.getLogger(__name__)

# Errors that mean the database is briefly unreachable: wait and try again.
DATABASE_ERRORS = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    # A pooled connection that died with the server ("cannot switch to state ...").
    asyncpg.InternalClientError,
    TimeoutError,
    # Rolled back by the server; the transaction can simply run again.
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)

T = TypeVar("T")


async def with_retry(operation: Callable[[], Awaitable[T]]) -> T:
    """Run a database operation, waiting out a database restart (a few minutes at most)."""
    delay = 0.1
    for _ in range(600):
        try:
            return await operation()
        except DATABASE_ERRORS as exc:
            log.warning("database unavailable, retrying in %.1fs: %s", delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    return await operation()
