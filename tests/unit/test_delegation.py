"""The limits of self-orchestration, without a database: what a running agent may delegate
(`shape_delegation`), the mesh credentials it acts with, and the access policies that let
those credentials call only the task methods."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac

import grpc
import pytest

from agentmesh.access.credentials import NodeIdentity, Verified
from agentmesh.access.policies import OpenSchedulerAccess, SchedulerAccess
from agentmesh.access.task_credentials import TaskCredentials, TaskIdentity
from agentmesh.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Reason,
)
from agentmesh.rpc.auth import Refusal
from agentmesh.scheduler.delegation import (
    DelegationLimits,
    shape_delegation,
    validate_delegation,
)
from agentmesh.scheduler.store import DelegatingParent
from agentmesh.tasks.model import AgentMode, TaskSpec

LIMITS = DelegationLimits(max_depth=3, max_delegations=4)
PARENT = DelegatingParent(
    id="t-parent",
    spec=TaskSpec(kind="gemini", prompt="plan", user="ada", priority=5),
    user="ada",
    depth=0,
    delegations=0,
    tokens_granted=0,
)
SHELL = TaskSpec(kind="shell", command="uname -a", description="kernel")


def parent(**changes: object) -> DelegatingParent:
    return dataclasses.replace(PARENT, **changes)  # type: ignore[arg-type]


def budgeted(max_tokens: int, granted: int = 0) -> DelegatingParent:
    return parent(
        spec=dataclasses.replace(PARENT.spec, max_tokens=max_tokens), tokens_granted=granted
    )


# ----------------------------------------------------------------- shape_delegation


def test_a_subtask_runs_as_its_parents_user_in_its_mode_with_its_priority() -> None:
    child = shape_delegation(PARENT, SHELL, LIMITS)
    assert child.user == "ada"
    assert child.permission_mode == "weak"
    assert child.priority == 5
    assert child.command == "uname -a"


def test_a_superuser_parent_passes_its_mode_on_and_may_delegate_lower() -> None:
    root = parent(spec=dataclasses.replace(PARENT.spec, permission_mode="superuser"))
    assert shape_delegation(root, SHELL, LIMITS).permission_mode == "superuser"
    weak = dataclasses.replace(SHELL, permission_mode="weak")
    assert shape_delegation(root, weak, LIMITS).permission_mode == "weak"


def test_a_mode_above_the_parents_is_refused() -> None:
    above = dataclasses.replace(SHELL, permission_mode="superuser")
    with pytest.raises(PermissionDenied) as refused:
        shape_delegation(PARENT, above, LIMITS)
    assert refused.value.reason is Reason.MODE_ABOVE_PARENT
    assert str(refused.value) == (
        "spec.permission_mode: superuser is above the parent's mode (weak); a delegated"
        " subtask runs at most in its parent's mode"
    )


def test_a_parent_that_names_no_mode_counts_as_weak() -> None:
    # It ran in its node's default, which the scheduler cannot see: the least is assumed.
    assert PARENT.spec.permission_mode == ""
    assert shape_delegation(PARENT, SHELL, LIMITS).permission_mode == "weak"
    with pytest.raises(PermissionDenied):
        shape_delegation(PARENT, dataclasses.replace(SHELL, permission_mode="superuser"), LIMITS)


@pytest.mark.parametrize("user", ["eve", "abe"])  # sorting after the parent's name, and before
def test_another_users_subtask_is_refused(user: str) -> None:
    with pytest.raises(PermissionDenied) as refused:
        shape_delegation(PARENT, dataclasses.replace(SHELL, user=user), LIMITS)
    assert str(refused.value) == "spec.user: a delegated subtask runs as its parent's user (ada)"
    nobody = parent(user="")
    with pytest.raises(PermissionDenied) as refused:
        shape_delegation(nobody, dataclasses.replace(SHELL, user=user), LIMITS)
    assert str(refused.value).endswith("runs as its parent's user (none)")


def test_the_parents_own_name_is_fine() -> None:
    same = "".join(["a", "da"])  # equal to the parent's user, not the same object
    assert shape_delegation(PARENT, dataclasses.replace(SHELL, user=same), LIMITS).user == "ada"


@pytest.mark.parametrize(("done", "allowed"), [(3, True), (4, False), (9, False)])
def test_a_task_delegates_at_most_max_delegations(done: int, allowed: bool) -> None:
    if allowed:
        shape_delegation(parent(delegations=done), SHELL, LIMITS)
        return
    with pytest.raises(FailedPrecondition, match="max_delegations") as refused:
        shape_delegation(parent(delegations=done), SHELL, LIMITS)
    assert refused.value.reason is Reason.DELEGATION_LIMIT


@pytest.mark.parametrize(("depth", "allowed"), [(0, True), (2, True), (3, False)])
def test_subtasks_nest_at_most_max_subtask_depth(depth: int, allowed: bool) -> None:
    if allowed:
        shape_delegation(parent(depth=depth), SHELL, LIMITS)
        return
    with pytest.raises(FailedPrecondition) as refused:
        shape_delegation(parent(depth=depth), SHELL, LIMITS)
    assert refused.value.reason is Reason.DEPTH_LIMIT
    assert str(refused.value) == (
        f"a subtask of t-parent would be {depth + 1} levels deep, past the limit of 3"
        " (scheduler.max_subtask_depth)"
    )


def test_a_gemini_subtask_gets_what_is_left_of_the_parents_budget() -> None:
    agent = TaskSpec(kind="gemini", prompt="look")
    child = shape_delegation(budgeted(1000, granted=300), agent, LIMITS, parent_tokens_spent=200)
    assert child.max_tokens == 250  # half of what is left: siblings get theirs
    assert child.agent_mode == AgentMode.AGENTIC.value
    asked = dataclasses.replace(agent, max_tokens=500)
    assert (
        shape_delegation(budgeted(1000, 300), asked, LIMITS, parent_tokens_spent=200).max_tokens
        == 500
    )


@pytest.mark.parametrize(
    ("asked", "spent", "granted", "message"),
    [
        (501, 200, 300, "the subtask asks for 501; its parent has 500 of its 1000 tokens left"),
        (0, 700, 300, "its parent has 0 of its 1000 tokens left"),
        (0, 0, 1000, "its parent has 0 of its 1000 tokens left"),
        (2, 999, 0, "the subtask asks for 2; its parent has 1 of its 1000 tokens left"),
        (0, 1200, 0, "its parent has 0 of its 1000 tokens left"),
    ],
)
def test_more_tokens_than_the_parent_has_left_are_refused(
    asked: int, spent: int, granted: int, message: str
) -> None:
    agent = TaskSpec(kind="gemini", prompt="look", max_tokens=asked)
    with pytest.raises(FailedPrecondition) as refused:
        shape_delegation(budgeted(1000, granted), agent, LIMITS, parent_tokens_spent=spent)
    assert refused.value.reason is Reason.TOKEN_BUDGET
    assert str(refused.value) == (
        f"spec.max_tokens: {message} ({spent} spent, {granted} granted to earlier subtasks)"
    )


def test_the_last_token_left_can_still_be_given() -> None:
    agent = TaskSpec(kind="gemini", prompt="look")
    assert shape_delegation(budgeted(1000), agent, LIMITS, parent_tokens_spent=999).max_tokens == 1
    assert shape_delegation(budgeted(1000), agent, LIMITS, parent_tokens_spent=996).max_tokens == 2
    # Without a count of what it spent, the parent has spent nothing.
    assert shape_delegation(budgeted(1000), agent, LIMITS).max_tokens == 500


def test_without_a_parent_budget_there_is_none_to_share_and_shell_spends_none() -> None:
    agent = TaskSpec(kind="gemini", prompt="look", max_tokens=70)
    assert shape_delegation(PARENT, agent, LIMITS, parent_tokens_spent=10**9).max_tokens == 70
    # A shell or echo subtask spends no tokens: a spent budget neither stops it nor is
    # shared with it.
    assert shape_delegation(budgeted(10, 10), SHELL, LIMITS, parent_tokens_spent=10).command
    echo = TaskSpec(kind="echo", prompt="ping")
    assert shape_delegation(budgeted(10), echo, LIMITS).max_tokens == 0
    assert shape_delegation(budgeted(10, 10), echo, LIMITS, parent_tokens_spent=10).prompt


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (dataclasses.replace(SHELL, subtasks=(SHELL,)), "spec.subtasks"),
        (dataclasses.replace(SHELL, idempotency_key="k"), "spec.idempotency_key"),
        (TaskSpec(kind="shell"), "spec.command"),
        (TaskSpec(kind="bash", command="ls"), "spec.kind"),
    ],
)
def test_what_no_parent_could_delegate_is_an_invalid_argument(spec: TaskSpec, field: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        validate_delegation(spec)
    assert refused.value.field == field


# ----------------------------------------------------------------- mesh credentials


def credentials(key: str = "vault-key") -> TaskCredentials:
    """Keyed as the vault keys them (HMAC-SHA256)."""
    return TaskCredentials(
        lambda purpose: hmac.new(key.encode(), purpose.encode(), hashlib.sha256).hexdigest()
    )


def test_a_credential_names_its_task_and_attempt_and_only_its_key_makes_it() -> None:
    mint = credentials()
    token = mint.mint("t-0123abcd", 2)
    assert mint.verify(token) == TaskIdentity("t-0123abcd", 2)
    assert credentials("another vault").verify(token) is None
    # Another task or attempt with the same mac is not one the scheduler minted.
    assert mint.verify(token.replace("t-0123abcd", "t-0123abce")) is None
    assert mint.verify(token.replace("_2_", "_3_")) is None
    for broken in ("", "amt_", token[:-1], token + "0", token.upper(), "Bearer " + token):
        assert mint.verify(broken) is None


# ----------------------------------------------------------------- access policies

TASK_METHODS = ("DelegateTask", "GetTask", "ListAgents")
USER_METHODS = (
    "SubmitTask",
    "CancelTask",
    "WatchTask",
    "WatchTaskEvents",
    "ListTasks",
    "RunTask",
)


def method(name: str) -> str:
    return f"/agentmesh.v1.Scheduler/{name}"


async def no_node(token: str) -> Verified | None:
    return None


@pytest.mark.parametrize("secured", [False, True], ids=["open", "token"])
async def test_a_mesh_credential_calls_the_task_methods_only(secured: bool) -> None:
    mint = credentials()
    policy = SchedulerAccess("user-token", no_node, mint) if secured else OpenSchedulerAccess(mint)
    token = mint.mint("t-0123abcd", 1)
    for name in TASK_METHODS:
        assert await policy(method(name), token) == TaskIdentity("t-0123abcd", 1)
    for name in (*USER_METHODS, "Heartbeat"):
        refusal = await policy(method(name), token)
        assert isinstance(refusal, Refusal)
        assert refusal.code is grpc.StatusCode.PERMISSION_DENIED
    forged = await policy(method("DelegateTask"), token[:-1] + "f")
    assert isinstance(forged, Refusal)
    assert forged.code is grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("secured", [False, True], ids=["open", "token"])
async def test_delegating_needs_a_mesh_credential_whoever_calls(secured: bool) -> None:
    mint = credentials()
    policy = SchedulerAccess("user-token", no_node, mint) if secured else OpenSchedulerAccess(mint)
    for bearer in ("user-token", None):
        refusal = await policy(method("DelegateTask"), bearer)
        assert isinstance(refusal, Refusal)
    # Everything else is as it was: the user token (or, open, anyone) calls user RPCs.
    assert await policy(method("SubmitTask"), "user-token") is None


async def test_a_node_credential_cannot_delegate() -> None:
    async def node(token: str) -> Verified | None:
        return Verified(NodeIdentity("nc-1", "north", "north-1"), revoked=False)

    policy = SchedulerAccess("user-token", node, credentials())
    refusal = await policy(method("DelegateTask"), "amn_node-token")
    assert isinstance(refusal, Refusal)
    assert refusal.code is grpc.StatusCode.PERMISSION_DENIED


async def test_a_refusal_names_the_rpc_as_people_call_it() -> None:
    """The details a refused caller reads name the RPC by its own name, not the full path."""

    async def node(token: str) -> Verified | None:
        return Verified(NodeIdentity("nc-1", "north", "north-1"), revoked=False)

    mint = credentials()
    policy = SchedulerAccess("user-token", node, mint)
    as_task = mint.mint("t-0123abcd", 1)
    refusals = {
        "a mesh credential cannot call SubmitTask:": await policy(method("SubmitTask"), as_task),
        "DelegateTask is for running agents:": await policy(method("DelegateTask"), "user-token"),
        "Heartbeat is for nodes:": await policy(method("Heartbeat"), "user-token"),
        "a node credential cannot call ListTasks:": await policy(method("ListTasks"), "amn_n"),
    }
    for start, refusal in refusals.items():
        assert isinstance(refusal, Refusal)
        assert refusal.code is grpc.StatusCode.PERMISSION_DENIED
        assert refusal.message.startswith(start), refusal.message
