"""The gRPC contract: fixed full names, natural JSON, and checked-in code that matches it."""

from __future__ import annotations

import filecmp
import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

from google.protobuf import json_format

from agentmesh.v1 import node_pb2, scheduler_pb2, task_pb2

REPO = Path(__file__).resolve().parent.parent


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "protos_generate", REPO / "protos" / "generate.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _differences(left: Path, right: Path) -> list[str]:
    """Relative paths of files that differ, or exist on one side only."""
    comparison = filecmp.dircmp(left, right, ignore=["__pycache__"])
    found: list[str] = []

    def walk(cmp: filecmp.dircmp[str], prefix: str) -> None:
        found.extend(prefix + name for name in cmp.left_only + cmp.right_only)
        for name in cmp.common_files:
            if (Path(cmp.left) / name).read_bytes() != (Path(cmp.right) / name).read_bytes():
                found.append(prefix + name)
        for name, sub in cmp.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(comparison, "")
    return sorted(found)


def test_checked_in_code_matches_the_protos(tmp_path: Path) -> None:
    _load_generator().generate(tmp_path)
    assert _differences(tmp_path / "agentmesh", REPO / "generated" / "agentmesh") == [], (
        "generated/ is stale: run `make protos`"
    )


def test_editing_a_proto_without_regenerating_is_caught(tmp_path: Path) -> None:
    protos = tmp_path / "protos"
    shutil.copytree(REPO / "protos", protos, ignore=shutil.ignore_patterns("*.py"))
    task_proto = protos / "agentmesh" / "v1" / "task.proto"
    task_proto.write_text(
        task_proto.read_text().replace(
            "  string on_refusal = 18;\n}", "  string on_refusal = 18;\n  string extra = 99;\n}"
        )
    )
    out = tmp_path / "out"
    _load_generator().generate(out, proto_root=protos)

    assert "v1/task_pb2.py" in _differences(out / "agentmesh", REPO / "generated" / "agentmesh")


def test_services_have_their_fixed_full_names() -> None:
    node = node_pb2.DESCRIPTOR.services_by_name["AgentNode"]
    scheduler = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"]

    assert node.full_name == "agentmesh.v1.AgentNode"
    assert set(node.methods_by_name) == {"GetCapabilities", "ExecuteTask", "CancelTask", "Work"}
    assert scheduler.full_name == "agentmesh.v1.Scheduler"
    assert set(scheduler.methods_by_name) == {
        "SubmitTask",
        "SubmitTasks",
        "RunTask",
        "WatchTask",
        "WatchTaskEvents",
        "GetTask",
        "ListTasks",
        "CancelTask",
        "ListAgents",
        "ListHosts",
        "Heartbeat",
        "DelegateTask",
        "ListApprovals",
        "ApproveTask",
        "DenyTask",
        "ForgetApproval",
    }
    streaming = {m.name for m in scheduler.methods if m.server_streaming}
    assert streaming == {"RunTask", "WatchTask", "WatchTaskEvents"}
    assert [m.name for m in node.methods if m.server_streaming] == ["ExecuteTask", "Work"]
    assert [m.name for m in node.methods if m.client_streaming] == ["Work"]


def test_task_states_follow_a2a_names() -> None:
    names = set(task_pb2.TaskState.keys())
    assert {
        "TASK_STATE_SUBMITTED",
        "TASK_STATE_WORKING",
        "TASK_STATE_INPUT_REQUIRED",
        "TASK_STATE_COMPLETED",
        "TASK_STATE_FAILED",
        "TASK_STATE_CANCELED",
        "TASK_STATE_REJECTED",
    } <= names


def test_grpcurl_json_reads_naturally() -> None:
    request = json_format.Parse(
        '{"spec":{"kind":"shell","command":"uname -a","requiredCapabilities":["os:linux"],'
        '"permissionMode":"weak","subtasks":[{"kind":"echo","prompt":"hi"}]}}',
        scheduler_pb2.SubmitTaskRequest(),
    )
    assert request.spec.kind == "shell"
    assert request.spec.command == "uname -a"
    assert list(request.spec.required_capabilities) == ["os:linux"]
    assert request.spec.subtasks[0].prompt == "hi"
    watch = json_format.Parse('{"taskId":"t-1","afterSeq":"5"}', scheduler_pb2.WatchTaskRequest())
    assert (watch.task_id, watch.after_seq) == ("t-1", 5)


def test_generated_package_is_importable_as_installed() -> None:
    from agentmesh.v1 import node_pb2_grpc, scheduler_pb2_grpc

    assert hasattr(node_pb2_grpc, "AgentNodeServicer")
    assert hasattr(scheduler_pb2_grpc, "SchedulerStub")
