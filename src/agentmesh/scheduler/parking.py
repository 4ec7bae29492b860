"""Parking: tasks nobody can run now wait outside the dispatch window, not in front of it.

A task that no online agent could run even if it were idle (a capability, a host or an
executor is missing), or that found no free API key, gets its waiting reason and a parked
queue row, which dispatch rounds do not read. Rounds stay as cheap with 10,000 such tasks
as with none, and the tasks behind them are read. A parked row comes back when what it
waits for changes, as this replica sees it:
- the mesh: an agent registered, came back online (or out of draining), or changed what it
  can run (its executors, capabilities, names). Busy agents are not a reason to park: a
  freed slot must find the task in the window.
- the keys: a key was added, enabled again, its cooldown or its use changed (quota given
  back); and by itself when the time the pool gave for capacity to return comes (a key's
  next per-minute slot, the end of a cooldown, the day's reset), or the task's throttle
  tolerance runs out.
A replica's first look unparks everything: what a stopped replica parked is decided anew.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime

from agentmesh.scheduler import queries as q
from agentmesh.scheduler.placement import AgentSlot
from agentmesh.scheduler.store import TaskStore

# What may make a key usable again (see keys.quota.KEY_SIGNATURE).
KeySignature = frozenset[tuple[object, ...]]


class ParkingLot:
    def __init__(
        self,
        store: TaskStore,
        key_signature: Callable[[], Awaitable[KeySignature]],
        *,
        key_check_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._key_signature = key_signature
        self._key_check_seconds = key_check_seconds
        self._clock = clock
        self._mesh: frozenset[tuple[object, ...]] | None = None
        self._keys: KeySignature | None = None
        self._keys_checked = float("-inf")

    async def look_at_mesh(self, agents: Iterable[AgentSlot]) -> int:
        """Unpark tasks that waited for an agent if an agent appeared or changed (an agent
        that leaves or starts draining takes capacity away: nothing to look at again);
        how many."""
        view = frozenset(agent.placement_view for agent in agents if not agent.draining)
        unparked = 0
        if self._mesh is None or view - self._mesh:
            unparked = await self._store.unpark(q.PARKED_FOR_AGENT)
        self._mesh = view
        return unparked

    async def look_at_keys(self, *, now: bool = False) -> int:
        """Unpark tasks that waited for a key if one became usable; at most once per
        `key_check_seconds`, unless `now` (before keys are picked, so that what parks then
        is compared with the keys as they were when it found none); how many."""
        if not now and self._clock() - self._keys_checked < self._key_check_seconds:
            return 0
        keys = await self._key_signature()
        if self._keys is None or keys - self._keys:
            unparked = await self._store.unpark(q.PARKED_FOR_KEY)
        else:
            unparked = await self._store.unpark_due(q.PARKED_FOR_KEY)
        self._keys = keys
        self._keys_checked = self._clock()
        return unparked

    def keys_freed(self) -> None:
        """Quota was given back (a task with a key reservation ended): the next look at the
        keys unparks the tasks that waited for one."""
        self._keys = None

    async def park(
        self, for_agent: dict[str, str], for_key: dict[str, tuple[str, datetime | None]]
    ) -> int:
        """Park tasks (id -> waiting reason) until the mesh, or the keys, change (or, waiting
        for a key, until the given time); how many."""
        parked = await self._store.park(for_agent, q.PARKED_FOR_AGENT)
        reasons = {task_id: reason for task_id, (reason, _) in for_key.items()}
        until = {task_id: when for task_id, (_, when) in for_key.items()}
        return parked + await self._store.park(reasons, q.PARKED_FOR_KEY, until)
