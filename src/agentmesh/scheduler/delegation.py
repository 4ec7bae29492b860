"""The limits of self-orchestration: what a running agent may delegate, and as what.

An agent's mesh tools start subtasks of its own task (`Scheduler.DelegateTask`). Whatever
the agent asks for, the subtask runs as the parent's user, at most in the parent's
permission mode, within what is left of the parent's token budget, no deeper than
`scheduler.max_subtask_depth` and no more than `agent_defaults.max_delegations` per task.
A request past a limit is refused with the reason, which the agent reads as its tool's
error; nothing is stored. Pure: the store calls `shape_delegation` under the tree's lock.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from agentmesh.config import PermissionMode
from agentmesh.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Reason
from agentmesh.scheduler.store import DelegatingParent
from agentmesh.scheduler.validation import with_defaults
from agentmesh.tasks.model import AgentMode, TaskKind, TaskSpec, validate_runnable


@dataclass(frozen=True)
class DelegationLimits:
    max_depth: int  # scheduler.max_subtask_depth
    max_delegations: int  # agent_defaults.max_delegations
    default_agent_mode: AgentMode = AgentMode.AGENTIC


def validate_delegation(spec: TaskSpec) -> None:
    """What can be told without the parent: a runnable spec that names no other user's
    business. Raises InvalidArgument naming the field."""
    if spec.subtasks:
        raise InvalidArgument(
            "spec.subtasks",
            "a delegated subtask has none of its own (an agent running it may delegate)",
        )
    if spec.idempotency_key:
        raise InvalidArgument("spec.idempotency_key", "is not for delegated subtasks")
    validate_runnable(spec)


def shape_delegation(
    parent: DelegatingParent,
    spec: TaskSpec,
    limits: DelegationLimits,
    *,
    parent_tokens_spent: int = 0,
) -> TaskSpec:
    """The subtask to store for `spec`, delegated by `parent`; or a refusal naming the limit."""
    if parent.delegations >= limits.max_delegations:
        raise FailedPrecondition(
            f"task {parent.id} has delegated {parent.delegations} subtasks, its limit"
            f" (agent_defaults.max_delegations = {limits.max_delegations})",
            reason=Reason.DELEGATION_LIMIT,
        )
    if parent.depth + 1 > limits.max_depth:
        raise FailedPrecondition(
            f"a subtask of {parent.id} would be {parent.depth + 1} levels deep, past the limit"
            f" of {limits.max_depth} (scheduler.max_subtask_depth)",
            reason=Reason.DEPTH_LIMIT,
        )
    if spec.user and spec.user != parent.user:
        raise PermissionDenied(
            f"spec.user: a delegated subtask runs as its parent's user ({parent.user or 'none'})"
        )
    # A parent that names no mode ran in its node's default, which the scheduler cannot see:
    # it counts as the least mode, so a child never runs above what its parent did.
    parent_mode = PermissionMode(parent.spec.permission_mode or PermissionMode.WEAK)
    mode = PermissionMode(spec.permission_mode or parent_mode)
    if mode.exceeds(parent_mode):
        raise PermissionDenied(
            f"spec.permission_mode: {mode} is above the parent's mode ({parent_mode}); a"
            " delegated subtask runs at most in its parent's mode",
            reason=Reason.MODE_ABOVE_PARENT,
        )
    max_tokens = spec.max_tokens
    if spec.kind == TaskKind.GEMINI and parent.spec.max_tokens:
        left = parent.spec.max_tokens - parent_tokens_spent - parent.tokens_granted
        if left <= 0 or max_tokens > left:
            asked = f"the subtask asks for {max_tokens}; " if max_tokens else ""
            raise FailedPrecondition(
                f"spec.max_tokens: {asked}its parent has {max(left, 0)} of its"
                f" {parent.spec.max_tokens} tokens left ({parent_tokens_spent} spent,"
                f" {parent.tokens_granted} granted to earlier subtasks)",
                reason=Reason.TOKEN_BUDGET,
            )
        # By default half of what is left: a first child does not starve its siblings.
        max_tokens = max_tokens or max(left // 2, 1)
    child = dataclasses.replace(
        spec,
        user=parent.user,
        permission_mode=mode.value,
        max_tokens=max_tokens,
        priority=spec.priority or parent.spec.priority,
    )
    return with_defaults(child, agent_mode=limits.default_agent_mode)
