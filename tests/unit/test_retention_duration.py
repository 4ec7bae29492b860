"""Durations (`agentmesh db prune --older-than`, `scheduler.retention`): what one may be,
and the error for what it may not (naming the value)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from agentmesh.config import ConfigError, load_settings
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


def test_the_schedulers_retention_is_a_duration(tmp_path: Path) -> None:
    (tmp_path / "agent_config.json").write_text(json.dumps({"scheduler": {"retention": "90d"}}))
    assert load_settings({}, cwd=tmp_path).scheduler.retention == timedelta(days=90)
    (tmp_path / "agent_config.json").write_text("{}")
    assert load_settings({}, cwd=tmp_path).scheduler.retention is None


@pytest.mark.parametrize("value", ["3 months", 90, "0d"])
def test_a_bad_retention_names_file_key_and_value(tmp_path: Path, value: object) -> None:
    path = tmp_path / "agent_config.json"
    path.write_text(json.dumps({"scheduler": {"retention": value}}))
    with pytest.raises(ConfigError) as refused:
        load_settings({}, cwd=tmp_path)
    message = str(refused.value)
    assert message.startswith(f"{path}: scheduler.retention: "), message
    assert repr(value) in message, message
