"""Durations as people write them in flags and configuration: `45s`, `90m`, `12h`, `30d`,
`2w` (a whole number and one unit)."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
DURATION_FORMS = "a whole number and a unit: 45s, 90m, 12h, 30d, 2w"


def parse_duration(text: str) -> timedelta:
    """`text` as a timedelta; ValueError, naming `text`, for anything else and for zero
    (nothing that takes a duration means "no time at all")."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration: use {DURATION_FORMS}")
    amount = int(match[1])
    if amount == 0:
        raise ValueError(f"{text!r} is zero: use a duration longer than that")
    return timedelta(**{_UNITS[match[2]]: amount})
