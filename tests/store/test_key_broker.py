"""The scheduler's key broker against PostgreSQL: a node's proxy leases a key for each API
request of a task it runs, and reports how the request went (what it cost, a 429 that cools
the key, a refusal that disables it). What the proxy sees is the lease or the error; what a
user sees is the key's state in `agentmesh keys` and the task's spent tokens."""

from __future__ import annotations

import hashlib
import logging

import asyncpg
import pytest
from cryptography.fernet import Fernet

from agentmesh import log_format
from agentmesh.errors import FailedPrecondition, InvalidArgument, NotFound
from agentmesh.keys import quota
from agentmesh.keys.broker import KeyBroker
from agentmesh.keys.quota import Limits
from agentmesh.keys.vault import Vault
from agentmesh.scheduler.store import TaskStore
from agentmesh.tasks.events import Result
from agentmesh.tasks.model import TaskKind, TaskSpec, TaskState
from agentmesh.v1 import keys_pb2

MODEL = "gemini-2.5-flash"
AGENT = "agent-a"
OWNER = "scheduler-a"
SECRET = "AIzaSy-the-central-key-secret-0123456789"
NO_LIMITS = Limits(0, 0, 0)


def fingerprint(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()[:12]


@pytest.fixture
def vault() -> Vault:
    return Vault(Fernet.generate_key())


@pytest.fixture
def broker(pool: asyncpg.Pool, vault: Vault) -> KeyBroker:
    return KeyBroker(pool, vault, NO_LIMITS)


async def add_key(
    pool: asyncpg.Pool, name: str, sealed: str | None, *, node_id: str | None = None
) -> int:
    return int(
        await pool.fetchval(
            "INSERT INTO api_keys (name, key_value, fingerprint, node_id) VALUES ($1, $2, $3, $4)"
            " RETURNING id",
            name,
            sealed,
            fingerprint(name),
            node_id,
        )
    )


async def running_task(store: TaskStore, user: str = "alice") -> tuple[str, int]:
    """A gemini task whose first attempt runs on AGENT now: (its id, the attempt)."""
    task_id = await store.submit(TaskSpec(kind=TaskKind.GEMINI, prompt="hi", user=user))
    (started,) = await store.start_attempts({task_id: AGENT}, OWNER, 60.0)
    return task_id, started.attempt


def lease_request(task_id: str, attempt: int, **fields: object) -> keys_pb2.LeaseKeyRequest:
    values: dict[str, object] = {
        "task_id": task_id,
        "attempt": attempt,
        "agent_id": AGENT,
        "model": MODEL,
        "counted": True,
        **fields,
    }
    return keys_pb2.LeaseKeyRequest(**values)  # type: ignore[arg-type]


def report_request(
    task_id: str, attempt: int, key: str, **fields: object
) -> keys_pb2.ReportKeyUseRequest:
    values: dict[str, object] = {
        "task_id": task_id,
        "attempt": attempt,
        "agent_id": AGENT,
        "fingerprint": fingerprint(key),
        "model": MODEL,
        "counted": True,
        **fields,
    }
    return keys_pb2.ReportKeyUseRequest(**values)  # type: ignore[arg-type]


async def reserve_for(pool: asyncpg.Pool, task_id: str, *, tokens: int, budget: int) -> None:
    async with pool.acquire() as conn:
        await quota.ensure_rows(conn, MODEL)
        held = await quota.reserve(
            conn,
            task_id=task_id,
            user="alice",
            nodes=[AGENT],
            model=MODEL,
            requests=2,
            tokens=tokens,
            budget=budget,
            limits=NO_LIMITS,
        )
    assert held is not None


async def key_state(pool: asyncpg.Pool, name: str) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT k.enabled, k.disabled_reason, m.cooling_until - now() AS cooling,"
        " m.cooling_reason, u.requests, u.tokens"
        " FROM api_keys k LEFT JOIN api_key_models m ON m.key_id = k.id AND m.model = $2"
        " LEFT JOIN api_key_usage u ON u.key_id = k.id AND u.model = $2 WHERE k.name = $1",
        name,
        MODEL,
    )
    assert row is not None
    return row


