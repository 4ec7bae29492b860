"""Token forecasts against real PostgreSQL: they learn from `token_prediction_log`, fall back
from the most specific group to wider ones, are cached, and write the seed's columns."""

from __future__ import annotations

import logging
import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import pytest

from agentmesh.db.migrate import CREATE_MIGRATIONS_TABLE, INSERT_APPLIED, load_migrations, migrate
from agentmesh.errors import InvalidArgument
from agentmesh.keys import forecast as forecast_module
from agentmesh.keys.forecast import (
    HISTORY,
    MIN_HISTORY,
    Forecast,
    Forecaster,
    plain_rule,
    token_report,
)
from agentmesh.keys.pool import fingerprint

FLASH = "gemini-2.5-flash"
PRO = "gemini-2.5-pro"
KEY = fingerprint("AIzaSy-forecast-test-key")


async def add_tasks(pool: asyncpg.Pool, *task_ids: str) -> None:
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO tasks (id, kind, spec, root_id) VALUES ($1, 'gemini', '{}'::jsonb, $1)",
            [(task_id,) for task_id in task_ids],
        )


async def add_history(
    pool: asyncpg.Pool,
    *,
    user: str,
    model: str,
    mode: str,
    tokens: list[int],
    requests: list[int | None] | None = None,
    chars: int = 400,
    minutes_ago: int = 0,
    finished: bool = True,
) -> None:
    """Finished (or unfinished) tasks of a group, all with prompts of `chars` characters."""
    turns = requests or [1] * len(tokens)
    async with pool.acquire() as conn:
        await conn.executemany(
            """
            INSERT INTO token_prediction_log (username, model, agent_mode, prompt_chars,
                predicted_tokens, actual_tokens, actual_requests, request_timestamp)
            VALUES ($1, $2, $3, $4, 1, $5, $6,
                    now() AT TIME ZONE 'UTC' - make_interval(mins => $7))
            """,
            [
                (user, model, mode, chars, t if finished else None, r, minutes_ago)
                for t, r in zip(tokens, turns, strict=True)
            ],
        )


async def forecast(
    forecaster: Forecaster, user: str, model: str, mode: str, chars: int
) -> Forecast:
    return await forecaster.forecast(user=user, model=model, agent_mode=mode, prompt_chars=chars)


# ------------------------------------------------------------------ learning from history


@dataclass(frozen=True)
class Habits:
    """A user's hidden ways: characters a token in their prompts, tool calls a task, and
    the tokens each tool result adds to the conversation."""

    chars_per_token: float
    tool_calls: float
    tool_result_tokens: int


USERS = {
    "alice": Habits(3.1, 0.5, 300),
    "bob": Habits(4.5, 3.0, 1800),
    "carol": Habits(3.8, 1.2, 700),
}
# The CLI's hidden per-request overhead (system prompt and tool declarations) by mode, and a
# model's tokenizer against flash's.
OVERHEAD = {"agentic": 9_200, "plain": 5_600}
TOKENIZER = {FLASH: 1.0, PRO: 1.12}


@dataclass(frozen=True)
class SyntheticTask:
    user: str
    model: str
    mode: str
    chars: int
    requests: int
    tokens: int


def synthetic_workload(count: int, seed: int) -> list[SyntheticTask]:
    """Tasks whose true cost follows the CLI: each request re-sends the overhead, the prompt
    and the conversation so far, plus the answer; with noise."""
    rng = random.Random(seed)
    tasks = []
    for _ in range(count):
        user, habits = rng.choice(sorted(USERS.items()))
        model, mode = rng.choice(sorted(TOKENIZER)), rng.choice(sorted(OVERHEAD))
        chars = int(math.exp(rng.uniform(math.log(200), math.log(60_000))))
        requests = 1
        if mode == "agentic":
            requests += min(12, int(rng.expovariate(1 / habits.tool_calls)))
        prompt = chars / habits.chars_per_token
        tokens = sum(
            (OVERHEAD[mode] + prompt) * TOKENIZER[model]
            + rng.uniform(100, 600)
            + turn * habits.tool_result_tokens * rng.uniform(0.5, 1.5)
            for turn in range(requests)
        )
        tasks.append(SyntheticTask(user, model, mode, chars, requests, round(tokens)))
    return tasks


