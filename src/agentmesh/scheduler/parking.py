"""Parking: tasks nobody can run now wait outside the dispatch window, not in front of it.

A task that no online agent could run even if it were idle (a capability, a host or an
executor is missing) gets its waiting reason and a parked queue row, which dispatch rounds
do not read. Rounds stay as cheap with 10,000 such tasks as with none, and the tasks behind
them are read. A parked row comes back when the mesh changes, as this replica sees it: an
agent registered, came back online, or changed what it can run (its executors,
capabilities, names, draining). Busy agents are not a reason to park: a freed slot must find
the task in the window. A replica's first look unparks everything: what a stopped replica
parked is decided anew.
"""

from __future__ import annotations

from collections.abc import Iterable

from agentmesh.scheduler import queries as q
from agentmesh.scheduler.placement import AgentSlot
from agentmesh.scheduler.store import TaskStore


class ParkingLot:
    def __init__(self, store: TaskStore) -> None:
        self._store = store
        self._mesh: frozenset[tuple[object, ...]] | None = None

    async def look_at_mesh(self, agents: Iterable[AgentSlot]) -> None:
        """Unpark tasks that waited for an agent if an agent appeared or changed."""
        view = frozenset(agent.placement_view for agent in agents)
        if self._mesh is None or view - self._mesh:
            await self._store.unpark(q.PARKED_FOR_AGENT)
        self._mesh = view

    async def park(self, for_agent: dict[str, str]) -> int:
        """Park tasks (id -> waiting reason) until the mesh changes; how many."""
        return await self._store.park(for_agent, q.PARKED_FOR_AGENT)
