"""Every numeric bound of the configuration, at its edge and one step past it.

A value past a bound ends the program with one line naming the file, the key and the value
(`node.max_concurrency: 0` would otherwise leave every task waiting forever).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import annotated_types
import pytest
from pydantic import BaseModel

from agentmesh.cli.node import node_settings
from agentmesh.config import ConfigError, EnvSettings, FileSettings, load_settings

# (dotted key, an accepted edge value, the first refused value beyond it, pydantic's words)
FILE_BOUNDS: list[tuple[str, Any, Any, str]] = [
    ("api_policy.max_tokens_per_key", 0, -1, "greater than or equal to 0"),
    ("api_policy.max_requests_per_day", 0, -1, "greater than or equal to 0"),
    ("api_policy.rpm_soft_limit", 0, -1, "greater than or equal to 0"),
    ("api_policy.throttle_tolerance_seconds", 0, -1, "greater than or equal to 0"),
    ("agent_defaults.timeout_seconds", 1, 0, "greater than 0"),
    ("agent_defaults.max_delegations", 0, -1, "greater than or equal to 0"),
    ("agent_defaults.max_delegations", 1000, 1001, "less than or equal to 1000"),
    ("node.max_concurrency", 1, 0, "greater than 0"),
    ("node.max_concurrency", 1024, 1025, "less than or equal to 1024"),
    ("node.heartbeat_interval_seconds", 0.001, 0, "greater than 0"),
    ("scheduler.heartbeat_interval_seconds", 0.001, 0, "greater than 0"),
    ("node.shutdown_grace_seconds", 0, -0.5, "greater than or equal to 0"),
    ("node.cancel_grace_seconds", 0, -0.5, "greater than or equal to 0"),
    ("scheduler.heartbeat_ttl_intervals", 1, 0, "greater than 0"),
    ("scheduler.max_attempts", 1, 0, "greater than 0"),
    ("scheduler.max_attempts", 100, 101, "less than or equal to 100"),
    ("scheduler.lease_seconds", 0.001, 0, "greater than 0"),
    ("scheduler.max_subtask_depth", 1, 0, "greater than 0"),
    ("scheduler.max_subtask_depth", 32, 33, "less than or equal to 32"),
    ("node.max_output_bytes", 1024, 1023, "greater than or equal to 1024"),
    ("node.command_check_seconds", 0.001, 0, "greater than 0"),
    ("scheduler.max_trace_chars", 65536, 65535, "greater than or equal to 65536"),
]
ENV_BOUNDS: list[tuple[str, str, str, str]] = [
    ("POSTGRES_PORT", "1", "0", "greater than 0"),
    ("POSTGRES_PORT", "65535", "65536", "less than 65536"),
]


def nested(key: str, value: Any) -> dict[str, Any]:
    section, name = key.split(".")
    return {section: {name: value}}


def load_with(tmp_path: Path, content: dict[str, Any]) -> Any:
    (tmp_path / "agent_config.json").write_text(json.dumps(content))
    return load_settings({}, cwd=tmp_path)


def get(settings: Any, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(settings, section), name)


@pytest.mark.parametrize(("key", "edge", "past", "words"), FILE_BOUNDS)
def test_a_file_bound_accepts_its_edge(
    tmp_path: Path, key: str, edge: Any, past: Any, words: str
) -> None:
    assert get(load_with(tmp_path, nested(key, edge)), key) == edge


@pytest.mark.parametrize(("key", "edge", "past", "words"), FILE_BOUNDS)
def test_a_file_bound_refuses_one_step_past_it_naming_file_key_and_value(
    tmp_path: Path, key: str, edge: Any, past: Any, words: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_with(tmp_path, nested(key, past))

    path = tmp_path / "agent_config.json"
    assert str(refused.value) == f"{path}: {key}: Input should be {words} (got {past!r})"


def test_max_concurrency_zero_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_with(tmp_path, {"node": {"max_concurrency": 0}})

    assert str(refused.value) == (
        f"{tmp_path / 'agent_config.json'}: node.max_concurrency: Input should be greater"
        " than 0 (got 0)"
    )


def test_max_concurrency_zero_on_the_command_line_is_refused(tmp_path: Path) -> None:
    settings = load_settings({}, cwd=tmp_path)
    flags = {"max_concurrency": 0}

    with pytest.raises(ConfigError) as refused:
        node_settings(settings, flags)

    assert str(refused.value) == (
        "command line: max_concurrency: Input should be greater than 0 (got 0)"
    )


@pytest.mark.parametrize(("name", "edge", "past", "words"), ENV_BOUNDS)
def test_an_environment_bound(tmp_path: Path, name: str, edge: str, past: str, words: str) -> None:
    assert getattr(load_settings({name: edge}, cwd=tmp_path).env, name) == int(edge)
    with pytest.raises(ConfigError) as refused:
        load_settings({name: past}, cwd=tmp_path)
    assert str(refused.value) == f"environment: {name}: Input should be {words} (got {past!r})"


KINDS = {
    "greater than or equal to": annotated_types.Ge,
    "greater than": annotated_types.Gt,
    "less than or equal to": annotated_types.Le,
    "less than": annotated_types.Lt,
}


def _kind(words: str) -> str:
    return next(kind.__name__ for text, kind in KINDS.items() if words.startswith(text))


def _bounded_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    found: set[str] = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found |= _bounded_fields(annotation, f"{prefix}{name}.")
        found |= {
            f"{prefix}{name}:{type(m).__name__}"
            for m in info.metadata
            if isinstance(m, tuple(KINDS.values()))
        }
    return found


def test_every_numeric_bound_has_its_edge_case() -> None:
    """A bound added to the settings without a case here fails this test."""
    cases = [(key, words) for key, _, _, words in FILE_BOUNDS + ENV_BOUNDS]

    covered = {f"{key}:{_kind(words)}" for key, words in cases}

    assert _bounded_fields(FileSettings) | _bounded_fields(EnvSettings) == covered


def test_an_empty_model_name_is_refused_and_one_character_is_enough(tmp_path: Path) -> None:
    assert load_with(tmp_path, nested("agent_defaults.model", "m")).agent_defaults.model == "m"
    with pytest.raises(ConfigError) as refused:
        load_with(tmp_path, nested("agent_defaults.model", ""))

    assert str(refused.value) == (
        f"{tmp_path / 'agent_config.json'}: agent_defaults.model: String should have at least"
        " 1 character (got '')"
    )
