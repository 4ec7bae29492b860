"""The context of a gemini task, through the real Gemini CLI against the API emulator: what
the memory holds for the task's user reaches the model with the prompt (the prompt stays the
user's), another user's private facts do not, and the trace says what was given."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from agentmesh.config import TlsSettings
from agentmesh.rpc.channel import open_channel
from agentmesh.v1 import memory_pb2, memory_pb2_grpc, scheduler_pb2_grpc, task_pb2
from tests.scheduler.conftest import Mesh, run_to_end, start_gemini_mesh
from tests.support.gemini_emulator import (
    GeminiEmulator,
    function_call_reply,
    quoting_tool_result,
    text_reply,
)

KEY = "AIzaSy-context-test-key-00042"
PROMPT = "Where is the office printer, and is nas backed up?"


Stubs = tuple["scheduler_pb2_grpc.SchedulerAsyncStub", "memory_pb2_grpc.MemoryAsyncStub"]


@pytest.fixture
async def stubs(mesh: Mesh, emulator: GeminiEmulator) -> AsyncIterator[Stubs]:
    """The scheduler (a key, one node "llm") and its Memory service."""
    scheduler = await start_gemini_mesh(mesh, KEY)
    async with open_channel(mesh.schedulers[0].address, token=None, tls=TlsSettings()) as channel:
        yield scheduler, memory_pb2_grpc.MemoryStub(channel)


async def remember(
    stub: memory_pb2_grpc.MemoryAsyncStub, label: str, value: str, user: str, **more: str
) -> int:
    request = memory_pb2.AddKnowledgeRequest(label=label, value=value, user=user, **more)
    return (await stub.AddKnowledge(request)).id


async def test_the_users_memory_reaches_the_model_and_the_trace_says_what(
    emulator: GeminiEmulator, stubs: Stubs
) -> None:
    scheduler, memory = stubs
    await memory.SetProfile(
        memory_pb2.SetProfileRequest(
            fields=["preferred_format", "timezone"],
            profile=memory_pb2.Profile(
                username="ada", preferred_format="one haiku", timezone="Asia/Tokyo"
            ),
        )
    )
    printer = await remember(memory, "office printer", "The office printer is at 10.0.0.7", "ada")
    await remember(memory, "printer", "Eve's own printer is at 10.9.9.9", "eve")
    await remember(memory, "cats", "The cat is called Miso", "ada")
    await memory.AddHost(
        memory_pb2.AddHostRequest(
            host_name="nas", ip_address="192.168.1.20", service="smb", notes="backed up nightly"
        )
    )
    emulator.script(text_reply("At 10.0.0.7; nas is backed up nightly."))

    task, events = await run_to_end(scheduler, kind="gemini", prompt=PROMPT, user="ada")

    assert task.state == task_pb2.TASK_STATE_COMPLETED, task.error
    [request] = emulator.generate_requests()
    body = json.dumps(request.body)
    assert request.user_text == PROMPT  # the prompt stays the user's
    for given in ("one haiku", "Asia/Tokyo", "10.0.0.7", "nas (192.168.1.20): smb"):
        assert given in body, given
    assert "backed up nightly" in body
    assert "10.9.9.9" not in body  # eve's private fact
    [diagnostic] = [e.diagnostic for e in events if e.WhichOneof("payload") == "diagnostic"]
    assert diagnostic.severity == "info"
    assert diagnostic.message.startswith(
        f"context given: profile of ada (preferred_format, timezone); knowledge #{printer} ("
    )
    assert "; hosts nas; about " in diagnostic.message


async def test_a_task_of_a_user_with_no_memory_gets_no_context(
    emulator: GeminiEmulator, stubs: Stubs
) -> None:
    scheduler, memory = stubs
    await remember(memory, "printer", "Eve's own printer is at 10.9.9.9", "eve")
    emulator.script(text_reply("No idea."))

    task, events = await run_to_end(
        scheduler, kind="gemini", prompt="Where is the printer?", user="bo"
    )

    assert task.state == task_pb2.TASK_STATE_COMPLETED, task.error
    assert "10.9.9.9" not in json.dumps(emulator.generate_requests()[0].body)
    assert not [e for e in events if e.WhichOneof("payload") == "diagnostic"]


async def test_an_agent_remembers_a_fact_and_its_users_later_agent_finds_it(
    emulator: GeminiEmulator, stubs: Stubs
) -> None:
    scheduler, memory = stubs
    fact = {"label": "backup window", "value": "Backups run at 02:00 on the nas"}
    emulator.script(function_call_reply("mcp_mesh_remember", fact), text_reply("Noted."))
    first, _ = await run_to_end(scheduler, kind="gemini", prompt="Note the window.", user="ada")
    assert first.state == task_pb2.TASK_STATE_COMPLETED, first.error

    rows = await memory.ListKnowledge(memory_pb2.ListKnowledgeRequest(user="ada"))
    [row] = [r for r in rows.rows if r.label == "backup window"]
    assert (row.user, row.visibility, row.task_id) == ("ada", "private", first.id)
    assert row.source == f"agent:{first.id}"

    search = function_call_reply("mcp_mesh_search_knowledge", {"query": "when do backups run"})
    for user, found in (("ada", True), ("eve", False)):
        emulator.script(search, quoting_tool_result("Found: {result}"))
        later, _ = await run_to_end(scheduler, kind="gemini", prompt="Backups?", user=user)
        assert later.state == task_pb2.TASK_STATE_COMPLETED, later.error
        assert ("02:00" in later.output) is found, (user, later.output)