def mdape(predicted: list[int], actual: list[int]) -> float:
    return statistics.median(abs(p - a) * 100 / a for p, a in zip(predicted, actual, strict=True))


async def test_the_forecast_error_falls_as_history_grows_and_beats_the_plain_rule(
    pool: asyncpg.Pool,
) -> None:
    workload = synthetic_workload(300, seed=10)
    task_ids = [f"synthetic-{i}" for i in range(len(workload))]
    await add_tasks(pool, *task_ids)
    forecaster = Forecaster(pool, cache_seconds=0)
    predicted: list[int] = []
    for task_id, task in zip(task_ids, workload, strict=True):
        # As dispatch does: forecast, log the prediction; at the task's end, its actuals.
        result = await forecast(forecaster, task.user, task.model, task.mode, task.chars)
        async with pool.acquire() as conn:
            await forecaster.log_prediction(
                conn, task_id=task_id, fingerprint=KEY, user=task.user, model=task.model,
                agent_mode=task.mode, prompt_chars=task.chars, forecast=result,
            )  # fmt: skip
            await forecaster.log_actual(
                conn, task_id=task_id, actual_tokens=task.tokens, actual_requests=task.requests
            )
        predicted.append(result.tokens)

    actual = [task.tokens for task in workload]
    plain = [plain_rule(task.chars) for task in workload]
    windows = [(0, 12), (12, 50), (50, 150), (150, 300)]
    errors = [mdape(predicted[a:b], actual[a:b]) for a, b in windows]
    plain_errors = [mdape(plain[a:b], actual[a:b]) for a, b in windows]
    # Falls while it learns (the plain rule first, then the task's mode, then its user and
    # model), then stays low.
    assert errors[0] > 50, (errors, plain_errors)
    assert errors[0] > errors[1] > max(errors[2:]), (errors, plain_errors)
    assert errors[-1] < 5, (errors, plain_errors)
    assert errors[-1] < plain_errors[-1] / 10, (errors, plain_errors)

    async with pool.acquire() as conn:
        report = await token_report(conn, days=1)
    assert report.overall.tasks == len(workload)
    assert report.overall.mdape == pytest.approx(mdape(predicted, actual))
    assert report.overall.plain_mdape == pytest.approx(mdape(plain, actual))
    assert report.overall.mdape < report.overall.plain_mdape / 5


# ------------------------------------------------------------------ groups and history


async def test_the_most_specific_group_with_enough_finished_tasks_is_used(
    pool: asyncpg.Pool,
) -> None:
    forecaster = Forecaster(pool, cache_seconds=0)
    no_history = "plain rule (no history)"
    assert await forecast(forecaster, "alice", FLASH, "agentic", 400) == Forecast(
        2, 100, no_history
    )
    assert await forecast(forecaster, "alice", FLASH, "plain", 400) == Forecast(1, 100, no_history)
    assert await forecast(forecaster, "alice", FLASH, "", 400) == Forecast(1, 100, no_history)

    # Other users' agentic tasks on flash: the (model, mode) group answers for alice.
    await add_history(
        pool, user="bob", model=FLASH, mode="agentic",
        tokens=[9_000, 9_500, 10_000, 10_500, 30_000], requests=[1, 2, 2, 3, 9],
    )  # fmt: skip
    on_flash = await forecast(forecaster, "alice", FLASH, "agentic", 400)
    assert on_flash == Forecast(2, 10_000, "learned from 5 agentic tasks on gemini-2.5-flash")
    # Nothing on pro: every model's agentic tasks. Nothing in plain mode: the plain rule.
    on_pro = await forecast(forecaster, "alice", PRO, "agentic", 400)
    assert on_pro == Forecast(2, 10_000, "learned from 5 agentic tasks on all models")
    assert await forecast(forecaster, "alice", FLASH, "plain", 400) == Forecast(1, 100, no_history)

    # Alice's own: too few finished ones (unfinished ones teach nothing), then enough.
    await add_history(pool, user="alice", model=FLASH, mode="agentic", tokens=[20_000] * 4)
    await add_history(
        pool, user="alice", model=FLASH, mode="agentic", tokens=[1] * 10, finished=False
    )
    mixed = await forecast(forecaster, "alice", FLASH, "agentic", 400)
    assert mixed.basis == "learned from 9 agentic tasks on gemini-2.5-flash"
    await add_history(pool, user="alice", model=FLASH, mode="agentic", tokens=[20_000])
    own = await forecast(forecaster, "alice", FLASH, "agentic", 400)
    assert own == Forecast(1, 20_000, "learned from 5 agentic tasks of alice on gemini-2.5-flash")
    # Bob's own five tasks answer for him.
    bob = await forecast(forecaster, "bob", FLASH, "agentic", 400)
    assert bob == Forecast(2, 10_000, "learned from 5 agentic tasks of bob on gemini-2.5-flash")


