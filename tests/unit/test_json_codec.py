"""JSON to and from PostgreSQL: the fast codec reads and writes what the standard one did."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from agentmesh.db import json_codec

VALUES: list[Any] = [
    {"kind": "echo", "prompt": "héllo \u2603", "priority": 7, "timeout_seconds": 90.5},
    {"usage": {"input_tokens": 2**63 - 1, "model": ""}, "flags": [True, False, None]},
    {"big": 2**70, "negative": -(2**65)},  # past 64 bits: exact either way
    {"digits in text": "1234567890123456789012", "n": 1},
    {"nested": [[1, 2.25], {"a": []}], "empty": {}},
    [],
    "plain",
    -0.5,
]


@pytest.mark.parametrize("value", VALUES)
def test_values_come_back_as_the_standard_library_reads_them(value: Any) -> None:
    text = json_codec.dumps(value)
    assert json.loads(text) == value
    decoded = json_codec.loads(json.dumps(value))
    assert decoded == value
    assert type(decoded) is type(value)


def test_integers_past_64_bits_stay_integers() -> None:
    assert json_codec.loads('{"a": 123456789012345678901234567890}') == {
        "a": 123456789012345678901234567890
    }
    assert json_codec.loads(json_codec.dumps([2**80])) == [2**80]


def test_keys_that_are_not_strings_are_written_as_before() -> None:
    assert json.loads(json_codec.dumps({1: "x"})) == {"1": "x"}


@dataclasses.dataclass
class _Point:
    x: int


@pytest.mark.parametrize("value", [_Point(1), datetime(2026, 1, 1, tzinfo=UTC), {1, 2}])
def test_what_json_cannot_hold_is_refused_as_before(value: object) -> None:
    with pytest.raises(TypeError):
        json_codec.dumps(value)


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1234567890123456789}',  # 19 digits: past 2**63
        '{"n": -98765432109876543210, "é": "\u00e9"}',
        "[1, 2, 12345678901234567890123]",
    ],
)
def test_long_numbers_are_read_exactly_wherever_they_are(text: str) -> None:
    assert json_codec.loads(text) == json.loads(text)
    assert json_codec.loads(text) == json.loads(text, parse_float=float)
