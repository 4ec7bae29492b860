"""A scheduler started with the seed's agent_config.json: what it does not enforce yet, it
says once, in one line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.scheduler.conftest import Mesh
from tests.seed_examples import SEED_AGENT_CONFIG


@pytest.mark.parametrize(("config", "warned"), [(SEED_AGENT_CONFIG, True), ({}, False)])
async def test_scheduler_names_the_api_policy_keys_it_does_not_enforce_yet(
    mesh: Mesh,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    config: dict[str, object],
    warned: bool,
) -> None:
    path = tmp_path / "seed_config.json"
    path.write_text(json.dumps(config))
    mesh.configure(AGENTMESH_CONFIG=str(path))
    caplog.set_level(logging.INFO)
    await mesh.start_scheduler()

    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    expected = (
        f"{path} sets api_policy.max_tokens_per_key, api_policy.max_requests_per_day,"
        " api_policy.rpm_soft_limit: read and validated, not enforced yet"
    )
    assert [w for w in warnings if "api_policy" in w] == ([expected] if warned else [])
