"""Mesh credentials: what lets a running agent act on the mesh as its own task, and no more.

The scheduler mints one per attempt of an agentic gemini task and hands it to the node with
the task (`ExecuteTaskRequest.mesh_credential`); the node's mesh tools present it as their
bearer token. It is `amt_<task id>_<attempt>_<mac>`, the mac an HMAC of the task id and
attempt under the scheduler's vault key: every replica sharing the vault verifies it
without a lookup, and nobody without the key can make one for another task. It dies with
the attempt: each use checks in the database that the task still runs that attempt.
What it may do (start children of its task, read them, list agents) is the access policy's
and the servicer's business, not this module's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from agentmesh.rpc.auth import same_secret

PREFIX = "amt_"
_SHAPE = re.compile(
    r"^amt_(?P<task>t-[0-9a-f]{1,64})_(?P<attempt>[1-9][0-9]{0,8})_(?P<mac>[0-9a-f]{64})$"
)


@dataclass(frozen=True)
class TaskIdentity:
    """Who a call under a mesh credential comes from: an attempt of a running task."""

    task_id: str
    attempt: int


def is_task_credential(token: str | None) -> bool:
    return token is not None and token.startswith(PREFIX)


class TaskCredentials:
    """Mints and verifies mesh credentials with a keyed hash (`derive(purpose)`)."""

    def __init__(self, derive: Callable[[str], str]) -> None:
        self._derive = derive

    def mint(self, task_id: str, attempt: int) -> str:
        return f"{PREFIX}{task_id}_{attempt}_{self._mac(task_id, attempt)}"

    def verify(self, token: str | None) -> TaskIdentity | None:
        """The attempt a well-formed credential with a right mac names; None otherwise
        (whether that attempt still runs is for the caller to check)."""
        match = _SHAPE.match(token or "")
        if match is None:
            return None
        task_id, attempt = match["task"], int(match["attempt"])
        if not same_secret(match["mac"], self._mac(task_id, attempt)):
            return None
        return TaskIdentity(task_id, attempt)

    def _mac(self, task_id: str, attempt: int) -> str:
        return self._derive(f"mesh-credential:{task_id}:{attempt}")
