"""The wire check of a request's TaskSpec tree, on bytes, without parsing them."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from google.protobuf.message import DecodeError

from agentmesh.errors import InvalidArgument
from agentmesh.rpc.request_shape import SpecShape, check_request
from agentmesh.tasks.model import MAX_CAPABILITIES, SCHEDULER_ONLY_FIELDS
from agentmesh.v1 import node_pb2, scheduler_pb2, task_pb2

SUBMISSION = SpecShape(max_tasks=1000, max_depth=4)
NODE = SpecShape(max_tasks=1, max_depth=0, refused_fields=SCHEDULER_ONLY_FIELDS)
SPEC_FIELD = 1  # SubmitTaskRequest.spec
SUBTASKS = task_pb2.TaskSpec.DESCRIPTOR.fields_by_name["subtasks"].number  # 13
ONE_TASK = SpecShape(max_tasks=1, max_depth=0)  # DelegateTask's
INVALID = "is not a valid protobuf message"

# Protobuf's wire types (protobuf.dev/programming-guides/encoding): a field's key on the wire
# is its number shifted left by three, or'ed with one of these.
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


def submission(spec: task_pb2.TaskSpec) -> bytes:
    return scheduler_pb2.SubmitTaskRequest(spec=spec, replay_of="t-0").SerializeToString()


def refusal(data: bytes, shape: SpecShape = SUBMISSION, spec_field: int = SPEC_FIELD) -> str:
    with pytest.raises(InvalidArgument) as refused:
        check_request(data, spec_field, shape)
    return str(refused.value)


def leaf(text: str = "x") -> task_pb2.TaskSpec:
    return task_pb2.TaskSpec(kind="echo", prompt=text)


def test_a_tree_within_the_limits_passes() -> None:
    spec = task_pb2.TaskSpec(
        kind="echo",
        prompt="p" * 100_000,
        required_capabilities=["gpu"] * 64,
        subtasks=[leaf() for _ in range(997)] + [task_pb2.TaskSpec(subtasks=[leaf()])],  # 1000
    )

    check_request(submission(spec), SPEC_FIELD, SUBMISSION)


def test_one_task_more_than_the_limit_is_refused() -> None:
    spec = task_pb2.TaskSpec(subtasks=[leaf() for _ in range(1000)])  # 1001 with the root

    assert refusal(submission(spec)) == (
        "spec.subtasks: more than 1000 tasks in one request; the limit is 1000"
    )


def test_nesting_one_level_past_the_limit_names_the_path() -> None:
    spec = leaf()
    for _ in range(4):
        spec = task_pb2.TaskSpec(subtasks=[leaf(), spec])
    check_request(submission(spec), SPEC_FIELD, SUBMISSION)  # 4 levels: the limit

    deeper = task_pb2.TaskSpec(subtasks=[spec])
    assert refusal(submission(deeper)) == (
        "spec.subtasks[0].subtasks[1].subtasks[1].subtasks[1].subtasks:"
        " subtasks are nested deeper than the limit of 4"
    )


def test_millions_of_repeated_fields_are_refused_by_the_field_budget() -> None:
    spec = task_pb2.TaskSpec(kind="echo", prompt="x", required_capabilities=[""] * 100_000)

    # Each task may carry every TaskSpec field once and MAX_CAPABILITIES capabilities.
    per_task = len(task_pb2.TaskSpec.DESCRIPTOR.fields) + MAX_CAPABILITIES
    assert refusal(submission(spec)) == (
        f"spec: has more than {1000 * per_task} fields in all (the most a request of 1000"
        " tasks can need)"
    )


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05\x0a\x04ech",  # a length past the end
        b"\x0a\x02\x08\xff",  # a varint that never ends
        b"\x0a\x01\x0b",  # a group (wire type 3)
    ],
)
def test_bytes_that_are_no_message_are_refused(data: bytes) -> None:
    assert "is not a valid protobuf message" in refusal(data)


@pytest.mark.parametrize("name", sorted(SCHEDULER_ONLY_FIELDS))
def test_a_node_refuses_each_scheduler_only_field(name: str) -> None:
    values: dict[str, object] = {
        "subtasks": [leaf()],
        "required_capabilities": ["gpu"],
        "user": "ana",
        "target_host": "desk",
        "idempotency_key": "k",
        "description": "d",
        "remember_as": "label",
        "on_refusal": "ask",
    }
    spec = task_pb2.TaskSpec(kind="echo", prompt="x", **{name: values.get(name, 3)})  # type: ignore[arg-type]
    request = node_pb2.ExecuteTaskRequest(task_id="t-1", spec=spec).SerializeToString()

    assert refusal(request, NODE, spec_field=3) == f"spec.{name}: {SCHEDULER_ONLY_FIELDS[name]}"


def test_a_node_takes_what_it_acts_on() -> None:
    spec = task_pb2.TaskSpec(
        kind="gemini",
        prompt="hi",
        model="gemini-2.5-flash",
        timeout_seconds=5,
        permission_mode="weak",
        agent_mode="plain",
    )
    request = node_pb2.ExecuteTaskRequest(task_id="t-1", attempt=2, spec=spec, token_budget=9)

    check_request(request.SerializeToString(), 3, NODE)


def varint(value: int) -> bytes:
    """`value` as a varint: seven bits a byte, the lowest first, the top bit on all but the last."""
    encoded = bytearray()
    while value > 0x7F:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(encoded) + bytes([value])


def key(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def message_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (a message, a string): key, the payload's length, payload."""
    return key(number, LENGTH) + varint(len(payload)) + payload


