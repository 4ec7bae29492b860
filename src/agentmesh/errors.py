"""Domain errors. Only the gRPC edge (`agentmesh.rpc.errors`) turns them into status codes.

An error may carry a `Reason`: a word a program can act on, sent along as
`google.rpc.ErrorInfo` so that the caller (the scheduler, for a node's refusals) need not
guess from the status code alone.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Machine-readable causes, `google.rpc.ErrorInfo.reason` in the "agentmesh" domain."""

    NODE_DRAINING = "NODE_DRAINING"  # the node is shutting down and takes no new tasks
    NODE_FULL = "NODE_FULL"  # the node runs as many tasks as it may
    DUPLICATE_ATTEMPT = "DUPLICATE_ATTEMPT"  # the node still runs a stream for this task
    NO_EXECUTOR = "NO_EXECUTOR"  # the node cannot run tasks of this kind
    BAD_SPEC = "BAD_SPEC"  # the task itself is wrong: no node will run it
    # The task asks for a permission mode above the node's node.max_permission_mode.
    MODE_ABOVE_CEILING = "MODE_ABOVE_CEILING"
    # A heartbeat names an agent id its credential may not speak for.
    AGENT_NOT_BOUND = "AGENT_NOT_BOUND"
    # A running agent's delegation went past one of its limits (see scheduler.delegation).
    DELEGATION_LIMIT = "DELEGATION_LIMIT"  # agent_defaults.max_delegations subtasks started
    DEPTH_LIMIT = "DEPTH_LIMIT"  # scheduler.max_subtask_depth
    MODE_ABOVE_PARENT = "MODE_ABOVE_PARENT"  # a subtask may not run in a higher mode
    TOKEN_BUDGET = "TOKEN_BUDGET"  # noqa: S105 - more tokens than the parent has left
    # The task a mesh credential was minted for is not running that attempt any more.
    TASK_NOT_RUNNING = "TASK_NOT_RUNNING"


class AgentmeshError(Exception):
    """Base of the errors agentmesh reports to its callers."""

    def __init__(self, message: str = "", *, reason: Reason | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class InvalidArgument(AgentmeshError):
    """A request field is wrong; `field` names it."""

    def __init__(self, field: str, problem: str, *, reason: Reason | None = None) -> None:
        super().__init__(f"{field}: {problem}", reason=reason)
        self.field = field
        self.problem = problem


class NotFound(AgentmeshError):
    """An unknown id."""


class AlreadyExists(AgentmeshError):
    """Something with that id exists already."""


class Overloaded(AgentmeshError):
    """No capacity right now (a node's concurrency limit); try later or elsewhere."""


class Unavailable(AgentmeshError):
    """The service is shutting down or a dependency is unreachable."""


class FailedPrecondition(AgentmeshError):
    """The request does not fit the current state (e.g. cancelling a finished task)."""


class Unauthenticated(AgentmeshError):
    """Missing or wrong credentials."""


class PermissionDenied(AgentmeshError):
    """The caller is known, but may not do this (a node's ceiling, another node's id)."""


class Unimplemented(AgentmeshError):
    """This server does not do that (yet)."""
