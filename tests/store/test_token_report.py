"""`token_report` on a small set computed by hand, and `agentmesh tokens report`'s rendering
of it."""

from __future__ import annotations

import json

import asyncpg
import pytest

from agentmesh.cli.output import Output
from agentmesh.cli.tokens import show_report
from agentmesh.errors import InvalidArgument
from agentmesh.keys.forecast import token_report
from agentmesh.keys.pool import fingerprint
from agentmesh.v1 import keys_pb2

FREE = fingerprint("AIzaSy-free-key")
PAID = fingerprint("AIzaSy-paid-key")
GONE = fingerprint("AIzaSy-removed-key")  # no api_keys row: shown by its fingerprint
FLASH = "gemini-2.5-flash"
PRO = "gemini-2.5-pro"

# key, user, model, prompt chars, predicted, actual, days ago.
# APE = |predicted - actual| / actual; the plain rule is ceil(chars / 4).
ROWS = [
    (FREE, "alice", FLASH, 400, 1_100, 1_000, 0),  # APE 10, plain 100: 90
    (FREE, "alice", PRO, 400, 1_600, 2_000, 0),  # APE 20, plain 100: 95
    (PAID, "bob", FLASH, 2_000, 700, 1_000, 0),  # APE 30, plain 500: 50
    (GONE, "bob", FLASH, 41, 600, 500, 0),  # APE 20, plain 11: 97.8
    (FREE, "alice", FLASH, 4_000, 500, 1_000, 0),  # APE 50, plain 1,000: 0
    (PAID, "carol", PRO, 400, 100, 200, 40),  # 40 days ago: APE 50, plain 100: 50
]


async def fill(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO api_keys (name, fingerprint, source) VALUES ($1, $2, 'cli')",
            [("free-1", FREE), ("paid", PAID)],
        )
        await conn.executemany(
            """
            INSERT INTO token_prediction_log (api_key, username, model, agent_mode, prompt_chars,
                predicted_tokens, actual_tokens, actual_requests, request_timestamp)
            VALUES ($1, $2, $3, 'agentic', $4, $5, $6, 1,
                    now() AT TIME ZONE 'UTC' - make_interval(days => $7))
            """,
            ROWS,
        )
        # Neither counts: one is still running, one spent nothing (no API request was made).
        await conn.execute(
            """
            INSERT INTO token_prediction_log (api_key, username, model, prompt_chars,
                                              predicted_tokens, actual_tokens)
            VALUES ($1, 'alice', $2, 400, 900, NULL), ($1, 'alice', $2, 400, 900, 0)
            """,
            FREE,
            FLASH,
        )


def figures(error: keys_pb2.ForecastError) -> tuple[object, ...]:
    return (
        error.name,
        error.tasks,
        pytest.approx(error.mdape),
        pytest.approx(error.plain_mdape),
        error.predicted_tokens,
        error.actual_tokens,
    )


async def test_median_errors_overall_by_key_user_and_model(pool: asyncpg.Pool) -> None:
    await fill(pool)
    async with pool.acquire() as conn:
        report = await token_report(conn, days=30)
    assert figures(report.overall) == ("", 5, 20.0, 90.0, 4_500, 5_500)
    assert [figures(e) for e in report.by_key] == [
        ("free-1", 3, 20.0, 90.0, 3_200, 4_000),
        ("paid", 1, 30.0, 50.0, 700, 1_000),
        (GONE, 1, 20.0, 97.8, 600, 500),
    ]
    assert [figures(e) for e in report.by_user] == [
        ("alice", 3, 20.0, 90.0, 3_200, 4_000),
        ("bob", 2, 25.0, 73.9, 1_300, 1_500),  # even counts: the mean of the middle two
    ]
    assert [figures(e) for e in report.by_model] == [
        (FLASH, 4, 25.0, 70.0, 2_900, 3_500),
        (PRO, 1, 20.0, 95.0, 1_600, 2_000),
    ]


async def test_the_period_is_chosen_in_days(pool: asyncpg.Pool) -> None:
    await fill(pool)
    async with pool.acquire() as conn:
        longer = await token_report(conn, days=60)
        with pytest.raises(InvalidArgument, match="days"):
            await token_report(conn, days=-1)
        # Either side of 30 days ago (the default period).
        await conn.execute(
            """
            INSERT INTO token_prediction_log (username, model, prompt_chars, predicted_tokens,
                                              actual_tokens, request_timestamp)
            VALUES ('dan', $1, 4, 1, 1, now() AT TIME ZONE 'UTC' - interval '29 days 23 hours'),
                   ('dan', $1, 4, 1, 1, now() AT TIME ZONE 'UTC' - interval '30 days 1 hour')
            """,
            FLASH,
        )
        default = await token_report(conn, days=0)
    assert figures(longer.overall) == ("", 6, 25.0, 70.0, 4_600, 5_700)
    assert [e.name for e in longer.by_user] == ["alice", "bob", "carol"]
    assert default.overall.tasks == 6
    assert default == await _report(pool, 30)


async def _report(pool: asyncpg.Pool, days: int) -> keys_pb2.TokenReportResponse:
    async with pool.acquire() as conn:
        return await token_report(conn, days)


async def test_no_finished_tasks_make_an_empty_report(pool: asyncpg.Pool) -> None:
    report = await _report(pool, 30)
    assert figures(report.overall) == ("", 0, 0.0, 0.0, 0, 0)
    assert (list(report.by_key), list(report.by_user), list(report.by_model)) == ([], [], [])


async def test_the_command_line_shows_the_report_as_a_table(
    pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    await fill(pool)
    show_report(Output(), await _report(pool, 30), days=30)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "TASKS", "MDAPE", "PLAIN", "RULE", "PREDICTED", "ACTUAL"]
    assert [line.split() for line in lines[1:]] == [
        ["overall", "-", "5", "20.0%", "90.0%", "4,500", "5,500"],
        ["key", "free-1", "3", "20.0%", "90.0%", "3,200", "4,000"],
        ["key", "paid", "1", "30.0%", "50.0%", "700", "1,000"],
        ["key", GONE, "1", "20.0%", "97.8%", "600", "500"],
        ["user", "alice", "3", "20.0%", "90.0%", "3,200", "4,000"],
        ["user", "bob", "2", "25.0%", "73.9%", "1,300", "1,500"],
        ["model", FLASH, "4", "25.0%", "70.0%", "2,900", "3,500"],
        ["model", PRO, "1", "20.0%", "95.0%", "1,600", "2,000"],
    ]


async def test_the_command_line_prints_the_report_as_json(
    pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    await fill(pool)
    show_report(Output(json=True), await _report(pool, 30), days=30)
    printed = json.loads(capsys.readouterr().out)
    assert printed["days"] == 30
    assert printed["overall"] == {
        "name": "",
        "tasks": 5,
        "mdape": 20.0,
        "plain_mdape": 90.0,
        "predicted_tokens": 4_500,
        "actual_tokens": 5_500,
    }
    assert [e["name"] for e in printed["by_key"]] == ["free-1", "paid", GONE]
    assert printed["by_user"][1]["mdape"] == 25.0
    assert [e["name"] for e in printed["by_model"]] == [FLASH, PRO]
