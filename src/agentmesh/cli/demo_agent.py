"""The demo with a Gemini API key: an agent plans the inventory of the mesh itself.

One agentic gemini task asks its model to list the machines of the mesh and delegate a
read-only command to each through its node's mesh tools (agentmesh.node.mesh_tools). The
demo prints each tool call as the agent makes it, each subtask as it is delegated and as
it ends, then the tree the agent grew (as `agentmesh task ID` shows it) and its answer.

The key is any the scheduler may lease to a task without a user: the ones of
GEMINI_API_KEY_FILE (loaded when the scheduler starts) or added with `agentmesh keys add`.
The nodes run the Gemini CLI of GEMINI_CLI_COMMAND; where that is left at its default and
is not on PATH, the copy `make gemini-cli` installs (`make demo` names it in
AGENTMESH_GEMINI_CLI).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shlex
import shutil
import textwrap
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agentmesh.cli.client import CALL_TIMEOUT, Stub
from agentmesh.cli.output import Output
from agentmesh.cli.subtree import read_subtree, show_subtree
from agentmesh.cli.views import first_line, state_name
from agentmesh.config import Settings
from agentmesh.rpc.channel import open_channel
from agentmesh.v1 import keys_pb2, keys_pb2_grpc, node_pb2, scheduler_pb2, task_pb2

# The command each machine runs: on the default weak allowlist.
COMMAND = "uname -srm"
PROMPT = (
    "Take an inventory of every machine of this agentmesh mesh. First list the agents with"
    f" your mesh tools. Then delegate the read-only shell command `{COMMAND}` to each agent,"
    " one subtask per agent, with target_host set to its agent_id and a description such as"
    " 'kernel of NAME' (delegate_many runs them at once). Do not run commands yourself."
    " Answer with one line per machine: its agent id and what the command printed."
)
# One attempt of the agent may last this long; the demo waits a minute more (for a key).
PLAN_SECONDS = 300
WAIT_SECONDS = PLAN_SECONDS + 60
DISCOVERY_SECONDS = 0.25
# How often the demo checks that a key is left while the agent runs.
KEY_CHECK_SECONDS = 2.0
# How long a tool's answer waits for the ends of the subtasks it started to be told.
ENDING_SECONDS = 2.0


def planner_spec() -> task_pb2.TaskSpec:
    return task_pb2.TaskSpec(
        kind="gemini",
        agent_mode="agentic",
        prompt=PROMPT,
        description="an agent's inventory of the mesh",
        timeout_seconds=PLAN_SECONDS,
        max_attempts=1,  # a lost attempt is not planned again
    )


async def usable_keys(settings: Settings, address: str) -> int:
    """How many keys the scheduler at `address` may lease to a task without a user."""
    async with open_channel(address, token=settings.token, tls=settings.tls) as channel:
        reply = await keys_pb2_grpc.KeyPoolStub(channel).ListKeys(keys_pb2.ListKeysRequest())
    # A node's own key leaves with its node; an assigned key is its user's.
    return sum(key.enabled and not key.assigned_user and not key.node_id for key in reply.keys)


def with_gemini_cli(settings: Settings, installed: str | None) -> Settings:
    """The settings with the Gemini CLI `make gemini-cli` installed (`installed`), if
    GEMINI_CLI_COMMAND is left at its default and that is not on PATH."""
    env = settings.env
    if not installed or "GEMINI_CLI_COMMAND" in env.model_fields_set:
        return settings
    if shutil.which(shlex.split(env.GEMINI_CLI_COMMAND)[0]) is not None:
        return settings
    if not (Path(installed).is_file() and os.access(installed, os.X_OK)):
        return settings
    env = env.model_copy(update={"GEMINI_CLI_COMMAND": shlex.quote(installed)})
    return dataclasses.replace(settings, env=env)


async def run_planned_inventory(
    stub: Stub, names: dict[str, str], keys_left: Callable[[], Awaitable[int]]
) -> task_pb2.Task:
    """Submit the agent's task, show it as it plans, then its tree and its answer.

    The agent's task is canceled if no usable key is left (the API refused the key, which
    is then disabled; the CLI would retry until its timeout) or after WAIT_SECONDS."""
    began = time.monotonic()
    root = await stub.SubmitTask(scheduler_pb2.SubmitTaskRequest(spec=planner_spec()))
    print(f"task {root.id}: a Gemini agent plans the inventory of the mesh itself", flush=True)
    print(textwrap.fill(PROMPT, 92, initial_indent="  prompt: ", subsequent_indent="    "))
    following = asyncio.create_task(_follow(stub, root.id, names))
    keys_gone = asyncio.create_task(_until_no_key(keys_left))
    try:
        done, _ = await asyncio.wait(
            {following, keys_gone}, timeout=WAIT_SECONDS, return_when=asyncio.FIRST_COMPLETED
        )
        if following not in done:
            reason = (
                "no usable Gemini API key left (see agentmesh keys list)"
                if keys_gone.done()
                else f"the demo waited {WAIT_SECONDS}s"
            )
            await stub.CancelTask(node_pb2.CancelTaskRequest(task_id=root.id, reason=reason))
            await asyncio.wait_for(following, CALL_TIMEOUT)  # until its end is told
        await following  # raises what stopped it, if anything did
    finally:
        for task in (following, keys_gone):
            task.cancel()
        await asyncio.gather(following, keys_gone, return_exceptions=True)
    final = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=root.id))
    print(f"\nthe tree the agent grew, in {time.monotonic() - began:.2f}s:", flush=True)
    show_subtree(Output(), await read_subtree(stub, root.id))
    if final.state == task_pb2.TASK_STATE_COMPLETED:
        print("\nthe agent's answer:")
        for line in final.output.strip().splitlines():
            print(f"  {line}")
    else:
        print(f"\nthe agent's task ended {_state(final)}: {first_line(final.error, 200)}")
    print()
    return final


async def _until_no_key(keys_left: Callable[[], Awaitable[int]]) -> None:
    # Polled: nothing tells the command line that a key was disabled.
    while await keys_left():  # noqa: ASYNC110
        await asyncio.sleep(KEY_CHECK_SECONDS)


async def _follow(stub: Stub, root_id: str, names: dict[str, str]) -> None:
    """The agent's tool calls from its trace as they come, and its subtasks: each as it is
    delegated (its parent's children, read a few times a second) and as it ends."""
    tools: dict[str, str] = {}
    seen: set[str] = set()
    endings: list[asyncio.Task[None]] = []

    async def ended(child_id: str) -> None:
        async for _ in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=child_id)):
            pass
        child = await stub.GetTask(scheduler_pb2.GetTaskRequest(task_id=child_id))
        where = names.get(child.assigned_agent, child.assigned_agent or "-")
        print(
            f"    {_state(child):<9} {child.spec.description:<18} on {where:<6}"
            f"  {first_line(child.output or child.error)}",
            flush=True,
        )

    async def discover() -> None:
        listing = await stub.ListTasks(
            scheduler_pb2.ListTasksRequest(parent_id=root_id, page_size=1000)
        )
        created = sorted(listing.tasks, key=lambda t: (t.created_at.ToMicroseconds(), t.id))
        for child in created:
            if child.id in seen:
                continue
            seen.add(child.id)
            what = f"`{child.spec.command}`" if child.spec.command else child.spec.kind
            print(f"  + delegated {child.id}: {child.spec.description or '-'}, {what}", flush=True)
            endings.append(asyncio.create_task(ended(child.id)))

    async def keep_discovering() -> None:
        while True:
            await discover()
            await asyncio.sleep(DISCOVERY_SECONDS)

    discovering = asyncio.create_task(keep_discovering())
    try:
        async for event in stub.WatchTask(scheduler_pb2.WatchTaskRequest(task_id=root_id)):
            if event.WhichOneof("payload") == "tool_result":
                # A delegation's subtasks exist (and most have ended) when its tool answers:
                # they are told before what the tool answered.
                await discover()
                if endings:
                    await asyncio.wait(endings, timeout=ENDING_SECONDS)
            line = _event_line(event, tools, names)
            if line:
                print(line, flush=True)
        discovering.cancel()
        await discover()  # any delegated in the last moment
        await asyncio.gather(*endings)
    finally:
        for side_task in (discovering, *endings):
            side_task.cancel()
        await asyncio.gather(discovering, *endings, return_exceptions=True)