# A field of each wire type, numbered past every field of these messages, as a newer sender
# might send them: protobuf keeps unknown fields aside, so the walk must step over each by
# its own size to find the fields after it.
UNKNOWN_FIELDS = (
    key(100, VARINT) + varint(300),  # the value in two bytes: ac 02
    key(101, FIXED64) + struct.pack("<d", 0.5),  # a double: eight bytes
    key(102, LENGTH) + varint(3) + b"new",
    key(103, FIXED32) + struct.pack("<f", 0.5),  # a float: four bytes
)
UNKNOWN = b"".join(UNKNOWN_FIELDS)
UNKNOWN_REVERSED = b"".join(reversed(UNKNOWN_FIELDS))


def test_unknown_fields_of_every_wire_type_are_stepped_over() -> None:
    grandchild = message_field(1, b"echo")  # kind
    child = UNKNOWN + message_field(SUBTASKS, grandchild) + UNKNOWN_REVERSED
    spec = (
        UNKNOWN_REVERSED
        + message_field(SUBTASKS, child)
        + UNKNOWN
        + message_field(SUBTASKS, b"")
        + UNKNOWN_REVERSED
    )
    request = UNKNOWN + message_field(SPEC_FIELD, spec) + UNKNOWN_REVERSED
    parsed = scheduler_pb2.SubmitTaskRequest.FromString(request)
    assert (len(parsed.spec.subtasks), parsed.spec.subtasks[0].subtasks[0].kind) == (2, "echo")

    check_request(request, SPEC_FIELD, SpecShape(max_tasks=4, max_depth=2))
    # Every subtask behind them is still counted, and its depth checked.
    assert refusal(request, SpecShape(max_tasks=3, max_depth=2)) == (
        "spec.subtasks: more than 3 tasks in one request; the limit is 3"
    )
    assert refusal(request, SpecShape(max_tasks=4, max_depth=1)) == (
        "spec.subtasks[0].subtasks: subtasks are nested deeper than the limit of 1"
    )


# Each as the last field of a request, of its spec, or of a subtask; with 300 bytes before it
# in each (a replay_of or a prompt), so that it starts past offset 256.
BROKEN_FIELDS = {
    "a fixed64 one byte short": key(15, FIXED64) + bytes(7),
    "a fixed32 one byte short": key(15, FIXED32) + bytes(3),
    "a length past the end": key(15, LENGTH) + varint(5) + b"four",
    "a varint cut off": key(15, VARINT) + b"\xff",
    "a varint of 11 bytes (10 at most)": key(15, VARINT) + b"\xff" * 10 + b"\x01",
    "a group's start (wire type 3)": key(15, 3) + b"\x00",
    "a group's end (wire type 4)": key(15, 4) + b"\x00",
    "wire type 6": key(15, 6) + b"\x00",
    "wire type 7": key(15, 7) + b"\x00",
}
LONG_PROMPT = message_field(2, b"p" * 300)


