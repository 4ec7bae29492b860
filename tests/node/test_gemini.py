"""The gemini executor end to end: the real Gemini CLI against the loopback API emulator."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import psutil
import pytest

from agentmesh.v1 import node_pb2, task_pb2
from tests.node.conftest import StartNode
from tests.node.test_node import assert_well_numbered, collect, wait_for_file, wait_until_gone
from tests.support.gemini_emulator import (
    GeminiEmulator,
    RecordedRequest,
    function_call_reply,
    invalid_api_key,
    quota_exhausted,
    shell_call,
    slow_reply,
    text_reply,
)

API_KEY = "AIzaSy-test-key-0123456789abcdef"


def gemini(task_id: str, prompt: str, **spec: object) -> node_pb2.ExecuteTaskRequest:
    return node_pb2.ExecuteTaskRequest(
        task_id=task_id,
        attempt=1,
        api_key=API_KEY,
        spec=task_pb2.TaskSpec(kind="gemini", prompt=prompt, model="gemini-2.5-flash", **spec),  # type: ignore[arg-type]
    )


def payloads(events: list[task_pb2.TaskEvent], kind: str) -> list[object]:
    return [getattr(e, kind) for e in events if e.WhichOneof("payload") == kind]


def assert_no_key(events: list[task_pb2.TaskEvent], caplog: pytest.LogCaptureFixture) -> None:
    assert API_KEY not in "".join(str(e) for e in events)
    assert API_KEY not in caplog.text


async def test_prompt_streams_text_and_completes_with_usage(
    start_node: StartNode, emulator: GeminiEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    emulator.script(
        text_reply(
            "The mesh is up and running.",
            prompt_tokens=1234,
            candidates_tokens=56,
            cached_tokens=200,
        )
    )
    _, stub = await start_node()
    events = await collect(stub.ExecuteTask(gemini("g-1", "Is the mesh up?")))

    assert_well_numbered(events, "g-1")
    text = "".join(t.text for t in payloads(events, "text"))  # type: ignore[attr-defined]
    assert text == "The mesh is up and running."
    assert len(payloads(events, "text")) > 1  # streamed in pieces
    result = events[-1].result
    assert result.state == task_pb2.TASK_STATE_COMPLETED
    assert result.output == "The mesh is up and running."
    assert (result.usage.input_tokens, result.usage.output_tokens) == (1234, 56)
    assert (result.usage.total_tokens, result.usage.cached_tokens) == (1290, 200)
    assert result.usage.model == "gemini-2.5-flash"
    requests = emulator.generate_requests()
    assert requests[0].api_key == API_KEY
    assert "Is the mesh up?" in requests[0].user_text
    assert_no_key(events, caplog)


async def test_allowed_tool_call_runs(
    start_node: StartNode, emulator: GeminiEmulator, tmp_path: Path
) -> None:
    emulator.script(shell_call("touch allowed.txt"), text_reply("done"))
    _, stub = await start_node()
    events = await collect(
        stub.ExecuteTask(gemini("g-2", "make a file", permission_mode="superuser"))
    )

    tool_use = payloads(events, "tool_use")[0]
    assert tool_use.tool_name == "run_shell_command"  # type: ignore[attr-defined]
    assert "touch allowed.txt" in tool_use.parameters_json  # type: ignore[attr-defined]
    assert payloads(events, "tool_result")[0].status == "success"  # type: ignore[attr-defined]
    assert (tmp_path / "allowed.txt").exists()
    assert events[-1].result.state == task_pb2.TASK_STATE_COMPLETED


@pytest.mark.parametrize(
    ("mode", "command"),
    [
        ("weak", "touch pwned.txt"),
        ("weak", "rm canary.txt"),
        ("weak", "ls && rm canary.txt"),
        ("weak", "ls; touch pwned.txt"),
        ("superuser", "rm canary.txt"),
        ("superuser", "uname -a && rm -f canary.txt"),
        ("superuser", "/bin/rm canary.txt"),
    ],
)
async def test_denied_tool_call_never_runs(
    start_node: StartNode, emulator: GeminiEmulator, tmp_path: Path, mode: str, command: str
) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("canary")
    emulator.script(shell_call(command), text_reply("ok"))
    _, stub = await start_node()
    events = await collect(stub.ExecuteTask(gemini("g-3", "try it", permission_mode=mode)))

    result = payloads(events, "tool_result")[0]
    assert result.status == "error"  # type: ignore[attr-defined]
    assert result.error_type == "policy_violation"  # type: ignore[attr-defined]
    assert canary.read_text() == "canary"
    assert not (tmp_path / "pwned.txt").exists()


async def test_quota_exhausted_per_minute_is_its_own_error_kind(
    start_node: StartNode, emulator: GeminiEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.script(quota_exhausted("minute", retry_seconds=26))
    _, stub = await start_node()
    events = await collect(stub.ExecuteTask(gemini("g-4", "hello")))

    errors = payloads(events, "api_error")
    assert len(errors) == 1
    error = errors[0]
    assert error.kind == task_pb2.API_ERROR_KIND_QUOTA_EXHAUSTED  # type: ignore[attr-defined]
    assert error.retry_delay_seconds == 26  # type: ignore[attr-defined]
    assert error.quota_scope == "per_minute"  # type: ignore[attr-defined]
    assert error.http_status == 429  # type: ignore[attr-defined]
    assert events[-1].result.state == task_pb2.TASK_STATE_FAILED
    assert events[-1].result.error == (
        "gemini CLI failed (exit code 173): per-minute quota exhausted (HTTP 429"
        " RESOURCE_EXHAUSTED): retry in 26s"
    )
    assert len(emulator.generate_requests()) == 1  # the CLI gave up at once
    assert_no_key(events, caplog)


async def test_quota_exhausted_per_day_waits_for_the_daily_reset(
    start_node: StartNode, emulator: GeminiEmulator
) -> None:
    emulator.script(quota_exhausted("day", retry_seconds=26))
    _, stub = await start_node()
    events = await collect(stub.ExecuteTask(gemini("g-5", "hello")))

    error = payloads(events, "api_error")[0]
    assert error.kind == task_pb2.API_ERROR_KIND_QUOTA_EXHAUSTED  # type: ignore[attr-defined]
    assert error.quota_scope == "per_day"  # type: ignore[attr-defined]
    assert error.retry_delay_seconds > 26  # type: ignore[attr-defined]
    assert error.retry_delay_seconds <= 25 * 3600  # type: ignore[attr-defined]
    assert events[-1].result.state == task_pb2.TASK_STATE_FAILED


async def test_invalid_key_is_recognised(
    start_node: StartNode, emulator: GeminiEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.script(invalid_api_key())
    _, stub = await start_node()
    events = await collect(stub.ExecuteTask(gemini("g-6", "hello")))

    error = payloads(events, "api_error")[0]
    assert error.kind == task_pb2.API_ERROR_KIND_INVALID_API_KEY  # type: ignore[attr-defined]
    assert events[-1].result.state == task_pb2.TASK_STATE_FAILED
    assert_no_key(events, caplog)


def _processes_mentioning(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in process.info["cmdline"] or ()):
            found.append(process)
    return found


async def test_cancel_during_a_long_run_leaves_no_process(
    start_node: StartNode, emulator: GeminiEmulator
) -> None:
    marker = f"cancel-me-{uuid.uuid4().hex}"
    emulator.script(slow_reply(chunks=200, delay=0.2))
    _, stub = await start_node()
    call = stub.ExecuteTask(gemini("g-7", marker))
    while (await call.read()).WhichOneof("payload") != "text":
        pass
    pids = [p.pid for p in _processes_mentioning(marker)]
    assert pids

    await stub.CancelTask(node_pb2.CancelTaskRequest(task_id="g-7"))
    rest = await collect(call)

    assert rest[-1].result.state == task_pb2.TASK_STATE_CANCELED
    for pid in pids:
        assert await wait_until_gone(pid)


async def test_cancel_stops_the_tool_commands_the_cli_started(
    start_node: StartNode, emulator: GeminiEmulator, tmp_path: Path
) -> None:
    emulator.script(shell_call("sleep 300 & echo $! > child.pid; wait"), text_reply("never"))
    _, stub = await start_node(sandbox="none")  # host pids (tests/node/test_sandbox.py)
    call = stub.ExecuteTask(gemini("g-8", "sleep", permission_mode="superuser"))
    await call.read()
    await wait_for_file(tmp_path / "child.pid")
    child = int((tmp_path / "child.pid").read_text())

    await stub.CancelTask(node_pb2.CancelTaskRequest(task_id="g-8"))
    rest = await collect(call)

    assert rest[-1].result.state == task_pb2.TASK_STATE_CANCELED
    assert await wait_until_gone(child), "the tool's command outlived the cancel"


def declared_tools(request: RecordedRequest) -> list[str]:
    """The names of the functions a generate request offers the model."""
    tools = (request.body or {}).get("tools") or []
    return [
        str(declaration["name"])
        for tool in tools  # type: ignore[attr-defined]
        for declaration in tool.get("functionDeclarations", [])
    ]


@pytest.mark.parametrize(("agent_mode", "tool_runs"), [("agentic", True), ("plain", False)])
async def test_agent_mode_decides_whether_a_permitted_tool_runs(
    start_node: StartNode,
    emulator: GeminiEmulator,
    tmp_path: Path,
    agent_mode: str,
    tool_runs: bool,
) -> None:
    # Superuser mode permits `touch`: only the agent mode stands between the call and the file.
    emulator.script(shell_call("touch made-by-tool.txt"), text_reply("done"))
    _, stub = await start_node()
    events = await collect(
        stub.ExecuteTask(
            gemini("g-9", "make a file", permission_mode="superuser", agent_mode=agent_mode)
        )
    )

    result = payloads(events, "tool_result")[0]
    assert (tmp_path / "made-by-tool.txt").exists() is tool_runs
    assert result.status == ("success" if tool_runs else "error")  # type: ignore[attr-defined]
    assert events[-1].result.state == task_pb2.TASK_STATE_COMPLETED
    assert events[-1].result.output == "done"


async def test_plain_mode_offers_the_model_no_tool_at_all(
    start_node: StartNode, emulator: GeminiEmulator, tmp_path: Path
) -> None:
    # read_file is one the CLI's built-in policy allows in every permission mode.
    (tmp_path / "notes.txt").write_text("the canary is yellow")
    emulator.script(
        function_call_reply("read_file", {"file_path": str(tmp_path / "notes.txt")}),
        text_reply("I cannot read files here."),
    )
    _, stub = await start_node()
    events = await collect(stub.ExecuteTask(gemini("g-10", "read my notes", agent_mode="plain")))

    # The policy denies every tool, so the CLI declares none; a call the model makes anyway
    # finds no such tool.
    first, second = emulator.generate_requests()
    assert declared_tools(first) == []
    result = payloads(events, "tool_result")[0]
    assert result.status == "error"  # type: ignore[attr-defined]
    assert result.error_type == "tool_not_registered"  # type: ignore[attr-defined]
    assert "yellow" not in json.dumps(second.body)  # the file never reached the model
    assert events[-1].result.state == task_pb2.TASK_STATE_COMPLETED


async def test_agentic_mode_offers_the_model_its_tools(
    start_node: StartNode, emulator: GeminiEmulator
) -> None:
    emulator.script(text_reply("hello"))
    _, stub = await start_node()
    await collect(stub.ExecuteTask(gemini("g-12", "hello", agent_mode="agentic")))

    assert {"run_shell_command", "read_file"} <= set(
        declared_tools(emulator.generate_requests()[0])
    )


async def test_node_default_agent_mode_applies_when_the_spec_names_none(
    start_node: StartNode, emulator: GeminiEmulator, tmp_path: Path
) -> None:
    (tmp_path / "agent_config.json").write_text(
        json.dumps({"agent_defaults": {"mode": "plain", "permissions": "superuser"}})
    )
    emulator.script(shell_call("touch made-by-tool.txt"), text_reply("done"))
    _, stub = await start_node()
    events = await collect(stub.ExecuteTask(gemini("g-11", "make a file")))

    assert payloads(events, "tool_result")[0].status == "error"  # type: ignore[attr-defined]
    assert not (tmp_path / "made-by-tool.txt").exists()
    assert declared_tools(emulator.generate_requests()[0]) == []
