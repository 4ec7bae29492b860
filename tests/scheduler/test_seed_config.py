"""A scheduler started with the seed's agent_config.json enforces its api_policy: every key's
limits are the seed's, and nothing is reported as read but ignored."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import pytest

from agentmesh.v1 import keys_pb2, keys_pb2_grpc
from tests.scheduler.conftest import Mesh
from tests.seed_examples import SEED_AGENT_CONFIG


async def test_the_seeds_api_policy_is_every_keys_limits(
    mesh: Mesh, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "seed_config.json"
    path.write_text(json.dumps(SEED_AGENT_CONFIG))
    keys = tmp_path / "api_keys.env"
    keys.write_text("GEMINI_KEY_1=AIzaSy-seed-config-test-0001\n")
    mesh.configure(AGENTMESH_CONFIG=str(path), GEMINI_API_KEY_FILE=str(keys))
    caplog.set_level(logging.INFO)
    await mesh.start_scheduler()

    async with grpc.aio.insecure_channel(mesh.schedulers[0].address) as channel:
        listed = await keys_pb2_grpc.KeyPoolStub(channel).ListKeys(keys_pb2.ListKeysRequest())
    policy = SEED_AGENT_CONFIG["api_policy"]
    assert isinstance(policy, dict)
    (key,) = listed.keys
    assert (
        key.limits.requests_per_minute,
        key.limits.requests_per_day,
        key.limits.tokens_per_day,
    ) == (policy["rpm_soft_limit"], policy["max_requests_per_day"], policy["max_tokens_per_key"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [w for w in warnings if "api_policy" in w or "not enforced" in w]