@pytest.mark.parametrize("broken", BROKEN_FIELDS.values(), ids=BROKEN_FIELDS.keys())
@pytest.mark.parametrize(
    ("wrap", "named"),
    [
        (lambda bad: message_field(2, b"r" * 300) + bad, "(request)"),  # after a replay_of
        (lambda bad: message_field(SPEC_FIELD, LONG_PROMPT + bad), "spec"),
        (
            lambda bad: message_field(SPEC_FIELD, message_field(SUBTASKS, LONG_PROMPT + bad)),
            "spec.subtasks[0]",
        ),
    ],
    ids=["request", "spec", "subtask"],
)
def test_a_broken_field_is_refused_naming_the_message_it_is_in(
    broken: bytes, wrap: Callable[[bytes], bytes], named: str
) -> None:
    request = wrap(broken)
    with pytest.raises(DecodeError):  # protobuf would refuse it too, without saying where
        scheduler_pb2.SubmitTaskRequest.FromString(request)

    assert refusal(request) == f"{named}: {INVALID}"


def test_a_ten_byte_varint_passes() -> None:
    request = submission(task_pb2.TaskSpec(kind="echo", prompt="x", priority=-1))
    assert b"\xff" * 9 + b"\x01" in request  # a negative number is ten bytes on the wire

    check_request(request, SPEC_FIELD, SUBMISSION)


@pytest.mark.parametrize(
    "field",
    [
        key(SPEC_FIELD, VARINT) + varint(5),
        key(SPEC_FIELD, FIXED64) + b"\xff" * 8,
        key(SPEC_FIELD, FIXED32) + b"\xff" * 4,
    ],
    ids=["varint", "fixed64", "fixed32"],
)
def test_a_spec_field_that_is_not_length_delimited_is_no_spec(field: bytes) -> None:
    # Protobuf keeps a field of the wrong wire type aside: the request has no spec to check
    # (the handler says so), and its value is not walked as one.
    assert not scheduler_pb2.SubmitTaskRequest.FromString(field).HasField("spec")

    check_request(field, SPEC_FIELD, SUBMISSION)


@pytest.mark.parametrize(
    "field",
    [
        key(SUBTASKS, VARINT) + varint(5),
        key(SUBTASKS, FIXED64) + bytes(8),
        key(SUBTASKS, FIXED32) + bytes(4),
    ],
    ids=["varint", "fixed64", "fixed32"],
)
def test_a_subtasks_field_that_is_not_length_delimited_is_no_subtask(field: bytes) -> None:
    request = message_field(SPEC_FIELD, message_field(1, b"echo") + field)
    assert not scheduler_pb2.SubmitTaskRequest.FromString(request).spec.subtasks

    check_request(request, SPEC_FIELD, ONE_TASK)  # no subtasks allowed, and none counted


def test_the_field_budget_takes_exactly_its_size() -> None:
    per_task = len(task_pb2.TaskSpec.DESCRIPTOR.fields) + MAX_CAPABILITIES
    # The spec field, its kind and capabilities: exactly the budget of a one-task request.
    spec = task_pb2.TaskSpec(kind="echo", required_capabilities=["gpu"] * (per_task - 2))
    check_request(scheduler_pb2.DelegateTaskRequest(spec=spec).SerializeToString(), 1, ONE_TASK)

    spec.required_capabilities.append("gpu")
    request = scheduler_pb2.DelegateTaskRequest(spec=spec).SerializeToString()
    assert refusal(request, ONE_TASK) == (
        f"spec: has more than {per_task} fields in all (the most a request of 1 tasks can need)"
    )


def test_a_batch_s_specs_are_named_by_index_and_their_tasks_counted_together() -> None:
    specs_field = scheduler_pb2.SubmitTasksRequest.DESCRIPTOR.fields_by_name["specs"].number
    deep = task_pb2.TaskSpec(subtasks=[task_pb2.TaskSpec(subtasks=[leaf()])])
    two_deep = SpecShape(max_tasks=1000, max_depth=1)

    def batch(*specs: task_pb2.TaskSpec) -> bytes:
        return scheduler_pb2.SubmitTasksRequest(specs=specs).SerializeToString()

    check_request(batch(*[leaf()] * 1000), specs_field, SUBMISSION, "specs")
    with pytest.raises(InvalidArgument) as too_many:
        check_request(batch(*[leaf()] * 1001), specs_field, SUBMISSION, "specs")
    with pytest.raises(InvalidArgument) as too_deep:
        check_request(batch(leaf(), deep), specs_field, two_deep, "specs")

    assert str(too_many.value) == "specs: more than 1000 tasks in one request; the limit is 1000"
    assert str(too_deep.value) == (
        "specs[1].subtasks[0].subtasks: subtasks are nested deeper than the limit of 1"
    )
