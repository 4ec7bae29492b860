"""Durations (`agentmesh db prune --older-than`): what one may be, and the error for what
it may not (naming the value)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agentmesh.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("2w", timedelta(weeks=2)),
        (" 7d ", timedelta(days=7)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["30", "d", "3x", "1.5d", "-2d", "0d", "30 days", ""])
def test_a_bad_duration_is_refused_by_name(text: str) -> None:
    with pytest.raises(ValueError, match=repr(text)):
        parse_duration(text)
