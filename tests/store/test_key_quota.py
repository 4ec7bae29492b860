"""The key pool's quotas against PostgreSQL: which key a task gets, and never one request
more than a key allows, whoever asks at the same time."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import textwrap
from datetime import timedelta

import asyncpg
import pytest

from agentmesh.keys import quota
from agentmesh.keys.quota import Limits
from agentmesh.scheduler.store import TaskStore
from agentmesh.tasks.model import TaskKind, TaskSpec

MODEL = "gemini-2.5-flash"
NO_LIMITS = Limits(0, 0, 0)


async def add_key(
    pool: asyncpg.Pool,
    name: str,
    *,
    priority: int = 0,
    user: str | None = None,
    rotating: bool = True,
    node_id: str | None = None,
    rpm: int | None = None,
    rpd: int | None = None,
    tpd: int | None = None,
) -> int:
    return int(
        await pool.fetchval(
            "INSERT INTO api_keys (name, key_value, fingerprint, priority, assigned_user,"
            " rotating, node_id, requests_per_minute, requests_per_day, tokens_per_day)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            name,
            None if node_id else f"fernet:sealed-{name}",
            f"sha256:{name}",
            priority,
            user,
            rotating,
            node_id,
            rpm,
            rpd,
            tpd,
        )
    )


async def new_tasks(store: TaskStore, n: int, user: str = "alice") -> list[str]:
    spec = TaskSpec(kind=TaskKind.GEMINI, prompt="hi", user=user)
    return [await store.submit(spec) for _ in range(n)]


async def reserve(
    pool: asyncpg.Pool,
    task_id: str,
    *,
    user: str = "alice",
    nodes: tuple[str, ...] = (),
    requests: int = 1,
    tokens: int = 100,
    limits: Limits = NO_LIMITS,
) -> quota.KeyChoice | None:
    async with pool.acquire() as conn:
        await quota.ensure_rows(conn, MODEL)
        return await quota.reserve(
            conn,
            task_id=task_id,
            user=user,
            nodes=list(nodes),
            model=MODEL,
            requests=requests,
            tokens=tokens,
            budget=0,
            limits=limits,
        )


async def usage(pool: asyncpg.Pool, key_id: int) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT requests, tokens, reserved_requests, reserved_tokens FROM api_key_usage"
        " WHERE key_id = $1 AND model = $2",
        key_id,
        MODEL,
    )
    assert row is not None
    return row


async def test_the_highest_priority_key_goes_first_and_the_users_own_before_it(
    pool: asyncpg.Pool, store: TaskStore
) -> None:
    await add_key(pool, "low", priority=1)
    await add_key(pool, "high", priority=5)
    await add_key(pool, "bobs", priority=0, user="bob")
    alice, bob = (await new_tasks(store, 1, "alice"))[0], (await new_tasks(store, 1, "bob"))[0]
    picked_for_alice = await reserve(pool, alice, user="alice")
    picked_for_bob = await reserve(pool, bob, user="bob")
    assert picked_for_alice is not None
    assert picked_for_alice.label == "high"
    assert picked_for_bob is not None
    assert picked_for_bob.label == "bobs"


async def test_rotating_keys_take_turns_and_a_non_rotating_key_is_used_until_it_runs_out(
    pool: asyncpg.Pool, store: TaskStore
) -> None:
    await add_key(pool, "r1")
    await add_key(pool, "r2")
    tasks = await new_tasks(store, 4)
    labels = [(await reserve(pool, t)).label for t in tasks]  # type: ignore[union-attr]
    assert labels == ["r1", "r2", "r1", "r2"]

    await add_key(pool, "sticky", rotating=False, rpd=2)
    tasks = await new_tasks(store, 3)
    labels = [(await reserve(pool, t)).label for t in tasks]  # type: ignore[union-attr]
    assert labels[:2] == ["sticky", "sticky"]
    assert labels[2] != "sticky"  # its 2 requests a day are held


async def test_a_reservation_holds_the_forecast_against_the_daily_quotas(
    pool: asyncpg.Pool, store: TaskStore
) -> None:
    key = await add_key(pool, "k", rpd=5, tpd=1000)
    first, second, third = await new_tasks(store, 3)
    assert await reserve(pool, first, requests=2, tokens=600) is not None
    assert await reserve(pool, second, requests=2, tokens=600) is None  # tokens: 1200 > 1000
    assert await reserve(pool, third, requests=4, tokens=100) is None  # requests: 6 > 5
    assert await reserve(pool, third, requests=3, tokens=400) is not None
    row = await usage(pool, key)
    assert (row["reserved_requests"], row["reserved_tokens"]) == (5, 1000)

    async with pool.acquire() as conn:
        why = await quota.shortage(
            conn, user="alice", nodes=[], model=MODEL, requests=1, tokens=1, limits=NO_LIMITS
        )
    assert "daily quota" in why.reason
    assert MODEL in why.reason


async def test_requests_are_spaced_by_the_per_minute_limit(
    pool: asyncpg.Pool, store: TaskStore
) -> None:
    await add_key(pool, "k", rpm=60)  # one request every 1.03 s
    tasks = await new_tasks(store, 10)
    picked = [await reserve(pool, t) for t in tasks]
    slots = [p.slot for p in picked if p is not None]
    # Only the slots within the horizon are handed out now.
    assert 1 < len(slots) <= quota.HORIZON_SECONDS / quota.SPACING_FACTOR + 1
    gaps = [later - earlier for earlier, later in itertools.pairwise(slots)]
    assert all(gap >= timedelta(seconds=60 / 60) for gap in gaps)
    async with pool.acquire() as conn:
        why = await quota.shortage(
            conn, user="alice", nodes=[], model=MODEL, requests=1, tokens=1, limits=NO_LIMITS
        )
    assert "the key for gemini-2.5-flash" in why.reason
    assert "per-minute limit" in why.reason
    assert "next capacity in" in why.reason
    assert why.retry_at is not None


async def test_the_policys_limits_apply_unless_a_key_has_its_own(
    pool: asyncpg.Pool, store: TaskStore
) -> None:
    await add_key(pool, "policy")
    await add_key(pool, "own", rpd=3)
    tasks = await new_tasks(store, 5)
    limits = Limits(0, 1, 0)
    labels = [getattr(await reserve(pool, t, limits=limits), "label", None) for t in tasks]
    assert sorted(label for label in labels if label) == ["own", "own", "own", "policy"]


async def test_a_node_held_key_goes_only_to_its_node(pool: asyncpg.Pool, store: TaskStore) -> None:
    await add_key(pool, "on-b", priority=9, node_id="agent-b")
    await add_key(pool, "central", priority=1)
    first, second = await new_tasks(store, 2)
    on_a = await reserve(pool, first, nodes=("agent-a",))
    anywhere = await reserve(pool, second, nodes=("agent-a", "agent-b"))
    assert on_a is not None
    assert on_a.label == "central"
    assert anywhere is not None
    assert (anywhere.label, anywhere.node_id) == ("on-b", "agent-b")
    assert anywhere.sealed is None  # the scheduler never has a node's secret


async def test_a_cooling_or_disabled_key_is_skipped(pool: asyncpg.Pool, store: TaskStore) -> None:
    hot = await add_key(pool, "hot", priority=5)
    bad = await add_key(pool, "bad", priority=4)
    await add_key(pool, "spare")
    async with pool.acquire() as conn:
        await quota.cool(conn, hot, MODEL, 60, "429 per-minute quota")
        await quota.disable(conn, bad, "refused by the API: API_KEY_INVALID")
    picked = await reserve(pool, (await new_tasks(store, 1))[0])
    assert picked is not None
    assert picked.label == "spare"
    # Another model is not cooling.
    async with pool.acquire() as conn:
        await quota.ensure_rows(conn, "gemini-2.5-pro")
        other = await quota.reserve(
            conn,
            task_id=(await new_tasks(store, 1))[0],
            user="alice",
            nodes=[],
            model="gemini-2.5-pro",
            requests=1,
            tokens=1,
            budget=0,
            limits=NO_LIMITS,
        )
    assert other is not None
    assert other.label == "hot"


def test_a_daily_quota_cools_until_the_reset() -> None:
    assert quota.cooldown_seconds(26, "GenerateRequestsPerMinutePerProjectPerModel") == 26
    assert quota.cooldown_seconds(0, "") == 1.0
    daily = quota.cooldown_seconds(26, "GenerateRequestsPerDayPerProjectPerModel-FreeTier")
    assert daily >= 26
    assert daily <= 25 * 3600
    assert quota.cooldown_seconds(400, "") >= 400


async def test_leases_take_the_booked_slot_then_spend_exactly(
    pool: asyncpg.Pool, store: TaskStore
) -> None:
    own = await add_key(pool, "own", priority=5, rpm=600)
    other = await add_key(pool, "other", priority=1)
    (task,) = await new_tasks(store, 1)
    reserved = await reserve(pool, task, requests=3, tokens=900)
    assert reserved is not None
    assert reserved.key_id == own

    async def lease(exclude: tuple[str, ...] = ()) -> quota.KeyChoice | None:
        async with pool.acquire() as conn:
            return await quota.lease(
                conn,
                task_id=task,
                user="alice",
                agent_id="agent-a",
                model=MODEL,
                exclude=list(exclude),
                counted=True,
                longest_wait_seconds=60,
                limits=NO_LIMITS,
            )

    first = await lease()
    assert first is not None
    assert first.key_id == own
    assert first.slot == reserved.slot
    row = await usage(pool, own)
    assert (row["requests"], row["reserved_requests"]) == (1, 2)
    async with pool.acquire() as conn:
        spent = await quota.spend_tokens(conn, task_id=task, key_id=own, model=MODEL, tokens=500)
    assert spent == (500, 0)
    row = await usage(pool, own)
    assert (row["tokens"], row["reserved_tokens"]) == (500, 400)

    moved = await lease(exclude=("sha256:own",))  # "own" answered 429: the request moves
    assert moved is not None
    assert moved.key_id == other
    assert (await usage(pool, other))["requests"] == 1

    # The attempt ends: what the reservation still held goes back; what was spent stays.
    await pool.execute("UPDATE tasks SET state = 'working' WHERE id = $1", task)
    await pool.execute("UPDATE tasks SET state = 'completed' WHERE id = $1", task)
    row = await usage(pool, own)
    assert (row["requests"], row["tokens"], row["reserved_requests"], row["reserved_tokens"]) == (
        1,
        500,
        0,
        0,
    )
    async with pool.acquire() as conn:
        assert await quota.task_spent(conn, task) == (500, 2)


async def test_a_booked_slot_used_late_is_given_up_for_a_new_one(
    pool: asyncpg.Pool, store: TaskStore
) -> None:
    await add_key(pool, "k", rpm=60)
    (task,) = await new_tasks(store, 1)
    booked = await reserve(pool, task)
    assert booked is not None
    # The task's CLI asks 2 s late: sending now would come closer than 1 s to the
    # request booked after it.
    await pool.execute(
        "UPDATE key_reservations SET first_slot = now() - interval '2 s' WHERE task_id = $1",
        task,
    )
    async with pool.acquire() as conn:
        leased = await quota.lease(
            conn,
            task_id=task,
            user="alice",
            agent_id="agent-a",
            model=MODEL,
            exclude=[],
            counted=True,
            longest_wait_seconds=60,
            limits=NO_LIMITS,
        )
    assert leased is not None
    assert leased.slot >= booked.slot + timedelta(seconds=quota.SPACING_FACTOR)


async def test_a_late_booked_slot_still_goes_when_nothing_was_booked_after_it(
    pool: asyncpg.Pool, store: TaskStore
) -> None:
    await add_key(pool, "k", rpm=60)
    (task,) = await new_tasks(store, 1)
    assert await reserve(pool, task) is not None
    # Its CLI is 3 s late, and no other request was booked on the key since: it may go now,
    # and the key's next slot moves on from now.
    await pool.execute(
        "UPDATE key_reservations SET first_slot = first_slot - interval '3 s';"
        " UPDATE api_key_models SET next_request_at = next_request_at - interval '3 s'"
    )
    async with pool.acquire() as conn:
        leased = await quota.lease(
            conn,
            task_id=task,
            user="alice",
            agent_id="agent-a",
            model=MODEL,
            exclude=[],
            counted=True,
            longest_wait_seconds=60,
            limits=NO_LIMITS,
        )
        next_slot = await conn.fetchval("SELECT next_request_at - now() FROM api_key_models")
    assert leased is not None
    assert leased.wait < 0  # its slot, late: no waiting
    assert next_slot >= timedelta(seconds=quota.SPACING_FACTOR - 0.1)  # from the lease's now


RESERVER = textwrap.dedent(
    """
    import asyncio, sys
    import asyncpg
    from agentmesh.keys import quota
    from agentmesh.keys.quota import Limits

    async def main(uri, task_ids):
        pool = await asyncpg.create_pool(uri, min_size=8, max_size=8)
        async def one(task_id):
            for _ in range(50):
                try:
                    async with pool.acquire() as conn:
                        await quota.ensure_rows(conn, "gemini-2.5-flash")
                        got = await quota.reserve(conn, task_id=task_id, user="alice",
                            nodes=[], model="gemini-2.5-flash", requests=2, tokens=100,
                            budget=0, limits=Limits(0, 0, 0))
                        return got is not None
                except asyncpg.DeadlockDetectedError:
                    await asyncio.sleep(0.01)
            raise RuntimeError("deadlocked 50 times")
        results = await asyncio.gather(*(one(t) for t in task_ids))
        print(sum(results))
        await pool.close()

    asyncio.run(main(sys.argv[1], sys.argv[2].split(",")))
    """
)


async def test_two_processes_reserving_at_once_never_exceed_a_quota_together(
    pool: asyncpg.Pool, store: TaskStore, database_uri: str
) -> None:
    limits = {"a": (21, 1000), "b": (10, 450), "c": (7, 10_000)}  # requests, tokens a day
    keys = {name: await add_key(pool, name, rpd=r, tpd=t) for name, (r, t) in limits.items()}
    tasks = await new_tasks(store, 200)
    halves = [tasks[::2], tasks[1::2]]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            RESERVER,
            database_uri,
            ",".join(half),
            stdout=subprocess.PIPE,
        )
        for half in halves
    ]
    outputs = [await proc.communicate() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    granted = sum(int(out.strip()) for out, _ in outputs)
    # Each task holds 2 requests and 100 tokens: a fits 10 (requests: 20 of 21), b fits 4
    # (tokens: 400 of 450), c fits 3 (requests: 6 of 7). Exactly that many, no more.
    assert granted == 10 + 4 + 3
    for name, key_id in keys.items():
        row = await usage(pool, key_id)
        max_requests, max_tokens = limits[name]
        assert row["reserved_requests"] <= max_requests
        assert row["reserved_tokens"] <= max_tokens
    held = await pool.fetchval(
        "SELECT count(*) FROM key_reservations WHERE requests > 0 OR tokens > 0"
    )
    assert held == granted


@pytest.mark.parametrize("tokens", [0, 1])
def test_limits_follow_the_policy(tokens: int) -> None:
    from agentmesh.config import ApiPolicy

    policy = ApiPolicy(max_tokens_per_key=tokens, max_requests_per_day=60, rpm_soft_limit=2)
    assert Limits.of(policy).args == (2, 60, tokens)
