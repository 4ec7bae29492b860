"""API keys never enter a gemini task: the real Gemini CLI through a real node, whose proxy
forwards its requests to the loopback API emulator with the keys.

The decisive check reads what the model was sent: an agent that prints its environment sends
it back to the model in its next request, which is all a prompt injection needs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from agentmesh.config import ConfigError
from agentmesh.keys.pool import fingerprint
from agentmesh.v1 import node_pb2, task_pb2
from tests.node.conftest import StartNode
from tests.node.test_gemini import API_KEY, gemini, payloads
from tests.node.test_node import assert_well_numbered, collect
from tests.support.gemini_emulator import (
    GeminiEmulator,
    Usage,
    quota_exhausted,
    shell_call,
    text_reply,
)

HELD_A = "AIzaSy-held-key-A-0123456789abcdef"
HELD_B = "AIzaSy-held-key-B-fedcba9876543210"
# What a careless operator might leave in the node's own environment.
NODE_ENV_KEY = "AIzaSy-node-env-key-00112233445566"
# The agent prints the CLI's environment and its own (a weak-mode command: cat is allowed;
# -v shows the NULs between variables as ^@, or the CLI takes the output for binary).
PRINT_ENVIRONMENT = "cat -v /proc/$PPID/environ /proc/self/environ"


def unkeyed(task_id: str, prompt: str, **spec: object) -> node_pb2.ExecuteTaskRequest:
    """A gemini task that brings no key (as the scheduler's do)."""
    request = gemini(task_id, prompt, **spec)
    request.api_key = ""
    return request


def everything_seen(
    events: list[task_pb2.TaskEvent], emulator: GeminiEmulator, caplog: pytest.LogCaptureFixture
) -> str:
    """The task's events, the node's log and every request body the API got."""
    bodies = [json.dumps(request.body) for request in emulator.requests]
    return "\n".join([*(str(e) for e in events), caplog.text, *bodies])


async def test_an_agent_that_prints_its_environment_finds_no_key(
    start_node: StartNode,
    emulator: GeminiEmulator,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("GEMINI_API_KEY", NODE_ENV_KEY)
    monkeypatch.setenv("GOOGLE_API_KEY", NODE_ENV_KEY)
    emulator.script(shell_call(PRINT_ENVIRONMENT), text_reply("done"))
    _, stub = await start_node()

    events = await collect(
        stub.ExecuteTask(gemini("k-1", "print your environment", permission_mode="weak"))
    )

    assert_well_numbered(events, "k-1")
    assert payloads(events, "tool_result")[0].status == "success"  # type: ignore[attr-defined]
    assert events[-1].result.state == task_pb2.TASK_STATE_COMPLETED
    first, second = emulator.generate_requests()
    assert (first.api_key, second.api_key) == (API_KEY, API_KEY)  # the proxy sent the key
    # The model got the dump: the CLI's variables, with the proxy's credential as its key.
    sent_back = json.dumps(second.body)
    assert "GEMINI_CLI_HOME=" in sent_back
    assert "GEMINI_API_KEY=" in sent_back
    assert "GOOGLE_GEMINI_BASE_URL=http://127.0.0.1:" in sent_back
    seen = everything_seen(events, emulator, caplog)
    assert API_KEY not in seen
    assert NODE_ENV_KEY not in seen


async def test_a_node_holds_its_own_keys_and_moves_a_request_off_a_429(
    start_node: StartNode,
    emulator: GeminiEmulator,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    key_file = tmp_path / "node-keys.env"
    key_file.write_text(f"first={HELD_A}\nsecond={HELD_B}\n")
    emulator.set_key_behaviour(HELD_A, quota_exhausted("minute", retry_seconds=30))
    emulator.script(shell_call(PRINT_ENVIRONMENT), text_reply("done"))
    _, stub = await start_node(env={"GEMINI_API_KEY_FILE": str(key_file)})

    card = await stub.GetCapabilities(node_pb2.GetCapabilitiesRequest())
    events = await collect(stub.ExecuteTask(unkeyed("k-2", "print your environment")))

    assert [(k.label, k.fingerprint) for k in card.held_keys] == [
        ("first", fingerprint(HELD_A)),
        ("second", fingerprint(HELD_B)),
    ]
    # The CLI saw no error: its first request moved to the second key, and the next one
    # went there at once (the first key cools down for 30 s).
    assert events[-1].result.state == task_pb2.TASK_STATE_COMPLETED
    assert [r.api_key for r in emulator.generate_requests()] == [HELD_A, HELD_B, HELD_B]
    (warning,) = payloads(events, "diagnostic")
    assert warning.severity == "warning"  # type: ignore[attr-defined]
    assert warning.message.startswith(  # type: ignore[attr-defined]
        f"API key first ({fingerprint(HELD_A)}) cooled down for gemini-2.5-flash for 30s"
    )
    assert "the request moved to key second" in warning.message  # type: ignore[attr-defined]
    seen = everything_seen(events, emulator, caplog) + str(card)
    assert HELD_A not in seen
    assert HELD_B not in seen


async def test_a_task_without_a_key_anywhere_fails_at_once(
    start_node: StartNode, emulator: GeminiEmulator
) -> None:
    _, stub = await start_node()

    events = await collect(stub.ExecuteTask(unkeyed("k-3", "hello")))

    assert events[-1].result.state == task_pb2.TASK_STATE_FAILED
    assert events[-1].result.error.startswith("no API key: the task brought none")
    assert emulator.requests == []


async def test_a_task_over_its_token_budget_is_stopped(
    start_node: StartNode, emulator: GeminiEmulator
) -> None:
    emulator.script(shell_call("echo hi", usage=Usage(5000, 200)), text_reply("never sent"))
    _, stub = await start_node()
    request = gemini("k-4", "spend", permission_mode="weak")
    request.token_budget = 5000

    events = await collect(stub.ExecuteTask(request))

    assert events[-1].result.state == task_pb2.TASK_STATE_FAILED
    assert events[-1].result.error == "token budget exceeded: 5200 of 5000 tokens"
    assert payloads(events, "api_error") == []  # the budget, not the API, stopped it
    assert len(emulator.generate_requests()) == 1


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("first=\n", "line 1: first has no key after '='"),
        ("first=AIza secret\n", "line 1: first contains whitespace"),
        ("# no keys\n", "holds no key"),
    ],
)
async def test_a_bad_key_file_stops_the_node_at_start(
    start_node: StartNode, tmp_path: Path, content: str, problem: str
) -> None:
    key_file = tmp_path / "node-keys.env"
    key_file.write_text(content)

    with pytest.raises(ConfigError, match=problem) as raised:
        await start_node(env={"GEMINI_API_KEY_FILE": str(key_file)})

    assert str(key_file) in str(raised.value)
    assert "secret" not in str(raised.value)
