"""Placement: which agent runs a task, or why none can yet. Pure functions, no I/O.

A task's permission mode must be within an agent's ceiling (`node.max_permission_mode`).
Capabilities and `target_host` make a task wait when no online agent has them: a node that
has them may still register. The ceiling is treated the same way, with one difference:
when agents that would otherwise fit *are registered* (online or offline) and not one of
them admits the mode, the task is rejected (`ceiling_refusal`): raising a ceiling is a
decision about a node's configuration, not something that happens while a task waits, and
a user told "rejected: every fitting node runs at most weak" knows what to change. A task
whose fitting ceiling-capable agent is only offline waits for it, as a target host does; a
task no registered agent fits at all waits as it always did.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agentmesh.config import PermissionMode
from agentmesh.tasks.model import TaskSpec


@dataclass(frozen=True)
class AgentSlot:
    """An online agent as placement sees it."""

    agent_id: str
    name: str
    hostname: str
    endpoint: str
    capabilities: frozenset[str]
    executors: frozenset[str]
    max_concurrency: int
    running: int
    draining: bool = False
    # It heartbeats, but the scheduler could not dial it (or it refused the token).
    unreachable: bool = False
    # The highest permission mode it runs.
    max_permission_mode: PermissionMode = PermissionMode.WEAK
    # What the scheduler presents when it dials the agent (None in an open mesh).
    dispatch_secret: str | None = field(default=None, repr=False)

    @property
    def free(self) -> int:
        return max(self.max_concurrency - self.running, 0)

    def answers_to(self, target: str) -> bool:
        return target in (self.agent_id, self.name, self.hostname)

    @property
    def placement_view(self) -> tuple[object, ...]:
        """Everything about the agent that decides which tasks it could run (not its load)."""
        return (
            self.agent_id,
            self.name,
            self.hostname,
            self.executors,
            self.capabilities,
            self.unreachable,
            self.max_permission_mode,
        )

    def admits(self, spec: TaskSpec) -> bool:
        """Whether the task's permission mode is within the agent's ceiling (a task that
        names none runs in the node's default mode, which never exceeds its ceiling)."""
        mode = _mode(spec)
        return mode is None or not mode.exceeds(self.max_permission_mode)


@dataclass(frozen=True)
class Waiting:
    """Why a task cannot be placed now, in words.

    `nobody_fits`: no online agent could run it even if it were idle (a capability, a host
    or an executor is missing), so only a change in the mesh can help; otherwise the agents
    that fit are busy and a freed slot is enough.
    """

    reason: str
    nobody_fits: bool = False


def _mode(spec: TaskSpec) -> PermissionMode | None:
    return PermissionMode(spec.permission_mode) if spec.permission_mode else None


def _could_run(spec: TaskSpec, agent: AgentSlot) -> bool:
    """Whether the agent has the task's host, executor and capabilities (not its ceiling)."""
    return (
        (not spec.target_host or agent.answers_to(spec.target_host))
        and spec.kind in agent.executors
        and all(capability in agent.capabilities for capability in spec.required_capabilities)
    )


def ceiling_refusal(spec: TaskSpec, registered: Iterable[AgentSlot]) -> str | None:
    """Why the task is rejected, if agents that would run it are registered (online or not)
    and every one's ceiling is below its mode; None while it may yet be placed."""
    mode = _mode(spec)
    if mode is None:
        return None
    could = [a for a in registered if _could_run(spec, a)]
    if not could or any(a.admits(spec) for a in could):
        return None
    ceilings = sorted({str(a.max_permission_mode) for a in could})
    names = ", ".join(sorted(a.name for a in could))
    return (
        f"no registered agent accepts {mode} tasks: {names} (the agents that could run it)"
        f" run at most {' or '.join(ceilings)} (node.max_permission_mode)"
    )


def fitting(spec: TaskSpec, agents: Iterable[AgentSlot]) -> list[AgentSlot] | Waiting:
    """The agents that could run the task if they had room (reachable or not), or why there
    are none."""
    candidates = [a for a in agents if not a.draining]
    if not candidates:
        return Waiting("no online agent", nobody_fits=True)
    if spec.target_host:
        candidates = [a for a in candidates if a.answers_to(spec.target_host)]
        if not candidates:
            return Waiting(f"agent {spec.target_host} is not online", nobody_fits=True)
    can_run = [a for a in candidates if spec.kind in a.executors]
    if not can_run:
        return Waiting(f"no online agent can run {spec.kind} tasks", nobody_fits=True)
    for capability in spec.required_capabilities:
        can_run = [a for a in can_run if capability in a.capabilities]
        if not can_run:
            return Waiting(f"no online agent has capability {capability}", nobody_fits=True)
    admitted = [a for a in can_run if a.admits(spec)]
    if not admitted:
        return Waiting(
            f"no online agent accepts {spec.permission_mode} tasks (node.max_permission_mode)",
            nobody_fits=True,
        )
    return admitted


def free_agents(spec: TaskSpec, agents: Iterable[AgentSlot]) -> list[AgentSlot]:
    """The reachable agents that could run the task and have a free slot now."""
    found = fitting(spec, agents)
    if isinstance(found, Waiting):
        return []
    return [a for a in found if not a.unreachable and a.free > 0]


def pick_agent(
    spec: TaskSpec, agents: Sequence[AgentSlot], sibling_hosts: Counter[str]
) -> AgentSlot | Waiting:
    """The least loaded fitting agent with a free slot; siblings spread across hosts."""
    found = fitting(spec, agents)
    if isinstance(found, Waiting):
        return found
    reachable = [a for a in found if not a.unreachable]
    unreachable = sorted(a.name for a in found if a.unreachable)
    cut_off = (
        f"{', '.join(unreachable)} {'are' if len(unreachable) > 1 else 'is'} unreachable"
        " (the scheduler cannot dial it, or it refuses the mesh token)"
    )
    if not reachable:
        return Waiting(f"every fitting agent is cut off: {cut_off}", nobody_fits=True)
    free = [a for a in reachable if a.free > 0]
    if not free:
        qualifier = "reachable " if unreachable else ""
        if len(reachable) == 1:
            reason = f"the only {qualifier}fitting agent ({reachable[0].name}) is busy"
        else:
            reason = f"all {len(reachable)} {qualifier}fitting agents are busy"
        return Waiting(f"{reason}; {cut_off}" if unreachable else reason)
    return min(
        free,
        key=lambda a: (
            sibling_hosts[a.hostname] + sibling_hosts[a.agent_id],
            a.running / a.max_concurrency,
            -a.free,
            a.agent_id,
        ),
    )