async def test_a_central_key_is_leased_with_its_secret_which_never_reaches_a_log(
    pool: asyncpg.Pool,
    store: TaskStore,
    broker: KeyBroker,
    vault: Vault,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await add_key(pool, "central", vault.seal(SECRET))
    task_id, attempt = await running_task(store)

    lease = await broker.lease(lease_request(task_id, attempt))

    assert (lease.label, lease.fingerprint, lease.secret) == (
        "central",
        fingerprint("central"),
        SECRET,
    )
    assert not lease.exhausted
    assert lease.wait_seconds == 0.0  # a key nobody used: its slot is now
    assert (await key_state(pool, "central"))["requests"] == 1
    logging.getLogger("agentmesh.test").warning("the proxy got %s", SECRET)
    assert SECRET not in log_format.scrub(caplog.records[-1].getMessage())


async def test_a_key_the_node_holds_is_leased_by_its_fingerprint_alone(
    pool: asyncpg.Pool, store: TaskStore, broker: KeyBroker
) -> None:
    await add_key(pool, "held", None, node_id=AGENT)
    task_id, attempt = await running_task(store)

    lease = await broker.lease(lease_request(task_id, attempt))

    assert (lease.label, lease.fingerprint, lease.secret) == ("held", fingerprint("held"), "")


async def test_a_central_key_without_a_stored_secret_is_an_error(
    pool: asyncpg.Pool, store: TaskStore, broker: KeyBroker
) -> None:
    await add_key(pool, "empty", None)
    task_id, attempt = await running_task(store)

    with pytest.raises(FailedPrecondition, match="API key empty has no stored secret"):
        await broker.lease(lease_request(task_id, attempt))


async def test_a_lease_without_a_model_is_refused(
    pool: asyncpg.Pool, store: TaskStore, broker: KeyBroker
) -> None:
    task_id, attempt = await running_task(store)

    with pytest.raises(InvalidArgument, match="model"):
        await broker.lease(lease_request(task_id, attempt, model=""))


async def test_a_key_goes_only_to_the_agent_that_runs_the_tasks_current_attempt(
    pool: asyncpg.Pool, store: TaskStore, broker: KeyBroker, vault: Vault
) -> None:
    await add_key(pool, "central", vault.seal(SECRET))
    task_id, attempt = await running_task(store)
    queued = await store.submit(TaskSpec(kind=TaskKind.GEMINI, prompt="hi", user="alice"))

    with pytest.raises(NotFound, match="no task nope"):
        await broker.lease(lease_request("nope", attempt))
    with pytest.raises(FailedPrecondition, match=f"attempt {attempt + 1} is not running"):
        await broker.lease(lease_request(task_id, attempt + 1))
    with pytest.raises(FailedPrecondition, match="attempt 0 is not running"):
        await broker.lease(lease_request(queued, 0))
    for other in ("agent-b", "agent-0"):
        with pytest.raises(FailedPrecondition, match=f"does not run on agent {other}"):
            await broker.lease(lease_request(task_id, attempt, agent_id=other))
    assert await store.finish_attempt(task_id, attempt, OWNER, AGENT, Result(TaskState.COMPLETED))
    with pytest.raises(FailedPrecondition, match="is not running"):
        await broker.lease(lease_request(task_id, attempt))
    assert (await key_state(pool, "central"))["requests"] is None  # none was counted


async def test_with_no_key_the_lease_says_exhausted_with_the_reason_and_when_to_retry(
    pool: asyncpg.Pool, store: TaskStore, broker: KeyBroker, vault: Vault
) -> None:
    task_id, attempt = await running_task(store)

    lease = await broker.lease(lease_request(task_id, attempt))

    assert lease.exhausted
    assert lease.reason.startswith("no API key: none in api_keys of user alice"), lease.reason
    assert lease.retry_after_seconds == 60.0  # nothing says when: a minute
    assert lease.secret == lease.fingerprint == ""


@pytest.mark.parametrize(("cooling", "low", "high"), [(40.0, 30.0, 40.0), (0.2, 1.0, 1.0)])
async def test_with_every_key_cooling_the_lease_says_retry_when_the_first_comes_back(
    pool: asyncpg.Pool,
    store: TaskStore,
    broker: KeyBroker,
    vault: Vault,
    cooling: float,
    low: float,
    high: float,
) -> None:
    key = await add_key(pool, "central", vault.seal(SECRET))
    async with pool.acquire() as conn:
        await quota.cool(conn, key, MODEL, cooling, "429 per-minute quota")
    task_id, attempt = await running_task(store)

    lease = await broker.lease(lease_request(task_id, attempt))

    assert lease.exhausted
    assert "cooling down after a 429" in lease.reason, lease.reason
    assert low <= lease.retry_after_seconds <= high  # never less than a second


async def test_a_successful_request_counts_its_tokens_for_the_task_and_the_key(
    pool: asyncpg.Pool, store: TaskStore, broker: KeyBroker, vault: Vault
) -> None:
    await add_key(pool, "central", vault.seal(SECRET))
    task_id, attempt = await running_task(store)
    await reserve_for(pool, task_id, tokens=1_000, budget=3_000)

    first = await broker.report(report_request(task_id, attempt, "central", http_status=200,
                                               total_tokens=700))  # fmt: skip
    second = await broker.report(report_request(task_id, attempt, "central", http_status=299,
                                                total_tokens=100))  # fmt: skip
    third = await broker.report(report_request(task_id, attempt, "central", http_status=200,
                                               total_tokens=-5))  # fmt: skip

    assert (first.task_tokens, first.token_budget) == (700, 3_000)
    assert (second.task_tokens, second.token_budget) == (800, 3_000)  # any 2xx counts
    assert (third.task_tokens, third.token_budget) == (800, 3_000)  # a negative count: 0
    for status in (199, 300):  # not a success: what usageMetadata it had is not counted
        other = await broker.report(
            report_request(task_id, attempt, "central", http_status=status, total_tokens=50)
        )
        assert other.task_tokens == 800
    assert (await key_state(pool, "central"))["tokens"] == 800


async def test_a_failed_request_is_not_counted_and_the_answer_is_what_the_task_spent(
    pool: asyncpg.Pool, store: TaskStore, broker: KeyBroker, vault: Vault
) -> None:
    await add_key(pool, "central", vault.seal(SECRET))
    task_id, attempt = await running_task(store)
    await reserve_for(pool, task_id, tokens=1_000, budget=3_000)
    await broker.lease(lease_request(task_id, attempt))
    await broker.report(report_request(task_id, attempt, "central", http_status=200,
                                       total_tokens=400))  # fmt: skip
    await broker.lease(lease_request(task_id, attempt))
    assert (await key_state(pool, "central"))["requests"] == 2

    answer = await broker.report(report_request(task_id, attempt, "central", http_status=500))
    assert (await key_state(pool, "central"))["requests"] == 1
    uncounted = await broker.report(
        report_request(task_id, attempt, "central", http_status=0, counted=False)
    )

    assert (answer.task_tokens, answer.token_budget) == (400, 3_000)
    assert (uncounted.task_tokens, uncounted.token_budget) == (400, 3_000)
    state = await key_state(pool, "central")
    assert state["requests"] == 1  # the 500 was not spent; the uncounted one was never counted
    assert state["enabled"]
    assert state["cooling"] is None
    used = await pool.fetchval(
        "SELECT used_requests FROM key_reservations WHERE task_id = $1", task_id
    )
    assert used == 1


async def test_a_lease_takes_the_slot_its_reservation_booked(
    pool: asyncpg.Pool,
    store: TaskStore,
    broker: KeyBroker,
    vault: Vault,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await add_key(pool, "central", vault.seal(SECRET))
    caplog.set_level(logging.DEBUG, logger="agentmesh.keys.broker")
    for _ in range(3):  # three waits: one of them has a third decimal that is not 0
        task_id, attempt = await running_task(store)
        await reserve_for(pool, task_id, tokens=1_000, budget=0)
        caplog.clear()

        lease = await broker.lease(lease_request(task_id, attempt))

        assert 0.0 < lease.wait_seconds < 1.0  # a reservation's first slot leads by a second
        # Logged with its ids and the wait in milliseconds; the secret never.
        (logged,) = [r for r in caplog.records if r.getMessage() == "key leased"]
        assert (logged.task_id, logged.key, logged.model, logged.counted) == (
            task_id,
            "central",
            MODEL,
            True,
        )
        assert logged.wait == round(lease.wait_seconds, 3)
        assert SECRET not in repr(vars(logged))


@pytest.mark.parametrize(
    ("next_slot", "exhausted", "low", "high"),
    [(59.5, False, 58.0, 59.5), (60.5, True, 56.0, 57.5)],
)
async def test_a_request_waits_up_to_a_minute_for_its_key_s_next_slot(
    pool: asyncpg.Pool,
    store: TaskStore,
    broker: KeyBroker,
    vault: Vault,
    next_slot: float,
    exhausted: bool,
    low: float,
    high: float,
) -> None:
    key = await add_key(pool, "central", vault.seal(SECRET))
    async with pool.acquire() as conn:
        await quota.ensure_rows(conn, MODEL)
    await pool.execute(
        "UPDATE api_key_models SET next_request_at = now() + make_interval(secs => $2)"
        " WHERE key_id = $1",
        key,
        next_slot,
    )
    task_id, attempt = await running_task(store)

    lease = await broker.lease(lease_request(task_id, attempt))

    assert lease.exhausted is exhausted
    if exhausted:  # the CLI retries when the slot is near enough (3 s ahead)
        assert "at the per-minute limit" in lease.reason, lease.reason
        assert low <= lease.retry_after_seconds <= high
    else:
        assert low <= lease.wait_seconds <= high


@pytest.mark.parametrize(
    ("limit", "spent_requests", "spent_tokens", "next_slot", "why"),
    [
        ("requests_per_day", 2, 0, 0.0, "without enough daily quota left for its forecast"),
        ("tokens_per_day", 0, 2, 0.0, "without enough daily quota left for its forecast"),
        ("requests_per_day", 1, 0, 120.0, "at the per-minute limit"),
        ("tokens_per_day", 0, 1, 120.0, "at the per-minute limit"),
    ],
)
async def test_an_exhausted_lease_says_which_limit_the_key_is_at(
    pool: asyncpg.Pool,
    store: TaskStore,
    broker: KeyBroker,
    vault: Vault,
    limit: str,
    spent_requests: int,
    spent_tokens: int,
    next_slot: float,
    why: str,
) -> None:
    # One request (and one token) is what a lease asks of a key's quotas.
    key = await add_key(pool, "central", vault.seal(SECRET))
    await pool.execute(f"UPDATE api_keys SET {limit} = 2 WHERE id = $1", key)
    async with pool.acquire() as conn:
        await quota.ensure_rows(conn, MODEL)
    await pool.execute(
        "UPDATE api_key_usage SET requests = $2, tokens = $3 WHERE key_id = $1",
        key,
        spent_requests,
        spent_tokens,
    )
    await pool.execute(
        "UPDATE api_key_models SET next_request_at = now() + make_interval(secs => $2)"
        " WHERE key_id = $1",
        key,
        next_slot,
    )
    task_id, attempt = await running_task(store)

    lease = await broker.lease(lease_request(task_id, attempt))

    assert lease.exhausted
    assert lease.reason.startswith(f"no API key has capacity: the key for {MODEL}"), lease.reason
    assert why in lease.reason, lease.reason


async def test_a_task_on_a_late_attempt_still_gets_its_key(
    pool: asyncpg.Pool, store: TaskStore, broker: KeyBroker, vault: Vault
) -> None:
    # Retries that do not count (a node lost, a scheduler gone) leave attempt numbers unbounded.
    await add_key(pool, "central", vault.seal(SECRET))
    task_id, _ = await running_task(store)
    await pool.execute("UPDATE tasks SET attempt = 300 WHERE id = $1", task_id)

    lease = await broker.lease(lease_request(task_id, 300))

    assert lease.secret == SECRET
    with pytest.raises(FailedPrecondition, match="attempt 299 is not running"):
        await broker.lease(lease_request(task_id, 299))


async def test_a_429_delay_just_over_five_minutes_is_daily_even_right_before_the_reset(
    pool: asyncpg.Pool,
    store: TaskStore,
    broker: KeyBroker,
    vault: Vault,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 100 s before midnight Pacific, a delay of 300.5 s outlasts the wait for the reset.
    monkeypatch.setattr(quota, "seconds_until_daily_reset", lambda now: 100.0)
    await add_key(pool, "central", vault.seal(SECRET))
    task_id, attempt = await running_task(store)

    await broker.report(
        report_request(task_id, attempt, "central", http_status=429, retry_delay_seconds=300.5)
    )

    state = await key_state(pool, "central")
    assert state["cooling_reason"] == "429 daily quota"
    assert 295 <= state["cooling"].total_seconds() <= 300.5


async def test_a_report_for_a_task_that_never_held_a_key_answers_zero(
    pool: asyncpg.Pool, store: TaskStore, broker: KeyBroker
) -> None:
    await add_key(pool, "held", None, node_id=AGENT)
    task_id, attempt = await running_task(store)

    answer = await broker.report(report_request(task_id, attempt, "held", http_status=503))

    assert (answer.task_tokens, answer.token_budget) == (0, 0)


@pytest.mark.parametrize(
    ("retry_delay", "quota_id", "reason", "low", "high"),
    [
        (30.0, "GenerateRequestsPerMinutePerProjectPerModel",
         "429 per-minute quota (GenerateRequestsPerMinutePerProjectPerModel)", 25, 31),
        (0.0, "", "429 per-minute quota", 0, 1.1),
        (300.0, "", "429 per-minute quota", 290, 301),
        (400.0, "", "429 daily quota", 390, 86_401),
        (10.0, "GenerateRequestsPerDayPerProjectPerModel",
         "429 daily quota (GenerateRequestsPerDayPerProjectPerModel)", 9, 86_401),
    ],
)  # fmt: skip
async def test_a_429_cools_the_key_for_the_model_with_the_quota_named(
    pool: asyncpg.Pool,
    store: TaskStore,
    broker: KeyBroker,
    vault: Vault,
    retry_delay: float,
    quota_id: str,
    reason: str,
    low: float,
    high: float,
) -> None:
    await add_key(pool, "central", vault.seal(SECRET))
    task_id, attempt = await running_task(store)

    await broker.report(
        report_request(
            task_id,
            attempt,
            "central",
            http_status=429,
            retry_delay_seconds=retry_delay,
            quota_id=quota_id,
            counted=False,
        )
    )

    state = await key_state(pool, "central")
    assert state["cooling_reason"] == reason
    assert low <= state["cooling"].total_seconds() <= high
    assert state["enabled"]


@pytest.mark.parametrize(
    ("status", "error_reason", "disabled_reason"),
    [
        (401, "", "refused by the API: HTTP 401"),
        (400, "API_KEY_INVALID", "refused by the API: API_KEY_INVALID"),
        (403, "API_KEY_SERVICE_BLOCKED", "refused by the API: API_KEY_SERVICE_BLOCKED"),
        (403, "", None),  # a 403 alone may be about a model or a region: the key stays
        (400, "INVALID_ARGUMENT", None),
    ],
)
async def test_a_key_the_api_refuses_is_disabled_with_the_reason(
    pool: asyncpg.Pool,
    store: TaskStore,
    broker: KeyBroker,
    vault: Vault,
    status: int,
    error_reason: str,
    disabled_reason: str | None,
) -> None:
    await add_key(pool, "central", vault.seal(SECRET))
    task_id, attempt = await running_task(store)

    await broker.report(
        report_request(task_id, attempt, "central", http_status=status, error_reason=error_reason)
    )

    state = await key_state(pool, "central")
    assert (state["enabled"], state["disabled_reason"]) == (
        disabled_reason is None,
        disabled_reason,
    )
    assert state["cooling"] is None


async def test_what_an_ended_attempt_was_served_still_counts_but_not_a_stale_one(
    pool: asyncpg.Pool, store: TaskStore, broker: KeyBroker, vault: Vault
) -> None:
    await add_key(pool, "central", vault.seal(SECRET))
    task_id, attempt = await running_task(store)
    await reserve_for(pool, task_id, tokens=1_000, budget=0)
    assert await store.finish_attempt(task_id, attempt, OWNER, AGENT, Result(TaskState.CANCELED))

    answer = await broker.report(report_request(task_id, attempt, "central", http_status=200,
                                                total_tokens=250))  # fmt: skip

    assert answer.task_tokens == 250
    with pytest.raises(FailedPrecondition, match="is not running"):
        await broker.report(report_request(task_id, attempt - 1, "central", http_status=200))
    with pytest.raises(FailedPrecondition, match="does not run on agent agent-b"):
        await broker.report(
            report_request(task_id, attempt, "central", http_status=200, agent_id="agent-b")
        )
    queued = await store.submit(TaskSpec(kind=TaskKind.GEMINI, prompt="hi", user="alice"))
    with pytest.raises(FailedPrecondition, match="is not running"):
        await broker.report(report_request(queued, 0, "central", http_status=200))
    assert (await key_state(pool, "central"))["tokens"] == 250


async def test_a_report_about_an_unknown_key_is_an_error(
    pool: asyncpg.Pool, store: TaskStore, broker: KeyBroker
) -> None:
    task_id, attempt = await running_task(store)

    with pytest.raises(NotFound, match="no API key with fingerprint"):
        await broker.report(report_request(task_id, attempt, "gone", http_status=200))
