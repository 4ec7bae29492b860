"""Each service's access policy: which credential may call which RPC.

The scheduler (`SchedulerAccess`) tells two kinds of caller apart:
- the user credential (`AGENTMESH_TOKEN`): a person submits, watches, cancels, lists and
  manages keys; it may not call the node-only RPCs;
- a node credential (`agentmesh nodes enroll`, `AGENTMESH_NODE_TOKEN` on the node): a node
  heartbeats and leases keys (the node-only RPCs) and may call nothing else;
- a mesh credential (see `task_credentials`): a running agent's tools start subtasks of
  its task, read them and list the agents (TASK_METHODS), and nothing else. It is checked
  in an open mesh too (`OpenSchedulerAccess`): it is what names the parent of a delegation.
A node (`NodeAccess`) answers its scheduler, which presents the dispatch secret it handed
the node in its last heartbeat reply, and holders of the user credential if the node was
given it (grpcurl users running a task directly, as they could through the scheduler).
Without any credential configured a service has no policy and serves loopback only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from agentmesh.access.credentials import Verified
from agentmesh.access.task_credentials import TaskCredentials, is_task_credential
from agentmesh.rpc.auth import WRONG_TOKEN, Refusal, same_secret

# The node-only RPCs, by their full gRPC method names.
NODE_METHODS = frozenset(
    {
        "/agentmesh.v1.Scheduler/Heartbeat",
        "/agentmesh.v1.KeyPool/LeaseKey",
        "/agentmesh.v1.KeyPool/ReportKeyUse",
    }
)
# What a mesh credential may call; the servicer limits GetTask to the task's own subtree.
TASK_METHODS = frozenset(
    {
        "/agentmesh.v1.Scheduler/DelegateTask",
        "/agentmesh.v1.Scheduler/GetTask",
        "/agentmesh.v1.Scheduler/ListAgents",
        # As its task's user: the memory servicer sees to that.
        "/agentmesh.v1.Memory/SearchKnowledge",
        "/agentmesh.v1.Memory/AddKnowledge",
    }
)
# DelegateTask needs a mesh credential whatever else the caller holds.
TASK_ONLY_METHODS = frozenset({"/agentmesh.v1.Scheduler/DelegateTask"})
WRONG_TASK_CREDENTIAL = Refusal(
    grpc.StatusCode.UNAUTHENTICATED, "this mesh credential is not one the scheduler minted"
)
REVOKED = Refusal(
    grpc.StatusCode.UNAUTHENTICATED, "this node credential was revoked (agentmesh nodes list)"
)


def _rpc_name(method: str) -> str:
    return method.rsplit("/", 1)[-1]


def _as_task(method: str, bearer: str, tasks: TaskCredentials) -> object:
    """The policy for a mesh credential: its `TaskIdentity` for TASK_METHODS."""
    identity = tasks.verify(bearer)
    if identity is None:
        return WRONG_TASK_CREDENTIAL
    if method not in TASK_METHODS:
        return Refusal(
            grpc.StatusCode.PERMISSION_DENIED,
            f"a mesh credential cannot call {_rpc_name(method)}: it starts and reads subtasks"
            " of its own task, lists agents, and searches and adds knowledge as its user",
        )
    return identity


def _task_only(method: str) -> Refusal:
    return Refusal(
        grpc.StatusCode.PERMISSION_DENIED,
        f"{_rpc_name(method)} is for running agents: it needs the mesh credential of the"
        " task that delegates (its node's mesh tools present it)",
    )


class OpenSchedulerAccess:
    """An open mesh's policy (no user token): everyone is served, but a mesh credential must
    be one the scheduler minted, and DelegateTask needs one."""

    def __init__(self, tasks: TaskCredentials) -> None:
        self._tasks = tasks

    async def __call__(self, method: str, bearer: str | None) -> object:
        if bearer is not None and is_task_credential(bearer):
            return _as_task(method, bearer, self._tasks)
        return _task_only(method) if method in TASK_ONLY_METHODS else None


class SchedulerAccess:
    """The scheduler's policy: a node-only RPC needs a live node credential (the caller is
    its `NodeIdentity`); the task methods a mesh credential (`TaskIdentity`); every other
    RPC needs the user credential."""

    def __init__(
        self,
        user_token: str,
        verify: Callable[[str], Awaitable[Verified | None]],
        tasks: TaskCredentials,
    ) -> None:
        self._user_token = user_token
        self._verify = verify
        self._tasks = tasks

    async def __call__(self, method: str, bearer: str | None) -> object:
        if bearer is None:
            return WRONG_TOKEN
        if is_task_credential(bearer):
            return _as_task(method, bearer, self._tasks)
        user = same_secret(bearer, self._user_token)
        if method in NODE_METHODS:
            if user:
                return Refusal(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{_rpc_name(method)} is for nodes: the user credential (AGENTMESH_TOKEN)"
                    " cannot call it; a node uses a credential of its own"
                    " (AGENTMESH_NODE_TOKEN, from agentmesh nodes enroll)",
                )
            verified = await self._verify(bearer)
            if verified is None:
                return WRONG_TOKEN
            return REVOKED if verified.revoked else verified.identity
        if user:
            return _task_only(method) if method in TASK_ONLY_METHODS else None
        verified = await self._verify(bearer)
        if verified is not None and not verified.revoked:
            return Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"a node credential cannot call {_rpc_name(method)}: it is for people, with"
                " the user credential (AGENTMESH_TOKEN)",
            )
        return WRONG_TOKEN


class NodeAccess:
    """A node's policy: its scheduler's dispatch secret, or the user credential if given."""

    def __init__(self, user_token: str | None) -> None:
        self._user_token = user_token
        self._dispatch_secret: str | None = None

    def accept_dispatch_secret(self, secret: str) -> None:
        """What the scheduler said it presents from now on (its heartbeat reply)."""
        if secret:
            self._dispatch_secret = secret

    async def __call__(self, method: str, bearer: str | None) -> object:
        if same_secret(bearer, self._dispatch_secret) or same_secret(bearer, self._user_token):
            return None
        return Refusal(
            grpc.StatusCode.UNAUTHENTICATED,
            "missing or wrong bearer token: this node answers its scheduler (the dispatch"
            " secret of its heartbeats) and holders of the user credential it was given",
        )