async def test_a_longer_prompt_is_charged_once_per_request(pool: asyncpg.Pool) -> None:
    await add_history(
        pool, user="bob", model=FLASH, mode="agentic", chars=400,
        tokens=[9_000, 9_500, 10_000, 10_500, 30_000], requests=[1, 2, 2, 3, 9],
    )  # fmt: skip
    forecaster = Forecaster(pool, cache_seconds=0)
    # 1,000 plain-rule tokens more than each past task's prompt: 1,000 more per request.
    longer = await forecast(forecaster, "bob", FLASH, "agentic", 4_400)
    assert longer.tokens == statistics.median([10_000, 11_500, 12_000, 13_500, 39_000])
    assert longer.requests == 2


async def test_the_characters_a_token_are_learned_from_varied_prompts(
    pool: asyncpg.Pool,
) -> None:
    # Code: 3 characters a token; a request costs 5,000 tokens beyond its prompt. Five tasks
    # whose prompts all differ enough: ten pairs, just enough to learn the slope from.
    sizes, requests = [400, 4_000, 20_000, 40_000, 80_000], [1, 2, 1, 2, 1]
    async with pool.acquire() as conn:
        await conn.executemany(
            """
            INSERT INTO token_prediction_log (username, model, agent_mode, prompt_chars,
                predicted_tokens, actual_tokens, actual_requests, request_timestamp)
            VALUES ('carol', $1, 'plain', $2, 1, $3, $4, now() AT TIME ZONE 'UTC')
            """,
            [
                (FLASH, chars, turns * (5_000 + chars // 3), turns)
                for chars, turns in zip(sizes, requests, strict=True)
            ],
        )
    forecaster = Forecaster(pool, cache_seconds=0)
    learned = await forecast(forecaster, "carol", FLASH, "plain", 60_000)
    assert learned.tokens == pytest.approx(25_000, rel=0.01)
    assert learned.requests == 1


async def add_varied(
    pool: asyncpg.Pool,
    user: str,
    sizes: list[int],
    cost: Callable[[int], int],
    requests: int = 1,
) -> None:
    """Finished plain tasks of `user` on flash, one per prompt size, of `requests` requests
    each costing `cost(chars)`."""
    async with pool.acquire() as conn:
        await conn.executemany(
            """
            INSERT INTO token_prediction_log (username, model, agent_mode, prompt_chars,
                predicted_tokens, actual_tokens, actual_requests, request_timestamp)
            VALUES ($1, $2, 'plain', $3, 1, $4, $5, now() AT TIME ZONE 'UTC')
            """,
            [(user, FLASH, chars, requests * cost(chars), requests) for chars in sizes],
        )


async def test_the_slope_is_learned_per_request_from_many_pairs(pool: asyncpg.Pool) -> None:
    # Six prompts, all far apart: fifteen pairs. Two requests a task, each costing 5,000
    # tokens and the prompt at 3 characters a token.
    sizes = [400, 4_000, 20_000, 40_000, 80_000, 160_000]
    await add_varied(pool, "fay", sizes, lambda chars: 5_000 + chars // 3, requests=2)

    learned = await forecast(Forecaster(pool, cache_seconds=0), "fay", FLASH, "plain", 100_000)

    assert learned.requests == 2
    assert learned.tokens == pytest.approx(2 * (5_000 + 100_000 / 3), rel=0.001)


async def test_prompts_a_quarter_apart_tell_the_slope_and_nine_pairs_are_too_few(
    pool: asyncpg.Pool,
) -> None:
    # 3 characters a token and 5,000 tokens a request beyond the prompt, as above.
    def code(chars: int) -> int:
        return 5_000 + chars // 3

    # 60,000 and 80,000 characters (15,000 and 20,000 plain-rule tokens) differ by exactly a
    # quarter of the larger: a pair, the tenth.
    await add_varied(pool, "dora", [400, 4_000, 20_000, 60_000, 80_000], code)
    # 40,000 and 45,000 differ by less: nine pairs, and the plain rule's slope of 1.
    await add_varied(pool, "erin", [400, 4_000, 20_000, 40_000, 45_000], code)
    forecaster = Forecaster(pool, cache_seconds=0)

    learned = await forecast(forecaster, "dora", FLASH, "plain", 100_000)
    assert learned.tokens == pytest.approx(5_000 + 100_000 / 3, rel=0.001)
    plain = await forecast(forecaster, "erin", FLASH, "plain", 100_000)
    # Each past task replayed with a slope of 1: its tokens + (25,000 - its plain tokens).
    assert plain.tokens == statistics.median(
        code(chars) + 25_000 - chars // 4 for chars in [400, 4_000, 20_000, 40_000, 45_000]
    )


async def test_the_learned_slope_is_kept_between_2_and_8_characters_a_token(
    pool: asyncpg.Pool,
) -> None:
    sizes = [400, 4_000, 20_000, 40_000, 80_000]  # ten pairs
    await add_varied(pool, "dense", sizes, lambda chars: 5_000 + chars)  # 1 character a token
    await add_varied(pool, "sparse", sizes, lambda chars: 5_000 + chars // 16)  # 16
    forecaster = Forecaster(pool, cache_seconds=0)

    # 120,000 characters: 30,000 plain-rule tokens, charged at 2 (not 4) a plain-rule token
    # more than each past prompt, or at 0.5 (not 0.25).
    dense = await forecast(forecaster, "dense", FLASH, "plain", 120_000)
    assert dense.tokens == statistics.median(5_000 + c + 2 * (30_000 - c // 4) for c in sizes)
    sparse = await forecast(forecaster, "sparse", FLASH, "plain", 120_000)
    assert sparse.tokens == statistics.median(
        5_000 + c // 16 + (30_000 - c // 4) / 2 for c in sizes
    )


async def test_the_window_is_the_50_most_recent_finished_tasks(pool: asyncpg.Pool) -> None:
    # The n-th most recent task cost n thousand tokens.
    async with pool.acquire() as conn:
        await conn.executemany(
            """
            INSERT INTO token_prediction_log (username, model, agent_mode, prompt_chars,
                predicted_tokens, actual_tokens, actual_requests, request_timestamp)
            VALUES ('bob', $1, 'plain', 400, 1, $2, 1,
                    now() AT TIME ZONE 'UTC' - make_interval(mins => $3))
            """,
            [(FLASH, 1_000 * n, n) for n in range(1, 101)],
        )
    learned = await forecast(Forecaster(pool, cache_seconds=0), "bob", FLASH, "plain", 400)
    assert learned.tokens == 25_500  # the median of 1,000 to 50,000
    assert learned.basis == "learned from 50 plain tasks of bob on gemini-2.5-flash"


async def test_a_forecast_is_at_least_one_token_however_short_the_prompt(
    pool: asyncpg.Pool,
) -> None:
    # Long prompts that cost less than the plain rule says: replayed with an empty prompt,
    # each past task would have cost less than nothing.
    await add_history(pool, user="bob", model=FLASH, mode="plain", tokens=[2_000] * 5,
                      chars=40_000)  # fmt: skip
    empty = await forecast(Forecaster(pool, cache_seconds=0), "bob", FLASH, "plain", 0)
    assert empty == Forecast(1, 1, "learned from 5 plain tasks of bob on gemini-2.5-flash")


async def test_older_rows_without_requests_count_one_request(pool: asyncpg.Pool) -> None:
    await add_history(
        pool, user="bob", model=FLASH, mode="plain", tokens=[6_000] * 5, requests=[None] * 5
    )
    learned = await forecast(Forecaster(pool, cache_seconds=0), "bob", FLASH, "plain", 800)
    assert (learned.requests, learned.tokens) == (1, 6_000 + 100)


async def test_only_the_most_recent_tasks_are_learned_from(pool: asyncpg.Pool) -> None:
    # The CLI changed an hour ago: its overhead fell from 100,000 tokens to 2,000.
    await add_history(pool, user="bob", model=FLASH, mode="plain", tokens=[100_000] * 60,
                      minutes_ago=60)  # fmt: skip
    await add_history(pool, user="bob", model=FLASH, mode="plain", tokens=[2_000] * HISTORY)
    forecaster = Forecaster(pool, cache_seconds=0)
    assert (await forecast(forecaster, "bob", FLASH, "plain", 400)).tokens == 2_000


async def test_a_groups_history_is_read_once_per_cache_period(pool: asyncpg.Pool) -> None:
    now = [1_000.0]
    forecaster = Forecaster(pool, clock=lambda: now[0])  # 5 seconds by default
    first = await forecast(forecaster, "alice", FLASH, "plain", 400)
    assert first.basis == "plain rule (no history)"
    await add_history(pool, user="alice", model=FLASH, mode="plain", tokens=[6_000] * MIN_HISTORY)
    now[0] += 4
    assert await forecast(forecaster, "alice", FLASH, "plain", 400) == first
    # Another prompt of the same group: the cached history, with this prompt.
    assert (await forecast(forecaster, "alice", FLASH, "plain", 800)).tokens == 200
    now[0] += 1
    learned = await forecast(forecaster, "alice", FLASH, "plain", 400)
    assert learned == Forecast(1, 6_000, "learned from 5 plain tasks of alice on gemini-2.5-flash")


async def test_a_cache_period_under_a_second_still_caches(pool: asyncpg.Pool) -> None:
    now = [1_000.0]
    forecaster = Forecaster(pool, cache_seconds=0.5, clock=lambda: now[0])
    first = await forecast(forecaster, "alice", FLASH, "plain", 400)
    await add_history(pool, user="alice", model=FLASH, mode="plain", tokens=[6_000] * 5)
    now[0] += 0.25
    assert await forecast(forecaster, "alice", FLASH, "plain", 400) == first
    now[0] += 0.25
    assert (await forecast(forecaster, "alice", FLASH, "plain", 400)).tokens == 6_000


async def test_the_cache_forgets_expired_groups_when_it_is_full(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forecast_module, "MAX_CACHED_GROUPS", 6)
    now = [0.0]
    forecaster = Forecaster(pool, cache_seconds=10, clock=lambda: now[0])
    await forecast(forecaster, "alice", FLASH, "plain", 400)  # 3 groups
    now[0] = 5
    await forecast(forecaster, "bob", FLASH, "agentic", 400)  # 3 more: full
    now[0] = 10  # alice's expire now, bob's have not
    await forecast(forecaster, "carol", PRO, "plain", 400)
    cached = forecaster._cache  # memory, which no forecast shows
    assert {(group.user, group.model, group.agent_mode) for group in cached} == {
        ("bob", FLASH, "agentic"), (None, FLASH, "agentic"), (None, None, "agentic"),
        ("carol", PRO, "plain"), (None, PRO, "plain"), (None, None, "plain"),
    }  # fmt: skip


async def test_the_cache_forgets_expired_groups_past_a_few_hundred_groups(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bound like the real one (4096): above 256, where Python's small ints end.
    monkeypatch.setattr(forecast_module, "MAX_CACHED_GROUPS", 300)
    now = [0.0]
    forecaster = Forecaster(pool, cache_seconds=10, clock=lambda: now[0])
    for n in range(299):  # one group per user, and the model's and the mode's
        await forecast(forecaster, f"user-{n}", FLASH, "plain", 400)
    cached = forecaster._cache  # memory, which no forecast shows
    assert len(cached) == 301  # past the bound: none had expired to make room
    now[0] = 12  # every group has expired

    await forecast(forecaster, "late", FLASH, "plain", 400)

    assert {(group.user, group.model) for group in forecaster._cache} == {
        ("late", FLASH), (None, FLASH), (None, None),
    }  # fmt: skip


async def test_without_a_cache_every_forecast_reads_the_newest_history(
    pool: asyncpg.Pool,
) -> None:
    forecaster = Forecaster(pool, cache_seconds=0)
    assert (await forecast(forecaster, "alice", FLASH, "plain", 400)).tokens == 100
    await add_history(pool, user="alice", model=FLASH, mode="plain", tokens=[6_000] * MIN_HISTORY)
    assert (await forecast(forecaster, "alice", FLASH, "plain", 400)).tokens == 6_000


async def test_a_negative_prompt_size_is_refused(pool: asyncpg.Pool) -> None:
    with pytest.raises(InvalidArgument, match="prompt_chars"):
        await forecast(Forecaster(pool), "alice", FLASH, "plain", -1)
    with pytest.raises(ValueError, match="cache_seconds"):
        Forecaster(pool, cache_seconds=-1)
    await add_tasks(pool, "t-1")
    async with pool.acquire() as conn:
        for chars in (-1, -2):
            with pytest.raises(InvalidArgument, match="prompt_chars"):
                await Forecaster(pool).log_prediction(
                    conn, task_id="t-1", fingerprint=KEY, user="alice", model=FLASH,
                    agent_mode="plain", prompt_chars=chars, forecast=Forecast(1, 1, "test"),
                )  # fmt: skip
        # An empty prompt is logged (the context the CLI is given may still cost tokens).
        await Forecaster(pool).log_prediction(
            conn, task_id="t-1", fingerprint=KEY, user="alice", model=FLASH,
            agent_mode="plain", prompt_chars=0, forecast=Forecast(1, 1, "test"),
        )  # fmt: skip
    assert await pool.fetchval("SELECT prompt_chars FROM token_prediction_log") == 0


async def test_an_empty_prompt_is_forecast_and_a_task_that_spent_nothing_is_logged(
    pool: asyncpg.Pool,
) -> None:
    forecaster = Forecaster(pool)
    empty = await forecast(forecaster, "alice", FLASH, "plain", 0)
    assert empty == Forecast(1, 1, "plain rule (no history)")
    await add_tasks(pool, "t-1")
    async with pool.acquire() as conn:
        await forecaster.log_prediction(
            conn, task_id="t-1", fingerprint=KEY, user="alice", model=FLASH,
            agent_mode="plain", prompt_chars=0, forecast=empty,
        )  # fmt: skip
        for field, tokens, requests in (("actual_tokens", -1, 0), ("actual_requests", 0, -1)):
            with pytest.raises(InvalidArgument, match=field):
                await forecaster.log_actual(
                    conn, task_id="t-1", actual_tokens=tokens, actual_requests=requests
                )
        # It ended before its first request (no key, say): it spent nothing, and says so.
        await forecaster.log_actual(conn, task_id="t-1", actual_tokens=0, actual_requests=0)
        row = await conn.fetchrow("SELECT actual_tokens, actual_requests FROM token_prediction_log")
    assert row is not None
    assert tuple(row) == (0, 0)


# ------------------------------------------------------------------ the log's rows

LOG_ROW = """
SELECT task_id, api_key, predicted_tokens, actual_tokens, delta, request_timestamp, username,
       model, agent_mode, prompt_chars, predicted_requests, actual_requests, completed_at
FROM token_prediction_log
"""


async def test_a_task_writes_one_row_with_the_seeds_columns(pool: asyncpg.Pool) -> None:
    await add_tasks(pool, "t-1")
    forecaster = Forecaster(pool)
    other_key = fingerprint("AIzaSy-another-key")
    async with pool.acquire() as conn:
        await forecaster.log_prediction(
            conn, task_id="t-1", fingerprint=KEY, user="alice", model=FLASH,
            agent_mode="agentic", prompt_chars=900, forecast=Forecast(2, 12_000, "test"),
        )  # fmt: skip
        # Another attempt: the prediction is replaced, not added.
        await forecaster.log_prediction(
            conn, task_id="t-1", fingerprint=KEY, user="alice", model=FLASH,
            agent_mode="agentic", prompt_chars=1_000, forecast=Forecast(3, 15_000, "test"),
        )  # fmt: skip
        pending = await conn.fetch(LOG_ROW)
        await forecaster.log_actual(
            conn, task_id="t-1", actual_tokens=14_200, actual_requests=4, fingerprint=other_key
        )
        rows = await conn.fetch(LOG_ROW)
    assert len(pending) == 1
    assert pending[0]["actual_tokens"] is None
    assert pending[0]["completed_at"] is None
    assert len(rows) == 1
    row = dict(rows[0])
    assert row.pop("request_timestamp") is not None
    assert row.pop("completed_at") is not None
    assert row == {
        "task_id": "t-1",
        "api_key": other_key,  # the key it ended on, by its fingerprint
        "predicted_tokens": 15_000,
        "actual_tokens": 14_200,
        "delta": 14_200 - 15_000,
        "username": "alice",
        "model": FLASH,
        "agent_mode": "agentic",
        "prompt_chars": 1_000,
        "predicted_requests": 3,
        "actual_requests": 4,
    }


async def test_a_new_prediction_clears_the_previous_attempts_actuals(pool: asyncpg.Pool) -> None:
    await add_tasks(pool, "t-1")
    forecaster = Forecaster(pool)
    async with pool.acquire() as conn:
        for prediction in (Forecast(1, 500, "test"), Forecast(1, 700, "test")):
            await forecaster.log_prediction(
                conn, task_id="t-1", fingerprint=KEY, user="", model=FLASH,
                agent_mode="plain", prompt_chars=10, forecast=prediction,
            )  # fmt: skip
            if prediction.tokens == 500:
                await forecaster.log_actual(
                    conn, task_id="t-1", actual_tokens=600, actual_requests=1
                )
        row = await conn.fetchrow(LOG_ROW)
    assert row is not None
    assert (row["predicted_tokens"], row["actual_tokens"], row["delta"]) == (700, None, None)
    assert row["api_key"] == KEY  # log_actual without a fingerprint keeps the key


async def test_only_a_fingerprint_is_written_never_a_secret(pool: asyncpg.Pool) -> None:
    await add_tasks(pool, "t-1")
    secret = "AIzaSyD-not-a-fingerprint-0123456789"
    forecaster = Forecaster(pool)
    async with pool.acquire() as conn:
        with pytest.raises(InvalidArgument, match="fingerprint") as refused:
            await forecaster.log_prediction(
                conn, task_id="t-1", fingerprint=secret, user="alice", model=FLASH,
                agent_mode="plain", prompt_chars=10, forecast=Forecast(1, 3, "test"),
            )  # fmt: skip
        assert secret not in str(refused.value)
        # No key yet ("" is allowed): the column stays empty.
        await forecaster.log_prediction(
            conn,
            task_id="t-1",
            fingerprint="",
            user="alice",
            model=FLASH,
            agent_mode="plain",
            prompt_chars=10,
            forecast=Forecast(1, 3, "test"),
        )
        with pytest.raises(InvalidArgument, match="fingerprint") as refused:
            await forecaster.log_actual(
                conn, task_id="t-1", actual_tokens=5, actual_requests=1, fingerprint=secret
            )
        assert secret not in str(refused.value)
        stored = await conn.fetch("SELECT api_key, actual_tokens FROM token_prediction_log")
    assert [tuple(row) for row in stored] == [(None, None)]


async def test_actuals_of_a_task_without_a_prediction_are_reported_not_stored(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    await add_tasks(pool, "t-1")
    async with pool.acquire() as conn:
        with caplog.at_level(logging.WARNING, logger="agentmesh.keys.forecast"):
            await Forecaster(pool).log_actual(
                conn, task_id="t-1", actual_tokens=5, actual_requests=1
            )
        assert await conn.fetchval("SELECT count(*) FROM token_prediction_log") == 0
        with pytest.raises(InvalidArgument, match="actual_tokens"):
            await Forecaster(pool).log_actual(
                conn, task_id="t-1", actual_tokens=-5, actual_requests=1
            )
    assert [getattr(r, "task_id", None) for r in caplog.records] == ["t-1"]


# ------------------------------------------------------------------ token limits


async def test_the_migration_keeps_the_newest_row_of_a_task_logged_twice(
    empty_database_uri: str,
) -> None:
    conn = await asyncpg.connect(empty_database_uri)
    try:
        await conn.execute(CREATE_MIGRATIONS_TABLE)
        for migration in (m for m in load_migrations() if m.version < 8):
            await conn.execute(migration.sql)
            await conn.execute(
                INSERT_APPLIED, migration.version, migration.name, migration.checksum
            )
        await conn.execute(
            """
            INSERT INTO tasks (id, kind, spec, root_id) VALUES ('t1', 'gemini', '{}', 't1'),
                                                               ('t2', 'gemini', '{}', 't2');
            INSERT INTO token_prediction_log (task_id, predicted_tokens) VALUES
                ('t1', 100), ('t2', 200), ('t1', 300), (NULL, 400), (NULL, 500);
            """
        )
        applied = await migrate(conn)
        rows = await conn.fetch(
            "SELECT task_id, predicted_tokens FROM token_prediction_log ORDER BY id"
        )
    finally:
        await conn.close()
    assert applied[0].version == 8
    assert [tuple(row) for row in rows] == [("t2", 200), ("t1", 300), (None, 400), (None, 500)]
