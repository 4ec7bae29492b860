"""Domain errors. Only the gRPC edge (`agentmesh.rpc.errors`) turns them into status codes."""

from __future__ import annotations


class AgentmeshError(Exception):
    """Base of the errors agentmesh reports to its callers."""


class InvalidArgument(AgentmeshError):
    """A request field is wrong; `field` names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
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
