"""The quota day ends at midnight Pacific time, in winter (UTC-8) and in summer (UTC-7)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from agentmesh.keys.day import quota_day


@pytest.mark.parametrize(
    ("moment", "day"),
    [
        (datetime(2025, 1, 1, 7, 59, 59, tzinfo=UTC), date(2024, 12, 31)),
        (datetime(2025, 1, 1, 8, 0, tzinfo=UTC), date(2025, 1, 1)),
        (datetime(2025, 7, 1, 6, 59, 59, tzinfo=UTC), date(2025, 6, 30)),
        (datetime(2025, 7, 1, 7, 0, tzinfo=UTC), date(2025, 7, 1)),
    ],
)
def test_the_day_turns_at_pacific_midnight(moment: datetime, day: date) -> None:
    assert quota_day(moment) == day
