"""Placement: which agent runs a task, or why none can yet. Pure functions, no I/O."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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
        )


@dataclass(frozen=True)
class Waiting:
    """Why a task cannot be placed now, in words.

    `nobody_fits`: no online agent could run it even if it were idle (a capability, a host
    or an executor is missing), so only a change in the mesh can help; otherwise the agents
    that fit are busy and a freed slot is enough.
    """

    reason: str
    nobody_fits: bool = False


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
    return can_run


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
