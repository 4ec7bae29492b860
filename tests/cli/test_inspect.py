"""`submit -f`, `tasks`, `task`, `agents`, `network` and `replay`: their JSON documents have
the documented fields, filters filter, and a replay is linked to its original."""

from __future__ import annotations

import json

from tests.cli.conftest import Cli

TASK_FIELDS = {
    "id", "state", "kind", "description", "user", "parent_id", "child_ids", "replay_of",
    "agent_id", "attempt", "max_attempts", "waiting_reason", "exit_code", "output", "error",
    "usage", "created_at", "started_at", "finished_at", "duration_seconds", "spec",
}  # fmt: skip
USAGE_FIELDS = {
    "input_tokens", "output_tokens", "cached_tokens", "total_tokens", "duration_ms",
    "tool_calls", "model",
}  # fmt: skip
AGENT_FIELDS = {
    "agent_id", "name", "hostname", "endpoint", "ip_addresses", "status", "executors",
    "capabilities", "running_tasks", "max_concurrency", "version", "last_heartbeat",
    "max_permission_mode", "sandbox",
}  # fmt: skip
HOST_FIELDS = {"host_name", "ip_address", "service", "tags", "notes", "last_seen"}

TREE = """\
description: inventory
user: ana
subtasks:
  - kind: shell
    command: uname -s
    description: kernel
  - kind: echo
    prompt: hello from echo
    description: greeting
"""


async def test_a_tree_from_a_yaml_file_then_tasks_task_and_replay(cli: Cli) -> None:
    (cli.cwd / "tree.yaml").write_text(TREE)

    run = await cli("run", "-f", "tree.yaml")

    assert run.returncode == 0, run
    # Each line of a subtask carries its title.
    assert "[kernel] Linux\n" in run.stdout
    assert "[greeting] hello from echo\n" in run.stdout
    root_id = run.task_id()

    shown = json.loads((await cli("task", root_id, "--json")).stdout)
    assert set(shown) >= TASK_FIELDS
    assert set(shown["usage"]) == USAGE_FIELDS
    assert (shown["state"], shown["user"], shown["kind"]) == ("completed", "ana", "")
    assert [s["description"] for s in shown["subtasks"]] == ["kernel", "greeting"]
    kernel = shown["subtasks"][0]
    assert kernel["output"] == "Linux\n"
    assert kernel["node"]["name"] == "alpha"
    assert kernel["attempts"] == [{"attempt": 1, "node": "alpha", "outcome": "completed"}]
    assert kernel["events"]["by_type"]["result"] == 1
    plain = await cli("task", root_id)
    assert plain.returncode == 0, plain
    assert "subtasks:" in plain.stdout
    assert "kernel" in plain.stdout

    children = json.loads((await cli("tasks", "--parent", root_id, "--json")).stdout)
    assert sorted(t["description"] for t in children) == ["greeting", "kernel"]
    assert all(set(t) == TASK_FIELDS for t in children)
    recent = await cli("tasks", "--since", "10m", "--state", "completed", "--user", "ana")
    assert recent.stdout.splitlines()[0].split() == [
        "ID", "STATE", "KIND", "TASK", "NODE", "CREATED", "TIME"
    ]  # fmt: skip
    assert root_id in recent.stdout
    later = json.loads((await cli("tasks", "--since", "2999-01-01", "--json")).stdout)
    assert later == []

    replay = await cli("replay", root_id)

    assert replay.returncode == 0, replay
    new_id = replay.task_id()
    assert new_id != root_id
    assert "[kernel] Linux\n" in replay.stdout
    table = replay.stdout.split("\n\n")[-1].splitlines()
    assert table[0].split() == ["original", "replay"]
    assert table[1].split() == ["task", root_id, new_id]
    assert table[2].split() == ["state", "completed", "completed"]
    replayed = json.loads((await cli("task", new_id, "--json")).stdout)
    assert replayed["replay_of"] == root_id
    assert [s["spec"] for s in replayed["subtasks"]] == [s["spec"] for s in shown["subtasks"]]


async def test_submit_agents_and_network_json(cli: Cli) -> None:
    submitted = await cli("submit", "--kind", "echo", "--prompt", "hi", "--json")
    task = json.loads(submitted.stdout)
    assert set(task) == TASK_FIELDS
    assert task["spec"] == {"kind": "echo", "prompt": "hi"}

    agents = json.loads((await cli("agents", "--json")).stdout)
    assert [set(agent) for agent in agents] == [AGENT_FIELDS]
    alpha = agents[0]
    assert (alpha["name"], alpha["status"]) == ("alpha", "online")
    assert "inventory" in alpha["capabilities"]
    assert "shell" in alpha["executors"]
    table = await cli("agents")
    assert table.stdout.splitlines()[1].split()[0] == "alpha"

    hosts = json.loads((await cli("network", "--json")).stdout)
    assert [set(host) for host in hosts] == [HOST_FIELDS]
    assert hosts[0]["host_name"] == alpha["hostname"]
    assert hosts[0]["service"] == "agentmesh-node"
    assert "inventory" in hosts[0]["tags"]


LIST = """\
- kind: echo
  prompt: first
- kind: echo
  prompt: second
- description: pair
  subtasks:
    - {kind: echo, prompt: left}
"""


async def test_a_file_with_a_list_of_specs_is_submitted_in_one_call(cli: Cli) -> None:
    (cli.cwd / "tasks.yaml").write_text(LIST)
    (cli.cwd / "broken.yaml").write_text(LIST + "- kind: shell\n")

    submitted = await cli("submit", "-f", "tasks.yaml", "--user", "ana")
    as_json = await cli("submit", "-f", "tasks.yaml", "--json")
    broken = await cli("submit", "-f", "broken.yaml")
    not_for_run = await cli("run", "-f", "tasks.yaml")

    assert submitted.returncode == 0, submitted
    ids = submitted.stdout.split()
    assert len(ids) == 3
    shown = [json.loads((await cli("task", task_id, "--json")).stdout) for task_id in ids]
    assert [task["spec"].get("prompt", "") for task in shown] == ["first", "second", ""]
    assert {task["user"] for task in shown} == {"ana"}  # the flags apply to each
    documents = json.loads(as_json.stdout)
    assert [set(task) >= TASK_FIELDS for task in documents] == [True] * 3
    broken.assert_one_error_line("invalid request: specs[3].command: must not be empty")
    not_for_run.assert_one_error_line("tasks.yaml: holds a list of task specs")
    listed = json.loads((await cli("tasks", "--json")).stdout)
    assert len([task for task in listed if not task["parent_id"]]) == 6  # none of broken.yaml
