"""The seed's example configuration loads as it is, and the test data is the seed's."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from dotenv import dotenv_values

from agentmesh.config import PermissionMode, load_settings
from agentmesh.tasks.model import AgentMode
from tests.seed_examples import SEED_AGENT_CONFIG, SEED_DIR, SEED_ENV, dotenv_text

FENCED_BLOCK = re.compile(r"^```(?P<language>[a-z]*)\n(?P<body>.*?)^```", re.DOTALL | re.MULTILINE)


def test_the_seed_agent_config_loads_verbatim(tmp_path: Path) -> None:
    (tmp_path / "agent_config.json").write_text(json.dumps(SEED_AGENT_CONFIG, indent=2))
    settings = load_settings({}, cwd=tmp_path)

    assert settings.permissions.weak.allowlist == ("ls", "cat", "curl")
    assert settings.permissions.superuser.denylist == ("rm", "shutdown", "reboot")
    assert settings.api_policy.max_tokens_per_key == 240_000
    assert settings.api_policy.max_requests_per_day == 60
    assert settings.api_policy.rpm_soft_limit == 2
    assert settings.agent_defaults.mode is AgentMode.AGENTIC
    assert settings.agent_defaults.permissions is PermissionMode.WEAK


def test_every_variable_of_the_seed_env_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(dotenv_text(SEED_ENV))
    settings = load_settings({}, cwd=tmp_path)

    assert set(SEED_ENV) <= settings.env.model_fields_set
    # No host: the server is on localhost, at PostgreSQL's port.
    assert not settings.uses_embedded_database
    assert settings.database_dsn() == (
        "postgresql://agent:supersecret@localhost:5432/gemini_distributed_agent"
    )
    assert settings.env.GEMINI_CLI_COMMAND == "/usr/local/bin/gemini"
    assert Path("/path/to/api_keys.env") == settings.env.GEMINI_API_KEY_FILE
    assert "supersecret" not in repr(settings)


def _seed_blocks() -> dict[str, list[str]]:
    if not SEED_DIR.is_dir():
        pytest.skip(
            f"the seed documents are not beside the project ({SEED_DIR} does not exist):"
            " CI has them, a fresh clone does not"
        )
    blocks: dict[str, list[str]] = {}
    for path in sorted(SEED_DIR.glob("*.txt")):
        for match in FENCED_BLOCK.finditer(path.read_text(encoding="utf-8")):
            blocks.setdefault(match["language"], []).append(match["body"])
    return blocks


def test_the_test_data_is_the_seed_s_example_configuration() -> None:
    blocks = _seed_blocks()

    assert len(blocks.get("json", [])) == 1, "the seed has one agent_config.json example"
    assert len(blocks.get("dotenv", [])) == 1, "the seed has one .env example"
    assert json.loads(blocks["json"][0]) == SEED_AGENT_CONFIG
    assert dotenv_values(stream=io.StringIO(blocks["dotenv"][0])) == SEED_ENV
