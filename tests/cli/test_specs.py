"""The command line's pure parts, without a process: specs from flags and files, the spec of
a replay, and `--since`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agentmesh.cli.client import CliError
from agentmesh.cli.listing import parse_since
from agentmesh.cli.specs import SpecFlags, build_spec, build_specs, replay_spec
from agentmesh.v1 import task_pb2


def test_flags_imply_the_kind_and_override_a_file(tmp_path: Path) -> None:
    assert build_spec(SpecFlags(command="uname"), None).kind == "shell"
    assert build_spec(SpecFlags(prompt="hi"), None).kind == "gemini"
    assert build_spec(SpecFlags(kind="echo", prompt="hi"), None).kind == "echo"
    with pytest.raises(CliError, match="nothing to run"):
        build_spec(SpecFlags(), None)

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(
        '{"kind": "shell", "command": "df", "targetHost": "desk", "user": "ana",'
        ' "required_capabilities": ["disk"]}'
    )
    spec = build_spec(SpecFlags(host="laptop", capabilities=("gpu", "net")), str(spec_file))
    assert (spec.command, spec.target_host, spec.user) == ("df", "laptop", "ana")
    assert list(spec.required_capabilities) == ["gpu", "net"]


def test_a_replay_rebuilds_the_tree_without_the_idempotency_key() -> None:
    leaf = task_pb2.Task(
        id="t-leaf", spec=task_pb2.TaskSpec(kind="shell", command="uname", idempotency_key="k2")
    )
    root = task_pb2.Task(
        id="t-root",
        spec=task_pb2.TaskSpec(description="tree", idempotency_key="k1"),
        child_ids=["t-leaf"],
    )

    spec = replay_spec([root, leaf], "t-root")

    assert spec == task_pb2.TaskSpec(
        description="tree", subtasks=[task_pb2.TaskSpec(kind="shell", command="uname")]
    )


def test_since_takes_durations_dates_and_times() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert parse_since("90s", now) == now - timedelta(seconds=90)
    assert parse_since("2d", now) == now - timedelta(days=2)
    assert parse_since("1w", now) == now - timedelta(weeks=1)
    assert parse_since("2026-11-30T08:00+00:00", now) == datetime(2026, 11, 30, 8, tzinfo=UTC)
    local = parse_since("2026-11-30", now)
    assert local.tzinfo is not None
    assert local.replace(tzinfo=None) == datetime(2026, 11, 30)
    with pytest.raises(CliError, match="use a duration"):
        parse_since("last tuesday", now)


def test_a_list_file_gives_each_spec_by_its_index(tmp_path: Path) -> None:
    listed = tmp_path / "tasks.json"
    listed.write_text('[{"kind": "echo", "prompt": "a"}, {"command": "df"}]')
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("- kind: echo\n  prompt: a\n- just text\n")
    empty = tmp_path / "empty.json"
    empty.write_text("[]")

    built = build_specs(SpecFlags(user="ana"), str(listed))

    assert built.listed
    assert [(s.kind, s.user) for s in built.specs] == [("echo", "ana"), ("shell", "ana")]
    with pytest.raises(CliError, match=r"wrong\.yaml\[1\]: a task spec must be a mapping"):
        build_specs(SpecFlags(), str(wrong))
    with pytest.raises(CliError, match=r"empty\.json: the list of task specs is empty"):
        build_specs(SpecFlags(), str(empty))
    with pytest.raises(CliError, match="holds a list of task specs"):
        build_spec(SpecFlags(), str(listed))
