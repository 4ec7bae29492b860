"""Recognising the Gemini API's errors in what the Gemini CLI prints.

The CLI reports an API failure as text: the `result` event's error message ("... Please
retry in 26s."), and on stderr the HTTP status, `retryDelayMs` and often the whole error body
with its `QuotaFailure` and `RetryInfo` details. A quota whose id contains `PerDay` lasts
until the daily reset, whatever the retry delay says. The node's Gemini API proxy reads the
same errors from the API's JSON bodies (`parse_error_body`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from agentmesh.tasks.events import ApiError, ApiErrorKind

PACIFIC = ZoneInfo("America/Los_Angeles")
# A 429 standing alone (`status 429`, `429 Too Many Requests`, `"code": 429`), not a line
# number in a stack trace (`turn.js:429:31`).
_QUOTA = re.compile(
    r"(?<![\w.:/])429(?!\w|:\d)|\"code\"\s*:\s*429\b|RESOURCE_EXHAUSTED|quota exceeded"
    r"|exceeded your current quota|exhausted your|rate limit",
    re.I,
)
# The CLI replaces Google's message for daily quotas with its own words.
_DAILY = re.compile(r"exhausted your daily quota|PerDay", re.I)
_INVALID_KEY = re.compile(
    r"API_KEY_INVALID|API key not valid|API key expired|invalid api key|PERMISSION_DENIED.*key",
    re.I,
)
_RETRY_IN = re.compile(r"[Pp]lease retry in ([0-9.]+)\s*(ms|s)\b")
_RETRY_DELAY = re.compile(r"retryDelay\"?\s*[:=]\s*\"?([0-9.]+)s")
_RETRY_DELAY_MS = re.compile(r"retryDelayMs\"?\s*[:=]\s*([0-9.]+)")
_QUOTA_ID = re.compile(r"quotaId\"?\s*[:=]\s*\"?([A-Za-z0-9_-]+)")
_HTTP_STATUS = re.compile(r"(?:status|code)\"?\s*[:=]\s*\"?(4\d\d|5\d\d)\b")


def seconds_until_daily_reset(now: datetime) -> float:
    """Seconds from `now` to the next midnight in America/Los_Angeles."""
    local = now.astimezone(PACIFIC)
    midnight = datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=PACIFIC)
    # In UTC: within one zone, datetime subtraction ignores a DST change between the two.
    return (midnight.astimezone(UTC) - now.astimezone(UTC)).total_seconds()


def classify_api_error(text: str, now: datetime | None = None) -> ApiError | None:
    """An ApiError if `text` (the CLI's error message and stderr) shows a Gemini API error."""
    if _INVALID_KEY.search(text):
        return ApiError(
            kind=ApiErrorKind.INVALID_API_KEY,
            message="the API key was refused: API key not valid",
            http_status=_http_status(text) or 400,
        )
    if not _QUOTA.search(text):
        return None
    now = now or datetime.now(UTC)
    quota_id = _first(_QUOTA_ID, text)
    delay = _retry_delay(text)
    if _DAILY.search(text):
        scope = "per_day"
        # A daily quota comes back at midnight Pacific time, whatever the retry delay says.
        delay = max(delay, seconds_until_daily_reset(now))
    elif "PerMinute" in quota_id or _RETRY_IN.search(text):
        scope = "per_minute"
    else:
        scope = ""
    described = {"per_day": "daily quota", "per_minute": "per-minute quota"}.get(scope, "quota")
    message = f"{described} exhausted (HTTP 429 RESOURCE_EXHAUSTED)"
    if quota_id:
        message += f" for {quota_id}"
    if delay:
        message += f": retry in {delay:.0f}s"
    return ApiError(
        kind=ApiErrorKind.QUOTA_EXHAUSTED,
        message=message,
        retry_delay_seconds=delay,
        quota_scope=scope,
        quota_id=quota_id,
        http_status=429,
    )


def _retry_delay(text: str) -> float:
    if match := _RETRY_DELAY.search(text):
        return float(match[1])
    if match := _RETRY_DELAY_MS.search(text):
        return float(match[1]) / 1000
    if match := _RETRY_IN.search(text):
        value = float(match[1])
        return value / 1000 if match[2] == "ms" else value
    return 0.0


def _http_status(text: str) -> int:
    match = _HTTP_STATUS.search(text)
    return int(match[1]) if match else 0


def _first(pattern: re.Pattern[str], text: str) -> str:
    match = pattern.search(text)
    return match[1] if match else ""


# --------------------------------------------------------------- the API's error bodies

# A 429 without a RetryInfo delay still cools its key: for this long.
DEFAULT_COOLDOWN_SECONDS = 60.0
# Gemini CLI treats a longer delay as terminal; so does the pool: the key is done for the day.
LONGEST_MINUTE_DELAY_SECONDS = 300.0
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)s\s*$")


@dataclass(frozen=True)
class GoogleError:
    """What an error response of the Gemini API says (`{"error": {...}}`)."""

    http_status: int
    status: str = ""  # RESOURCE_EXHAUSTED, INVALID_ARGUMENT, ...
    message: str = ""
    # ErrorInfo's reason, e.g. API_KEY_INVALID.
    reason: str = ""
    # RetryInfo's delay and the first QuotaFailure violation's quota id.
    retry_delay_seconds: float = 0.0
    quota_id: str = ""

    @property
    def refused_key(self) -> bool:
        """The key itself was refused (invalid, expired, revoked, not allowed)."""
        if self.http_status in (401, 403):
            return True
        return self.http_status == 400 and (
            self.reason.startswith("API_KEY_") or bool(_INVALID_KEY.search(self.message))
        )

    @property
    def daily(self) -> bool:
        """A per-day quota: the key is done for the model until the daily reset."""
        return "PerDay" in self.quota_id or self.retry_delay_seconds > LONGEST_MINUTE_DELAY_SECONDS


def parse_error_body(http_status: int, body: bytes) -> GoogleError:
    """The error an API response carries; a body that is not Google's JSON gives the status."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return GoogleError(http_status)
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return GoogleError(http_status)
    reason, delay, quota_id = "", 0.0, ""
    details = error.get("details")
    for detail in details if isinstance(details, list) else ():
        if not isinstance(detail, dict):
            continue
        kind = detail.get("@type")
        if kind == _ERROR_INFO and not reason:
            reason = str(detail.get("reason", ""))
        elif kind == _RETRY_INFO and (match := _DURATION.match(str(detail.get("retryDelay")))):
            delay = float(match[1])
        elif kind == _QUOTA_FAILURE and not quota_id:
            violations = detail.get("violations")
            if isinstance(violations, list) and violations and isinstance(violations[0], dict):
                quota_id = str(violations[0].get("quotaId", ""))
    return GoogleError(
        http_status=http_status,
        status=str(error.get("status", "")),
        message=str(error.get("message", "")),
        reason=reason,
        retry_delay_seconds=delay,
        quota_id=quota_id,
    )


def cooldown_seconds(error: GoogleError, now: datetime | None = None) -> float:
    """How long a 429 keeps its key off the model: RetryInfo's delay, or until the daily
    reset (midnight Pacific) for a per-day quota."""
    delay = error.retry_delay_seconds or DEFAULT_COOLDOWN_SECONDS
    if error.daily:
        return max(delay, seconds_until_daily_reset(now or datetime.now(UTC)))
    return delay
