"""`agentmesh tokens report`: how well gemini tasks' tokens were forecast, beside the plain
4-characters-a-token rule on the same tasks."""

from __future__ import annotations

from typing import Any

import click

from agentmesh.cli.app import App, json_option, output_for, pass_app
from agentmesh.cli.client import CALL_TIMEOUT, EXIT_OK, key_pool_stub
from agentmesh.cli.output import Cell, Output
from agentmesh.v1 import keys_pb2

HEADERS = ["", "NAME", "TASKS", "MDAPE", "PLAIN RULE", "PREDICTED", "ACTUAL"]


@click.group()
def tokens() -> None:
    """Token forecasts: how good they are."""


@tokens.command()
@click.option(
    "--days",
    type=click.IntRange(1, 3650),
    default=30,
    show_default=True,
    help="only tasks of the last this many days",
)
@json_option
@pass_app
def report(app: App, days: int, as_json: bool) -> int:
    """Median absolute percentage error of the token forecasts: overall, by key, by user and
    by model, beside what the plain rule (4 characters a token) scores on the same tasks."""

    async def command() -> int:
        async with key_pool_stub(app.settings(), app.scheduler_address()) as stub:
            reply = await stub.TokenReport(
                keys_pb2.TokenReportRequest(days=days), timeout=CALL_TIMEOUT
            )
        show_report(output_for(as_json), reply, days)
        return EXIT_OK

    return app.run(command)


def show_report(output: Output, reply: keys_pb2.TokenReportResponse, days: int) -> None:
    """The report as a table (a row overall, then per key, user and model), or as JSON."""
    if output.json:
        output.data(report_json(reply, days))
        return
    if not reply.overall.tasks:
        output.note(f"no finished gemini task spent tokens in the last {days} days")
        return
    rows: list[list[Cell]] = [_row("overall", reply.overall)]
    for what, errors in (("key", reply.by_key), ("user", reply.by_user), ("model", reply.by_model)):
        rows += [_row(what, error) for error in errors]
    output.table(HEADERS, rows)


def report_json(reply: keys_pb2.TokenReportResponse, days: int) -> dict[str, Any]:
    """Fields: days; overall, by_key, by_user, by_model, each (a list of) {name, tasks, mdape,
    plain_mdape, predicted_tokens, actual_tokens}, the percentages in percent."""
    return {
        "days": days,
        "overall": _error_json(reply.overall),
        "by_key": [_error_json(error) for error in reply.by_key],
        "by_user": [_error_json(error) for error in reply.by_user],
        "by_model": [_error_json(error) for error in reply.by_model],
    }


def _error_json(error: keys_pb2.ForecastError) -> dict[str, Any]:
    return {
        "name": error.name,
        "tasks": error.tasks,
        "mdape": error.mdape,
        "plain_mdape": error.plain_mdape,
        "predicted_tokens": error.predicted_tokens,
        "actual_tokens": error.actual_tokens,
    }


def _row(what: str, error: keys_pb2.ForecastError) -> list[Cell]:
    return [
        what,
        error.name or "-",
        str(error.tasks),
        f"{error.mdape:.1f}%",
        f"{error.plain_mdape:.1f}%",
        f"{error.predicted_tokens:,}",
        f"{error.actual_tokens:,}",
    ]
