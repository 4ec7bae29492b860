"""The plain rule, the rejection reason, and `agentmesh tokens report`'s arguments: no database."""

from __future__ import annotations

import pytest

from agentmesh.cli.main import main
from agentmesh.cli.output import Output
from agentmesh.cli.tokens import show_report
from agentmesh.keys.forecast import Forecast, over_limit_reason, plain_rule
from agentmesh.v1 import keys_pb2

LEARNED = Forecast(requests=3, tokens=12_400, basis="learned from 37 agentic tasks of alice")


@pytest.mark.parametrize(
    ("chars", "tokens"), [(0, 1), (1, 1), (4, 1), (5, 2), (400, 100), (401, 101), (10**6, 250_000)]
)
def test_plain_rule_is_four_characters_a_token_rounded_up(chars: int, tokens: int) -> None:
    assert plain_rule(chars) == tokens


def test_a_forecast_over_the_users_limit_names_both_figures() -> None:
    reason = over_limit_reason(LEARNED, 10_000, user="alice")
    assert reason is not None
    assert reason.startswith(
        "forecast 12,400 tokens exceeds alice's max_token_per_request of 10,000"
    )
    assert "learned from 37 agentic tasks of alice" in reason  # what the figure rests on


def test_a_limit_from_the_task_itself_is_named_as_its_max_tokens() -> None:
    reason = over_limit_reason(LEARNED, 5_000, user="alice", spec_max_tokens=5_000)
    assert reason is not None
    assert reason.startswith("forecast 12,400 tokens exceeds the task's max_tokens of 5,000")


def test_a_smaller_limit_of_the_user_is_named_as_the_users() -> None:
    reason = over_limit_reason(LEARNED, 10_000, user="alice", spec_max_tokens=20_000)
    assert reason is not None
    assert reason.startswith("forecast 12,400 tokens exceeds alice's max_token_per_request of")
    unnamed = over_limit_reason(LEARNED, 10_000)
    assert unnamed is not None
    assert unnamed.startswith("forecast 12,400 tokens exceeds the user's max_token_per_request")


def test_a_limit_is_the_tasks_own_only_when_it_is_that_figure() -> None:
    tiny = Forecast(requests=1, tokens=2, basis="plain rule (no history)")
    users = over_limit_reason(tiny, 1, user="alice")  # no max_tokens of its own
    assert users is not None
    assert users.startswith("forecast 2 tokens exceeds alice's max_token_per_request of 1")
    above = over_limit_reason(LEARNED, 11_000, user="alice", spec_max_tokens=5_000)
    assert above is not None
    assert above.startswith("forecast 12,400 tokens exceeds alice's max_token_per_request")


@pytest.mark.parametrize("limit", [None, 12_400, 50_000])
def test_a_forecast_within_the_limit_is_not_refused(limit: int | None) -> None:
    assert over_limit_reason(LEARNED, limit, user="alice") is None


def test_an_empty_report_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    show_report(Output(), keys_pb2.TokenReportResponse(), days=7)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no finished gemini task spent tokens in the last 7 days" in captured.err


@pytest.mark.parametrize("days", ["0", "-3", "many"])
def test_tokens_report_refuses_a_wrong_days(days: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Refused before any connection is made: no scheduler runs here.
    assert main(["--scheduler", "127.0.0.1:1", "tokens", "report", "--days", days]) == 2
    assert "--days" in capsys.readouterr().err


@pytest.mark.parametrize(("requests", "tokens"), [(0, 10), (1, 0), (0, 0), (-1, -1)])
def test_a_forecast_is_at_least_one_request_and_one_token(requests: int, tokens: int) -> None:
    with pytest.raises(ValueError, match="at least 1 request and 1 token"):
        Forecast(requests=requests, tokens=tokens, basis="test")
    assert Forecast(requests=1, tokens=1, basis="test").tokens == 1
