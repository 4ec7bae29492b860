"""Which failures of the Gemini CLI are API errors the mesh acts on, and which are not.

A 429 in any wording cools its key down for the delay it gives (a daily quota: until midnight
Pacific); a refused key is disabled; anything else must not touch the keys. The texts are
what the CLI prints: its `result` error message, then its stderr.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from agentmesh.node.executors.gemini_errors import (
    GoogleError,
    classify_api_error,
    cooldown_seconds,
    parse_error_body,
    seconds_until_daily_reset,
)
from agentmesh.tasks.events import ApiError, ApiErrorKind
from tests.support.gemini_emulator import invalid_api_key, quota_exhausted

# 12:00 in Los Angeles (PST, UTC-8): twelve hours before the daily reset.
NOON_PACIFIC = datetime(2025, 1, 15, 20, 0, tzinfo=UTC)
HOURS = 3600.0


def quota(text: str, now: datetime = NOON_PACIFIC) -> ApiError:
    error = classify_api_error(text, now)
    assert error is not None, f"not recognised: {text!r}"
    assert error.kind is ApiErrorKind.QUOTA_EXHAUSTED, error
    assert error.http_status == 429
    return error


def google_body(per: str, retry_seconds: int = 26) -> str:
    reply = quota_exhausted(per, retry_seconds=retry_seconds)  # type: ignore[arg-type]
    return json.dumps(reply.body)


# ----------------------------------------------------------------------------- 429s


def test_google_json_body_per_minute() -> None:
    error = quota(google_body("minute", retry_seconds=26))

    assert error.quota_scope == "per_minute"
    assert error.retry_delay_seconds == 26
    assert error.quota_id == "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
    assert error.message == (
        "per-minute quota exhausted (HTTP 429 RESOURCE_EXHAUSTED)"
        " for GenerateRequestsPerMinutePerProjectPerModel-FreeTier: retry in 26s"
    )


def test_google_json_body_pretty_printed_as_the_cli_logs_it() -> None:
    body = json.dumps(quota_exhausted("minute", retry_seconds=41).body, indent=2)

    error = quota(f"[API Error: status: 429]\n{body}")

    assert error.retry_delay_seconds == 41
    assert error.quota_scope == "per_minute"


def test_the_cli_result_message_alone() -> None:
    """The `result` event's error is the API's message, ending "Please retry in 26s."."""
    error = quota(quota_exhausted("minute", retry_seconds=26).message)

    assert error.retry_delay_seconds == 26
    assert error.quota_scope == "per_minute"


def test_the_short_wording_please_retry_in() -> None:
    error = quota("You exceeded your current quota. Please retry in 26s.")

    assert error.retry_delay_seconds == 26
    assert error.quota_scope == "per_minute"


def test_please_retry_in_fractional_seconds() -> None:
    assert quota("Quota exceeded. Please retry in 12.5s.").retry_delay_seconds == 12.5


def test_please_retry_in_milliseconds() -> None:
    assert quota("Quota exceeded. please retry in 750ms").retry_delay_seconds == 0.75


def test_cli_stderr_with_status_and_retry_delay_ms() -> None:
    stderr = "Attempt 1 failed with status 429. Retrying with backoff... retryDelayMs: 26000"

    error = quota(stderr)

    assert error.retry_delay_seconds == 26
    assert error.quota_scope == ""


def test_retry_delay_ms_as_json() -> None:
    assert quota('{"status": 429, "retryDelayMs": 1500}').retry_delay_seconds == 1.5


def test_retry_info_wins_over_the_message() -> None:
    text = 'status 429: Please retry in 3s. {"retryDelay": "40s"}'

    assert quota(text).retry_delay_seconds == 40


def test_a_proxy_bare_429_too_many_requests() -> None:
    error = quota("429 Too Many Requests")

    assert error.retry_delay_seconds == 0
    assert error.quota_scope == ""
    assert error.message == "quota exhausted (HTTP 429 RESOURCE_EXHAUSTED)"


def test_http_status_429_from_a_gateway_page() -> None:
    quota("<html><head><title>429 Too Many Requests</title></head></html>")


def test_resource_exhausted_without_details() -> None:
    error = quota('{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "x"}}')

    assert error.quota_id == ""
    assert error.retry_delay_seconds == 0


@pytest.mark.parametrize(
    "text",
    [
        "Quota exceeded for quota metric 'Generate Content API requests per minute'",
        "You have exhausted your capacity on this model.",
        "Rate limit reached for requests",
        "resource_exhausted",
    ],
)
def test_other_quota_wordings(text: str) -> None:
    quota(text)


# ----------------------------------------------------------------------------- daily quotas


def test_per_day_quota_lasts_until_midnight_pacific_whatever_the_retry_delay() -> None:
    error = quota(google_body("day", retry_seconds=26))

    assert error.quota_scope == "per_day"
    assert error.quota_id == "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
    assert error.retry_delay_seconds == 12 * HOURS
    assert error.message.startswith("daily quota exhausted (HTTP 429 RESOURCE_EXHAUSTED)")
    assert error.message.endswith(": retry in 43200s")


def test_the_cli_daily_wording() -> None:
    error = quota("You have exhausted your daily quota on this model.")

    assert error.quota_scope == "per_day"
    assert error.retry_delay_seconds == 12 * HOURS


def test_a_daily_retry_delay_longer_than_the_time_to_midnight_is_kept() -> None:
    late = datetime(2025, 1, 16, 7, 30, tzinfo=UTC)  # 23:30 in Los Angeles
    error = quota(google_body("day", retry_seconds=3600), now=late)

    assert error.retry_delay_seconds == 3600


@pytest.mark.parametrize(
    ("now", "hours"),
    [
        (datetime(2025, 1, 15, 20, 0, tzinfo=UTC), 12),  # noon PST
        (datetime(2025, 7, 15, 19, 0, tzinfo=UTC), 12),  # noon PDT
        (datetime(2025, 1, 16, 7, 59, tzinfo=UTC), 1 / 60),  # 23:59 PST
        (datetime(2025, 1, 16, 8, 0, tzinfo=UTC), 24),  # midnight PST: the next one
    ],
)
def test_seconds_until_daily_reset(now: datetime, hours: float) -> None:
    assert seconds_until_daily_reset(now) == pytest.approx(hours * HOURS)


@pytest.mark.parametrize(
    ("now", "hours"),
    [
        (datetime(2025, 3, 9, 8, 0, tzinfo=UTC), 23),  # 00:00 PST, clocks spring forward
        (datetime(2025, 11, 2, 7, 0, tzinfo=UTC), 25),  # 00:00 PDT, clocks fall back
    ],
)
def test_seconds_until_daily_reset_on_the_days_clocks_change(now: datetime, hours: int) -> None:
    assert seconds_until_daily_reset(now) == hours * HOURS


# ----------------------------------------------------------------------------- invalid keys


@pytest.mark.parametrize(
    ("text", "status"),
    [
        (json.dumps(invalid_api_key().body), 400),
        ("API key not valid. Please pass a valid API key.", 400),
        ('{"reason": "API_KEY_INVALID"}', 400),
        ("API key expired. Please renew the API key.", 400),
        ("Invalid API key provided", 400),
        ('{"code": 403, "status": "PERMISSION_DENIED", "message": "API key was revoked"}', 403),
    ],
)
def test_invalid_keys(text: str, status: int) -> None:
    error = classify_api_error(text, NOON_PACIFIC)

    assert error is not None
    assert error.kind is ApiErrorKind.INVALID_API_KEY
    assert error.http_status == status
    assert error.message == "the API key was refused: API key not valid"
    assert error.retry_delay_seconds == 0


def test_a_refused_key_wins_over_a_quota_word() -> None:
    error = classify_api_error("API key not valid (status 429 seen earlier)", NOON_PACIFIC)

    assert error is not None
    assert error.kind is ApiErrorKind.INVALID_API_KEY


# ----------------------------------------------------------------------------- not API errors


@pytest.mark.parametrize(
    "text",
    [
        "",
        '{"error": {"code": 500, "status": "INTERNAL", "message": "An internal error"}}',
        "503 Service Unavailable",
        '{"code": 403, "status": "PERMISSION_DENIED", "message": "caller lacks permission"}',
        "The exchange rate moved 2% today; an accurate, moderate estimate follows.",
        "Rates are computed per minute",
        "gemini CLI failed (turn limit reached)",
        "listening on port 4290 with 14290 connections",
        "Error executing tool read_file: File not found: quota.txt",
        "Error: key not found in config",
    ],
)
def test_other_failures_are_not_api_errors(text: str) -> None:
    assert classify_api_error(text, NOON_PACIFIC) is None


def test_a_stack_trace_line_429_is_not_a_quota_error() -> None:
    stderr = (
        "TypeError: Cannot read properties of undefined (reading 'parts')\n"
        "    at Turn.run (/app/node_modules/@google/gemini-cli-core/dist/turn.js:429:31)"
    )

    assert classify_api_error(stderr, NOON_PACIFIC) is None


# ------------------------------------------------------------ the API's JSON error bodies


def test_a_429_body_gives_its_delay_and_quota_id() -> None:
    error = parse_error_body(429, google_body("minute", retry_seconds=26).encode())

    assert error.status == "RESOURCE_EXHAUSTED"
    assert error.retry_delay_seconds == 26
    assert error.quota_id == "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
    assert not error.daily
    assert not error.refused_key
    assert cooldown_seconds(error, NOON_PACIFIC) == 26


def test_a_daily_429_cools_until_midnight_pacific() -> None:
    error = parse_error_body(429, google_body("day", retry_seconds=26).encode())

    assert error.daily
    assert cooldown_seconds(error, NOON_PACIFIC) == 12 * HOURS


def test_a_delay_over_five_minutes_counts_as_daily() -> None:
    error = parse_error_body(429, google_body("minute", retry_seconds=301).encode())

    assert error.daily


def test_a_429_without_details_still_cools_its_key() -> None:
    error = parse_error_body(429, b'{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}')

    assert cooldown_seconds(error, NOON_PACIFIC) == 60.0


def test_a_429_that_is_not_google_s_json_still_cools_its_key_a_minute() -> None:
    error = parse_error_body(429, b"<html>429 Too Many Requests</html>")  # a proxy's page

    assert cooldown_seconds(error, NOON_PACIFIC) == 60.0


def test_a_delay_of_five_minutes_is_still_per_minute() -> None:
    error = parse_error_body(429, google_body("minute", retry_seconds=300).encode())

    assert not error.daily
    assert cooldown_seconds(error, NOON_PACIFIC) == 300


def body(*details: object, status: str = "RESOURCE_EXHAUSTED", message: str = "") -> bytes:
    return json.dumps(
        {"error": {"code": 429, "status": status, "message": message, "details": list(details)}}
    ).encode()


RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def test_each_field_comes_from_its_own_detail_type_whatever_else_the_body_holds() -> None:
    # What the body's other details carry under the same names is not Google's word on it.
    decoys = [
        {"@type": kind, "reason": "API_KEY_INVALID", "retryDelay": "999s",
         "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel"}]}
        for kind in ("type.googleapis.com/google.rpc.BadRequest",
                     "type.googleapis.com/google.rpc.Help",
                     "type.googleapis.com/google.rpc.context.AttributeContext")
    ]  # fmt: skip
    error = parse_error_body(
        429,
        body(
            "not a detail",
            *decoys,
            {"@type": QUOTA_FAILURE, "violations": [{"quotaId": "first"}, {"quotaId": "second"}]},
            {"@type": QUOTA_FAILURE, "violations": [{"quotaId": "later"}]},
            {"@type": RETRY_INFO, "retryDelay": "12s"},
            {"@type": ERROR_INFO, "reason": "RATE_LIMIT_EXCEEDED"},
            {"@type": ERROR_INFO, "reason": "later"},
            *decoys,
        ),
    )

    assert (error.reason, error.retry_delay_seconds, error.quota_id) == (
        "RATE_LIMIT_EXCEEDED",
        12,
        "first",
    )
    assert not error.daily
    assert not error.refused_key


@pytest.mark.parametrize(
    "violations",
    [[], ["GenerateRequestsPerDay", {"quotaId": "PerDay"}], {"quotaId": "PerDay"}, None],
)
def test_a_quota_failure_without_a_violation_names_no_quota(violations: object) -> None:
    error = parse_error_body(429, body({"@type": QUOTA_FAILURE, "violations": violations}))

    assert error.quota_id == ""
    assert not error.daily


@pytest.mark.parametrize(
    ("status", "reason", "message", "refused"),
    [
        (400, "API_KEY_EXPIRED", "", True),
        (400, "", "API key expired. Please renew the API key.", True),
        (400, "", "Request contains an invalid argument.", False),
        (500, "API_KEY_SERVICE_BLOCKED", "API key not valid", False),
        (0, "API_KEY_INVALID", "API key not valid", False),
    ],
)
def test_a_400_refuses_the_key_by_its_reason_or_its_message_alone(
    status: int, reason: str, message: str, refused: bool
) -> None:
    # A 500 or a request that got no answer says nothing about the key, whatever it says.
    details = [{"@type": ERROR_INFO, "reason": reason}] if reason else []
    error = parse_error_body(status, body(*details, status="INVALID_ARGUMENT", message=message))

    assert error.refused_key is refused


def test_an_invalid_key_body_is_a_refused_key() -> None:
    error = parse_error_body(400, json.dumps(invalid_api_key().body).encode())

    assert error.reason == "API_KEY_INVALID"
    assert error.refused_key


@pytest.mark.parametrize("status", [401, 403])
def test_unauthenticated_and_forbidden_are_refused_keys(status: int) -> None:
    assert parse_error_body(status, b"<html>no</html>").refused_key


@pytest.mark.parametrize("status", [400, 500, 503])
def test_other_errors_do_not_touch_the_key(status: int) -> None:
    body = b'{"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "bad request"}}'

    assert not parse_error_body(status, body).refused_key


def test_a_body_that_is_not_json_gives_the_status_only() -> None:
    assert parse_error_body(502, b"Bad Gateway") == GoogleError(502)
