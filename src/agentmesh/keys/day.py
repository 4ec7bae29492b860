"""The quota day: Google resets daily quotas at midnight Pacific time, so `api_key_usage.day`
is the date in America/Los_Angeles, computed by PostgreSQL (one clock for every replica)."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

QUOTA_ZONE = "America/Los_Angeles"
# Today's quota day, as a SQL expression: every query that reads or writes today's usage
# uses this one, so that no two replicas (or two modules) disagree about when a day ends.
PACIFIC_TODAY_SQL = f"(now() AT TIME ZONE '{QUOTA_ZONE}')::date"


def quota_day(moment: datetime) -> date:
    """The quota day a moment (with its time zone) falls on."""
    return moment.astimezone(ZoneInfo(QUOTA_ZONE)).date()
