"""A dispatch round's keys against PostgreSQL: which placed gemini task gets a key, which
waits (and until when), which is rejected or failed, and why, as dispatch reads them from
`KeyReserver.reserve`."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from agentmesh.keys import quota
from agentmesh.keys.forecast import Forecaster
from agentmesh.keys.quota import Limits
from agentmesh.keys.reservations import Candidate, KeyReserver, RoundKeys
from agentmesh.scheduler.store import TaskStore
from agentmesh.tasks.model import AgentMode, TaskKind, TaskSpec

MODEL = "gemini-2.5-flash"
DEFAULT_MODEL = "gemini-2.5-pro"
DEFAULT_TOLERANCE = 600.0
NO_LIMITS = Limits(0, 0, 0)


def fingerprint(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()[:12]


async def add_key(
    pool: asyncpg.Pool, name: str, *, node_id: str | None = None, tpd: int | None = None
) -> int:
    return int(
        await pool.fetchval(
            "INSERT INTO api_keys (name, key_value, fingerprint, node_id, tokens_per_day)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING id",
            name,
            None if node_id else f"fernet:sealed-{name}",
            fingerprint(name),
            node_id,
            tpd,
        )
    )


async def add_user(
    pool: asyncpg.Pool, name: str, *, tolerance: int | None = None, max_tokens: int | None = None
) -> None:
    await pool.execute(
        "INSERT INTO user_profile (username, throttle_tolerance, max_token_per_request)"
        " VALUES ($1, $2, $3)",
        name,
        tolerance,
        max_tokens,
    )


async def candidate(
    store: TaskStore,
    *,
    user: str = "alice",
    prompt: str = "hi",
    model: str = MODEL,
    max_tokens: int = 0,
    agents: Sequence[str] = ("agent-a",),
    agent_mode: str = "",
) -> Candidate:
    spec = TaskSpec(
        kind=TaskKind.GEMINI,
        prompt=prompt,
        user=user,
        model=model,
        max_tokens=max_tokens,
        agent_mode=agent_mode,
    )
    return Candidate(await store.submit(spec), spec, tuple(agents))


async def reserve(pool: asyncpg.Pool, *candidates: Candidate) -> RoundKeys:
    reserver = KeyReserver(
        pool,
        Forecaster(pool, cache_seconds=0),
        NO_LIMITS,
        default_model=DEFAULT_MODEL,
        default_tolerance_seconds=DEFAULT_TOLERANCE,
    )
    async with pool.acquire() as conn, conn.transaction():
        return await reserver.reserve(conn, candidates)


async def waited_since(pool: asyncpg.Pool, task_id: str, seconds: float) -> None:
    """The task has been waiting for a key for `seconds` already."""
    await pool.execute(
        "UPDATE tasks SET key_wait_since = now() - make_interval(secs => $2) WHERE id = $1",
        task_id,
        seconds,
    )


async def test_no_candidates_reserve_nothing(pool: asyncpg.Pool) -> None:
    assert await reserve(pool) == RoundKeys()


async def test_a_task_gets_a_key_with_its_forecast_and_the_prediction_is_logged(
    pool: asyncpg.Pool, store: TaskStore
) -> None:
    key = await add_key(pool, "central")
    task = await candidate(store, prompt="x" * 400, model="")  # the default model

    out = await reserve(pool, task)

    reserved = out.reserved[task.task_id]
    assert (reserved.key.key_id, reserved.forecast.tokens, reserved.budget) == (key, 100, 0)
    assert out.moved == out.waiting == out.rejected == out.failed == {}
    row = await pool.fetchrow(
        "SELECT api_key, username, model, prompt_chars, predicted_tokens, predicted_requests"
        " FROM token_prediction_log WHERE task_id = $1",
        task.task_id,
    )
    assert row is not None
    assert tuple(row) == (fingerprint("central"), "alice", DEFAULT_MODEL, 400, 100, 1)
    held = await pool.fetchrow(
        "SELECT model, tokens FROM key_reservations WHERE task_id = $1", task.task_id
    )
    assert held is not None
    assert tuple(held) == (DEFAULT_MODEL, 100)


@pytest.mark.parametrize(
    ("spec_max", "user_max", "budget"),
    [(0, None, 0), (3_000, None, 3_000), (0, 5_000, 5_000), (3_000, 5_000, 3_000),
     (5_000, 3_000, 3_000), (0, -1, 0), (1, None, 1)],
)  # fmt: skip
async def test_the_budget_is_the_smaller_of_the_tasks_and_the_users_limits(
    pool: asyncpg.Pool, store: TaskStore, spec_max: int, user_max: int | None, budget: int
) -> None:
    await add_key(pool, "central")
    await add_user(pool, "alice", max_tokens=user_max)
    task = await candidate(store, max_tokens=spec_max)

    out = await reserve(pool, task)

    assert out.reserved[task.task_id].budget == budget
    held = await pool.fetchval(
        "SELECT budget FROM key_reservations WHERE task_id = $1", task.task_id
    )
    assert held == budget


async def test_a_forecast_over_the_users_limit_is_rejected_before_any_key_is_spent(
    pool: asyncpg.Pool, store: TaskStore
) -> None:
    await add_key(pool, "central")
    await add_user(pool, "carol", max_tokens=50)
    over_user = await candidate(store, user="carol", prompt="x" * 4_000)
    over_task = await candidate(store, prompt="x" * 4_000, max_tokens=999)
    fits = await candidate(store, user="carol", prompt="x" * 200)  # 50 tokens

    out = await reserve(pool, over_user, over_task, fits)

    assert out.rejected == {
        over_user.task_id: "forecast 1,000 tokens exceeds carol's max_token_per_request of 50"
        " (plain rule (no history))",
        over_task.task_id: "forecast 1,000 tokens exceeds the task's max_tokens of 999"
        " (plain rule (no history))",
    }
    assert list(out.reserved) == [fits.task_id]
    held = await pool.fetch("SELECT task_id FROM key_reservations")
    assert [r["task_id"] for r in held] == [fits.task_id]


async def test_a_task_goes_to_the_node_that_holds_its_key_if_that_node_could_take_it(
    pool: asyncpg.Pool, store: TaskStore
) -> None:
    await add_key(pool, "on-b", node_id="agent-b")
    moved = await candidate(store, agents=("agent-a", "agent-b"))
    stays = await candidate(store, agents=("agent-b", "agent-a"))
    elsewhere = await candidate(store, agents=("agent-a",))

    out = await reserve(pool, moved, stays, elsewhere)

    assert out.moved == {moved.task_id: "agent-b"}
    assert set(out.reserved) == {moved.task_id, stays.task_id}
    reason, _ = out.waiting[elsewhere.task_id]
    assert "held by a node that is busy, offline or cannot run it" in reason, reason


async def test_a_task_moves_to_the_key_s_node_whichever_node_it_was_placed_on(
    pool: asyncpg.Pool, store: TaskStore
) -> None:
    await add_key(pool, "on-a", node_id="agent-a")
    task = await candidate(store, agents=("agent-b", "agent-a"))

    out = await reserve(pool, task)

    assert out.moved == {task.task_id: "agent-a"}


async def test_a_central_key_moves_no_task(pool: asyncpg.Pool, store: TaskStore) -> None:
    await add_key(pool, "central")
    task = await candidate(store, agents=("agent-a", "agent-b"))

    out = await reserve(pool, task)

    assert list(out.reserved) == [task.task_id]
    assert out.moved == {}


async def test_a_smaller_task_still_gets_the_key_a_larger_one_of_its_user_could_not(
    pool: asyncpg.Pool, store: TaskStore
) -> None:
    await add_key(pool, "small", tpd=1_000)
    large = await candidate(store, prompt="x" * 8_000)  # 2,000 tokens: more than the key has
    larger = await candidate(store, prompt="x" * 12_000)
    middle = await candidate(store, prompt="x" * 4_800)  # 1,200 tokens
    small = await candidate(store, prompt="x" * 400)  # 100 tokens
    other_nodes = await candidate(store, prompt="x" * 8_000, agents=("agent-b",))

    out = await reserve(pool, large, larger, middle, small, other_nodes)

    assert list(out.reserved) == [small.task_id]
    waiting = {large.task_id, larger.task_id, middle.task_id, other_nodes.task_id}
    assert set(out.waiting) == waiting
    for task in (large, larger, middle, other_nodes):
        reason, _ = out.waiting[task.task_id]
        assert "without enough daily quota left for its forecast" in reason, reason


async def test_a_task_needing_fewer_tokens_but_more_requests_is_not_judged_by_a_larger_one(
    pool: asyncpg.Pool, store: TaskStore
) -> None:
    await add_key(pool, "small", tpd=1_000)
    await add_key(pool, "bobs", tpd=100_000)
    await pool.execute("UPDATE api_keys SET assigned_user = 'bob' WHERE name = 'bobs'")
    large = await candidate(store, prompt="x" * 8_000, agent_mode=AgentMode.PLAIN)
    agentic = await candidate(store, prompt="x" * 400, agent_mode=AgentMode.AGENTIC)
    bob = await candidate(store, user="bob", prompt="x" * 8_000, agent_mode=AgentMode.PLAIN)

    out = await reserve(pool, large, agentic, bob)

    forecast = out.reserved[agentic.task_id].forecast
    assert (forecast.requests, forecast.tokens) == (2, 100)
    assert set(out.reserved) == {agentic.task_id, bob.task_id}  # bob has a key of his own
    assert list(out.waiting) == [large.task_id]


async def test_a_task_needing_fewer_requests_but_more_tokens_is_not_judged_by_a_larger_one(
    pool: asyncpg.Pool, store: TaskStore
) -> None:
    key = await add_key(pool, "last-request")
    await pool.execute("UPDATE api_keys SET requests_per_day = 1 WHERE id = $1", key)
    agentic = await candidate(store, prompt="x" * 400, agent_mode=AgentMode.AGENTIC)
    plain = await candidate(store, prompt="x" * 8_000, agent_mode=AgentMode.PLAIN)

    out = await reserve(pool, agentic, plain)

    forecast = out.reserved[plain.task_id].forecast
    assert (forecast.requests, forecast.tokens) == (1, 2_000)
    reason, _ = out.waiting[agentic.task_id]
    assert "without enough daily quota left for its forecast" in reason, reason


async def test_without_a_key_a_task_waits_with_the_reason_until_its_tolerance_runs_out(
    pool: asyncpg.Pool, store: TaskStore
) -> None:
    await add_user(pool, "erin", tolerance=60)
    task = await candidate(store, user="erin")
    await waited_since(pool, task.task_id, 20)
    before = datetime.now(UTC)

    out = await reserve(pool, task)

    reason, until = out.waiting[task.task_id]
    assert reason.startswith("no API key: none in api_keys of user erin or anyone"), reason
    assert until is not None
    assert before + timedelta(seconds=35) < until < datetime.now(UTC) + timedelta(seconds=41)
    assert out.failed == {}


async def test_a_task_waits_until_capacity_is_back_if_that_comes_before_its_tolerance_ends(
    pool: asyncpg.Pool, store: TaskStore
) -> None:
    key = await add_key(pool, "central")
    async with pool.acquire() as conn:
        await quota.cool(conn, key, MODEL, 30, "429 per-minute quota")
    soon = await candidate(store)  # the default tolerance: 600 s
    await add_user(pool, "erin", tolerance=10)
    impatient = await candidate(store, user="erin")
    before = datetime.now(UTC)

    out = await reserve(pool, soon, impatient)

    reason, until = out.waiting[soon.task_id]
    assert "cooling down after a 429" in reason, reason
    assert until is not None
    assert before + timedelta(seconds=25) < until < datetime.now(UTC) + timedelta(seconds=31)
    _, until = out.waiting[impatient.task_id]
    assert until is not None
    assert before + timedelta(seconds=5) < until < datetime.now(UTC) + timedelta(seconds=11)


async def test_a_task_that_waited_longer_than_its_user_tolerates_fails_with_the_reason(
    pool: asyncpg.Pool, store: TaskStore
) -> None:
    await add_user(pool, "erin", tolerance=5)
    await add_user(pool, "frank")  # no tolerance of his own: the default
    late = await candidate(store, user="erin")
    on_time = await candidate(store, user="erin")
    patient = await candidate(store, user="frank")
    await waited_since(pool, late.task_id, 30)
    await waited_since(pool, patient.task_id, 30)

    out = await reserve(pool, late, on_time, patient)

    assert list(out.failed) == [late.task_id]
    assert out.failed[late.task_id].startswith("no API key: none in api_keys of user erin")
    assert out.failed[late.task_id].endswith("(waited 30 s, the throttle tolerance is 5 s)")
    assert set(out.waiting) == {on_time.task_id, patient.task_id}
    since = await pool.fetchval("SELECT key_wait_since FROM tasks WHERE id = $1", on_time.task_id)
    assert since is not None  # its wait is counted from this round on


async def test_a_user_who_tolerates_no_wait_has_a_task_without_a_key_fail_at_once(
    pool: asyncpg.Pool, store: TaskStore
) -> None:
    await add_user(pool, "gina", tolerance=0)
    task = await candidate(store, user="gina")

    out = await reserve(pool, task)

    assert out.failed[task.task_id].endswith("(waited 0 s, the throttle tolerance is 0 s)")
    assert out.waiting == {}


async def test_a_task_ending_logs_what_it_spent_beside_its_forecast(
    pool: asyncpg.Pool, store: TaskStore
) -> None:
    await add_key(pool, "central")
    task = await candidate(store, prompt="x" * 400)
    spent_nothing = await candidate(store, user="bob")
    reserver = KeyReserver(
        pool,
        Forecaster(pool, cache_seconds=0),
        NO_LIMITS,
        default_model=DEFAULT_MODEL,
        default_tolerance_seconds=DEFAULT_TOLERANCE,
    )
    async with pool.acquire() as conn:
        await reserver.reserve(conn, [task])
    await pool.execute(
        "UPDATE key_reservations SET used_tokens = 321, used_requests = 2 WHERE task_id = $1",
        task.task_id,
    )

    await reserver.task_ended(task.task_id)
    await reserver.task_ended(spent_nothing.task_id)  # it never held a key: nothing to write

    row = await pool.fetchrow(
        "SELECT actual_tokens, actual_requests, delta FROM token_prediction_log WHERE task_id = $1",
        task.task_id,
    )
    assert row is not None
    assert tuple(row) == (321, 2, 321 - 100)


async def test_a_key_held_for_a_task_that_ended_before_it_started_goes_back(
    pool: asyncpg.Pool, store: TaskStore
) -> None:
    """The keys are reserved in the transaction that starts the attempts; a task that ended
    between the dispatch window and its start does not start, and gives back what it held."""
    await add_key(pool, "central")
    task = await candidate(store, prompt="x" * 400)
    await pool.execute("UPDATE tasks SET state = 'canceled' WHERE id = $1", task.task_id)
    reserver = KeyReserver(
        pool,
        Forecaster(pool, cache_seconds=0),
        NO_LIMITS,
        default_model=DEFAULT_MODEL,
        default_tolerance_seconds=DEFAULT_TOLERANCE,
    )
    held: list[RoundKeys] = []

    async def keys(conn: object, claimed: dict[str, str]) -> tuple[dict[str, str], dict[str, int]]:
        held.append(await reserver.reserve(conn, [task]))  # type: ignore[arg-type]
        return claimed, {t: r.key.key_id for t, r in held[0].reserved.items()}

    assert await store.start_attempts({task.task_id: "agent-a"}, "scheduler-a", 30.0, keys) == []

    assert list(held[0].reserved) == [task.task_id]  # it did hold the key in between
    reservation = await pool.fetchrow(
        "SELECT requests, tokens FROM key_reservations WHERE task_id = $1", task.task_id
    )
    assert reservation is not None
    assert tuple(reservation) == (0, 0)
    assert await pool.fetchval("SELECT sum(reserved_tokens) FROM api_key_usage") == 0