def _event_line(event: task_pb2.TaskEvent, tools: dict[str, str], names: dict[str, str]) -> str:
    """What the demo says of one event of the agent's trace ("" for its text and the rest)."""
    match event.WhichOneof("payload"):
        case "status" if event.status.message.startswith("attempt"):
            return f"  · {_named(event.status.message, names)}"
        case "tool_use":
            use = event.tool_use
            tools[use.tool_id] = use.tool_name
            return f"  ⚙ {use.tool_name}{_call(use.tool_name, use.parameters_json)}"
        case "tool_result":
            result = event.tool_result
            name = tools.get(result.tool_id, result.tool_id)
            if result.status != "success":
                problem = first_line(result.error_message or result.output, 160)
                return f"  ✗ {name}: {problem}"
            return f"  ✓ {name}: {_outcome(name, result.output, names)}"
        case "refusal":
            return f"  ✗ refused `{event.refusal.command}`: {event.refusal.detail}"
        case "api_error":
            return f"  ✗ API error: {first_line(event.api_error.message, 160)}"
        case "result":
            where = names.get(event.agent_id, event.agent_id)
            tokens = event.result.usage.total_tokens
            return f"  ● {state_name(event.result.state)}" + (
                f" on {where} · {tokens} tokens" if where else ""
            )
    return ""


def _call(name: str, parameters_json: str) -> str:
    """A tool call's parameters, in a few words."""
    parameters = _parsed(parameters_json)
    if not isinstance(parameters, dict):
        return ""
    if name.endswith("delegate_many"):
        return f": {len(parameters.get('subtasks') or [])} subtasks"
    if name.endswith("delegate"):
        what = parameters.get("command") or parameters.get("prompt") or ""
        return f": {parameters.get('description', '')}, `{first_line(str(what), 60)}`"
    shown = json.dumps(parameters, ensure_ascii=False)
    return f" {first_line(shown, 100)}" if parameters else ""


def _outcome(name: str, output: str, names: dict[str, str]) -> str:
    """A mesh tool's JSON result in a few words; another tool's first line."""
    value = _parsed(output)
    if name.endswith("list_agents") and isinstance(value, list):
        agents = [names.get(a.get("agent_id", ""), a.get("agent_id", "?")) for a in value]
        return f"{len(agents)} agents: {', '.join(agents)}"
    if name.endswith("delegate_many") and isinstance(value, list):
        states = Counter(item.get("state") or "not started" for item in value)
        return ", ".join(f"{count} {state}" for state, count in states.items())
    if isinstance(value, dict) and "state" in value:
        return f"{value['state']} on {names.get(value.get('agent', ''), value.get('agent', '-'))}"
    return first_line(output, 100)


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _named(text: str, names: dict[str, str]) -> str:
    for agent_id, name in names.items():
        if agent_id:
            text = text.replace(agent_id, name)
    return text


def _state(task: task_pb2.Task) -> str:
    return state_name(task.state)
