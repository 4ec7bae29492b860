"""Dispatch: place ready tasks on agents and start their attempts, each run in a task of
its own (see attempts), and keep count of them.

One round reads the ready window of the queue, places what fits (least loaded first,
siblings spread; a gemini task also needs its forecast reserved on an API key with capacity
before an attempt starts, and goes to the node that holds that key if it is a node's: see
`keys.reservations`), parks what nobody can run (see `parking`), claims the placed rows
with SKIP LOCKED and starts their attempts, then runs each (see `attempts.AttemptRunner`)
in a task of its own.
Rounds run when NOTIFY says the queue changed, and at least every `poll_seconds` in case a
notification was lost. A round that read the whole ready queue and left nothing in it
keeps the agents as it read them, and this replica's own submissions are placed from that
view, handed over in-process, without reading the agents or the queue again (see
`Dispatcher.submitted`), for `snapshot_seconds` at most; anything else that changes the
queue, and whatever such a round cannot place at once, brings a round that reads again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import asyncpg
import grpc

from agentmesh.access.task_credentials import TaskCredentials
from agentmesh.db import notify
from agentmesh.db.connect import Connection
from agentmesh.db.outages import DATABASE_ERRORS, with_retry
from agentmesh.keys import quota
from agentmesh.keys.reservations import Candidate, KeyReserver, Reserved, RoundKeys
from agentmesh.memory.context import ContextBuilder
from agentmesh.scheduler.agents import AgentRegistry
from agentmesh.scheduler.attempts import AttemptRunner, attempt_fields
from agentmesh.scheduler.node_link import Channels
from agentmesh.scheduler.parking import KeySignature, ParkingLot
from agentmesh.scheduler.placement import (
    AgentSlot,
    Waiting,
    ceiling_refusal,
    free_agents,
    pick_agent,
)
from agentmesh.scheduler.store import (
    Placement,
    QueuePosition,
    ReadyTask,
    StartedAttempt,
    TaskStore,
)
from agentmesh.tasks.events import Result
from agentmesh.tasks.model import TaskKind, TaskSpec, TaskState
from agentmesh.v1 import node_pb2

log = logging.getLogger(__name__)

WINDOW = 500
MIN_WINDOW = 32
# Pages of the queue a round reads at most (the head, then on from where the last stopped).
MAX_PAGES = 4


@dataclass(frozen=True)
class DispatchSettings:
    owner: str
    lease_seconds: float
    # What one attempt may add to its task's trace (see trace_writer.trace_cost); the
    # configuration holds its default (scheduler.max_trace_chars).
    max_trace_chars: int
    retry_backoff_seconds: float = 1.0
    poll_seconds: float = 1.0
    # How long the agents as a round read them may place this replica's own submissions
    # (see Dispatcher.submitted): another replica's claims, and whatever changed without a
    # notification, are seen again after this at the latest.
    snapshot_seconds: float = 0.25


class Dispatcher:
    def __init__(
        self,
        store: TaskStore,
        registry: AgentRegistry,
        pool: asyncpg.Pool,
        channels: Channels,
        settings: DispatchSettings,
        keys: KeyReserver,
        mesh_credentials: TaskCredentials | None = None,
        context: ContextBuilder | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._pool = pool
        self._channels = channels
        self._settings = settings
        self._keys = keys
        self._wake = asyncio.Event()
        # An attempt that finds its agent draining, unreachable or gone records it, and the
        # next round reads the agents again, not the view it kept (see submitted).
        self._runner = AttemptRunner(
            store,
            registry,
            channels,
            keys,
            owner=settings.owner,
            max_trace_chars=settings.max_trace_chars,
            retry_backoff_seconds=settings.retry_backoff_seconds,
            agent_marked=self.wake,
            mesh_credentials=mesh_credentials,
            context=context,
        )
        self._parking = ParkingLot(
            store, self._key_signature, key_check_seconds=settings.poll_seconds
        )
        # Where the last round stopped reading, past the head of the queue.
        self._resume: QueuePosition | None = None
        # This replica's submissions since the last round (see submitted).
        self._fresh: list[ReadyTask] = []
        # The next round reads the agents and the queue (see submitted).
        self._reads_due = True
        # The agents as the last reading round left them, kept current with this replica's
        # own starts and ends (None before the first round), and when they were read.
        self._slots: dict[str, AgentSlot] | None = None
        # Slots taken for tasks whose submit is storing them started (see place_new).
        self._placing: Counter[str] = Counter()
        # Tasks stored started whose attempts were not streamed, being handed back.
        self._giving_back: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._read_at = float("-inf")
        # The queue notification of this replica's own submissions (see queue_changed).
        self._own_submits = notify.submitted_by(settings.owner)
        self._attempts: dict[str, asyncio.Task[None]] = {}
        # Where each attempt's node is: its endpoint and dispatch secret.
        self._endpoints: dict[str, tuple[str, str | None]] = {}
        self._agents: dict[str, str] = {}
        self._attempt_numbers: dict[str, int] = {}
        # Tasks whose cancel was sent: the servicer and the NOTIFY both ask, the node hears once.
        self._cancelling: set[str] = set()
        # The last round left tasks waiting for a busy agent (see slot_freed).
        self._short_of_slots = True
        self._in_round = False
        # A slot was freed while the round under way ran (see slot_freed).
        self._freed_in_round = False

    def wake(self) -> None:
        """The queue or the mesh changed: a round that reads them."""
        self._reads_due = True
        self._wake.set()

    def submitted(self, tasks: list[ReadyTask]) -> None:
        """This replica queued these tasks (their submit committed: see TaskStore.on_queued).

        If the last round left the queue empty, the next places them from the agents as it
        read them, without reading either again: one submit's statement, one start and one
        end make a task's whole trip through the database. (While that view holds, most
        submissions do not even come here: place_new has them stored started.) The claim
        still checks each one under its lock, and a node that is full after all (another
        replica's claim) refuses the attempt, which comes back."""
        self._fresh += tasks
        self._wake.set()

    def place_new(self, specs: Sequence[TaskSpec]) -> Placement | None:
        """Agents for new tasks this replica's submit is about to store (see
        TaskStore.placer), which it stores started on them: the submit's statement is the
        task's claim and start as well, and its attempt streams as soon as it commits.

        Only when the next round would place them from the agents as the last round read
        them anyway (see next_round): that round left the queue empty, nothing came since
        (no task handed over waits, no notification from elsewhere), the view is fresh, and
        no round is under way; and only tasks with nothing to reserve first (a gemini task
        needs its API key). Tasks are placed by priority, as a round would; those without a
        free agent are queued, and wait in order for the next."""
        agents = self._slots
        stale = time.monotonic() - self._read_at >= self._settings.snapshot_seconds
        held = self._reads_due or self._fresh or self._in_round or self._stopping
        if agents is None or held or stale:
            return None
        chosen: list[str | None] = [None] * len(specs)
        for index in sorted(range(len(specs)), key=lambda index: -specs[index].priority):
            spec = specs[index]
            if spec.kind == TaskKind.GEMINI:
                break  # it may need a slot the tasks after it would take: they queue too
            choice = pick_agent(spec, list(agents.values()), Counter())
            if isinstance(choice, Waiting):
                continue
            chosen[index] = choice.agent_id
            _take_slot(agents, choice.agent_id, +1)
            self._placing[choice.agent_id] += 1
        if not any(chosen):
            return None
        return _NewPlacement(
            self,
            chosen,
            {a: agents[a] for a in chosen if a is not None},
            (self._settings.owner, self._settings.lease_seconds),
        )

    def _placed_new(self, placement: _NewPlacement, attempts: list[StartedAttempt]) -> None:
        """A placement's submit committed: stream its attempts (unless this dispatcher is
        stopping: then they go back to the queue, for another replica)."""
        self._placing -= Counter(a for a in placement.agents if a is not None)
        if self._stopping:
            self._free_slots([a.agent_id for a in attempts])
            self._give_back(
                [a.task_id for a in attempts], f"scheduler {self._settings.owner} stopped"
            )
        else:
            self._launch(attempts, placement.slots, RoundKeys())

    def _not_placed_new(self, placement: _NewPlacement, task_ids: Sequence[str]) -> None:
        """A placement's submit failed or was cancelled: its slots are free again, and the
        tasks it placed go back to the queue if the statement committed after all (else
        there is nothing to give back): nobody streams them, and left to their leases they
        would wait half a minute and use up an attempt they never ran."""
        placed = [
            (task_id, a)
            for task_id, a in zip(task_ids, placement.agents, strict=True)
            if a is not None
        ]
        self._placing -= Counter(agent_id for _, agent_id in placed)
        self._free_slots([agent_id for _, agent_id in placed])
        self._give_back([task_id for task_id, _ in placed], "its submit failed before it was sent")
        self.wake()

    def _free_slots(self, agent_ids: list[str]) -> None:
        if self._slots is not None:
            for agent_id in agent_ids:
                _take_slot(self._slots, agent_id, -1)

    def _give_back(self, task_ids: list[str], reason: str) -> None:
        """Hand back these tasks' first attempts, stored started by their submit and never
        streamed, without using one up; in the background (a cancelled submit calls this)."""
        for task_id in task_ids:
            giving = asyncio.create_task(
                self._runner.hand_back(task_id, 1, reason, backoff_seconds=0.0, counts=False),
                name=f"give back {task_id}",
            )
            self._giving_back.add(giving)
            giving.add_done_callback(self._giving_back.discard)

    def queue_changed(self, payload: str) -> None:
        """A notification on the queue channel: a round that reads, unless it announced
        tasks this replica submitted, which it has already (queued ones through
        `submitted`, those stored started by streaming them)."""
        if payload != self._own_submits:
            self.wake()

    def slot_freed(self) -> None:
        """An attempt ended (here or on another replica): a round only if a task may wait
        for the slot. That is, if the last round left one waiting for a busy agent, or the
        round under way does (its snapshot may count the slot as taken: it is told at its
        end). New work brings its own round."""
        if self._short_of_slots:
            self.wake()
        elif self._in_round:
            self._freed_in_round = True

    def live_attempts(self) -> list[tuple[str, int]]:
        """The (task, attempt) pairs this replica is streaming now: the leases to renew."""
        return list(self._attempt_numbers.items())

    async def run(self) -> None:
        """Dispatch rounds until cancelled; database outages only pause it."""
        self._wake.set()
        while True:
            try:
                async with asyncio.timeout(self._settings.poll_seconds):
                    await self._wake.wait()
            except TimeoutError:
                self._reads_due = True
            self._wake.clear()
            try:
                await self.next_round()
            except DATABASE_ERRORS as exc:
                log.warning("dispatch round failed, database unavailable: %s", exc)
                await self._pool.expire_connections()
                await asyncio.sleep(0.5)
                self._wake.set()
            except Exception:
                # Never let the loop die: a scheduler that stops placing work is worse than
                # one that logs and tries again.
                log.exception("dispatch round failed")
                await asyncio.sleep(0.5)
                self._wake.set()

    async def next_round(self) -> None:
        """The round `run` runs next: one that places this replica's submissions from the
        agents as the last round read them, if nothing else came since that round left the
        queue empty (see submitted); else one that reads the agents and the queue."""
        stale = time.monotonic() - self._read_at >= self._settings.snapshot_seconds
        if self._reads_due or self._slots is None or stale:
            await self.round()
        else:
            await self._guarded(self._place_submitted)

    async def round(self) -> None:
        """A round that reads the agents and the queue."""
        await self._guarded(self._round)

    async def _guarded(self, body: Callable[[], Awaitable[None]]) -> None:
        self._in_round = True
        self._short_of_slots = False
        self._freed_in_round = False
        try:
            await body()
        except BaseException:
            self._short_of_slots = True  # what it would have found is unknown
            self._reads_due = True
            raise
        finally:
            self._in_round = False
            if self._freed_in_round and self._short_of_slots:
                self.wake()

    async def _place_submitted(self) -> None:
        """Place this replica's submissions from the agents the last round read (see
        submitted); if any is left (it waits for a slot, or its claim found it taken), the
        next round reads the queue."""
        assert self._slots is not None
        # Started already if a round read it before its submit returned.
        tasks = [task for task in self._fresh if task.task_id not in self._attempts]
        self._fresh = []
        tasks.sort(key=lambda task: (-task.position[0], task.position[1]))
        if tasks and await self._place(tasks, self._slots, {}) < len(tasks):
            self.wake()

    async def _round(self) -> None:
        # What is read now includes every submission handed over so far.
        self._reads_due = False
        self._fresh = []
        self._read_at = time.monotonic()
        # Our own attempts count even if their rows are not visible yet, and so do those
        # whose submit is storing them started.
        own = Counter(self._agents.values()) + self._placing
        # Read (and parse) only as much of a long queue as the free slots could take, plus
        # some, so that tasks no agent fits still get their waiting reason (and are parked).
        # After the first round the agents and the queue are read at once, the window sized
        # by the slots the last round left free and this replica's attempts freed since; the
        # queue again if tasks were unparked meanwhile.
        page: list[ReadyTask] | None = None
        if self._slots is None:
            agents = {a.agent_id: a for a in await self._registry.online(own)}
            window = _window(sum(agent.free for agent in agents.values()))
        else:
            window = _window(sum(agent.free for agent in self._slots.values()))
            online, page = await asyncio.gather(
                self._registry.online(own), self._store.ready(window)
            )
            agents = {a.agent_id: a for a in online}
        if await self._look_again(agents) or page is None:
            page = await self._store.ready(window)
        siblings: dict[str, Counter[str]] = {}
        progress = await self._place(page, agents, siblings)
        head_full = len(page) == window
        # Whether the queue was read to its end and nothing read is left in it.
        emptied = not head_full and progress == len(page)
        # Tasks waiting for busy agents stay in the window: while idle slots remain, read on
        # past them, from where the last round stopped, so they cannot hide tasks behind.
        pages = 1
        while len(page) == window and pages < MAX_PAGES and any(a.free for a in agents.values()):
            after = page[-1].position
            if pages == 1 and self._resume is not None and _later(self._resume, after):
                after = self._resume
            page = await self._store.ready(window, after=after)
            progress += await self._place(page, agents, siblings)
            pages += 1
            self._resume = page[-1].position if len(page) == window else None
        if head_full and progress:
            self._wake.set()  # what was placed or parked left the window: read on
        if not emptied:
            self._reads_due = True
        self._slots = agents

    async def _look_again(self, agents: dict[str, AgentSlot]) -> int:
        """Unpark what the mesh or the keys may now serve; how many."""
        return await self._parking.look_at_mesh(agents.values()) + (
            await self._parking.look_at_keys()
        )

    async def _place(
        self,
        ready: list[ReadyTask],
        agents: dict[str, AgentSlot],
        siblings: dict[str, Counter[str]],
    ) -> int:
        """Place, park or explain each task; start the placed ones. How many left the queue."""
        placements: dict[str, str] = {}
        reasons: dict[str, str] = {}
        nobody_fits: dict[str, str] = {}
        above_ceiling: dict[str, Result] = {}
        registered: list[AgentSlot] | None = None
        for task in ready:
            spread = siblings.setdefault(task.parent_id, Counter()) if task.parent_id else Counter()
            choice = pick_agent(task.spec, list(agents.values()), spread)
            if isinstance(choice, Waiting):
                if choice.nobody_fits and task.spec.permission_mode:
                    # Rare (nobody online fits a task that names a mode): read the offline
                    # agents too, once a round, to tell "wait" from "no node ever will".
                    if registered is None:
                        registered = await self._registry.registered()
                    if refusal := ceiling_refusal(task.spec, registered):
                        above_ceiling[task.task_id] = Result(TaskState.REJECTED, error=refusal)
                        continue
                if choice.nobody_fits:
                    nobody_fits[task.task_id] = choice.reason
                    continue
                self._short_of_slots = True
                if choice.reason != task.waiting_reason:
                    reasons[task.task_id] = choice.reason
                continue
            placements[task.task_id] = choice.agent_id
            _take_slot(agents, choice.agent_id, +1)
            spread[choice.hostname] += 1
            spread[choice.agent_id] += 1
        gemini = {
            t.task_id: t
            for t in ready
            if t.task_id in placements and t.spec.kind == TaskKind.GEMINI
        }
        keys = RoundKeys()
        if gemini:
            await self._parking.look_at_keys(now=True)

        async def reserve_keys(
            conn: Connection, claimed: dict[str, str]
        ) -> tuple[dict[str, str], dict[str, int]]:
            nonlocal keys
            keys = await self._reserve_keys(conn, gemini, claimed, agents)
            return claimed, {task_id: held.key.key_id for task_id, held in keys.reserved.items()}

        started = await self._store.start_attempts(
            placements,
            self._settings.owner,
            self._settings.lease_seconds,
            reserve_keys if gemini else None,
        )
        # Stream what was started before anything else can fail: a started attempt that no
        # replica streams waits out its lease and runs as a second attempt.
        self._launch(started, agents, keys)
        await self._store.set_waiting_reasons(reasons)
        parked = await self._parking.park(nobody_fits, keys.waiting)
        ended = {t: Result(TaskState.REJECTED, error=why) for t, why in keys.rejected.items()}
        ended.update(above_ceiling)
        ended.update((t, Result(TaskState.FAILED, error=why)) for t, why in keys.failed.items())
        await self._store.end_waiting(ended)
        return len(started) + parked + len(ended)

    def _launch(
        self, started: list[StartedAttempt], agents: Mapping[str, AgentSlot], keys: RoundKeys
    ) -> None:
        """Stream each started attempt, in a task of its own."""
        for attempt in started:
            agent = agents[attempt.agent_id]
            self._endpoints[attempt.task_id] = (agent.endpoint, agent.dispatch_secret)
            self._agents[attempt.task_id] = agent.agent_id
            self._attempt_numbers[attempt.task_id] = attempt.attempt
            self._attempts[attempt.task_id] = asyncio.create_task(
                self._run_attempt(attempt, agent, keys.reserved.get(attempt.task_id)),
                name=f"attempt {attempt.task_id}",
            )

    async def _reserve_keys(
        self,
        conn: Connection,
        gemini: dict[str, ReadyTask],
        claimed: dict[str, str],
        agents: dict[str, AgentSlot],
    ) -> RoundKeys:
        """A key reservation for each claimed gemini task (which may move it to the node
        that holds the key); the others leave `claimed` (unplaced): they wait, or end, with
        the reason. Runs in the transaction that starts the attempts."""
        candidates = []
        for task_id, placed in claimed.items():
            if (task := gemini.get(task_id)) is None:
                continue
            others = [a.agent_id for a in free_agents(task.spec, agents.values())]
            candidates.append(
                Candidate(task_id, task.spec, [placed, *(a for a in others if a != placed)])
            )
        keys = await self._keys.reserve(conn, candidates)
        settle_slots(keys, claimed, agents)
        return keys

    async def cancel_local(self, task_id: str) -> None:
        """A task we run was cancelled (here or on another replica): stop it on its node."""
        attempt = self._attempts.get(task_id)
        dial = self._endpoints.get(task_id)
        if attempt is None or dial is None or task_id in self._cancelling:
            return
        self._cancelling.add(task_id)
        log.info(
            "stopping attempt: its task was cancelled, ended or moved on",
            extra={
                "task_id": task_id,
                "attempt": self._attempt_numbers.get(task_id),
                "agent": self._agents.get(task_id),
            },
        )
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._channels.stub(*dial).CancelTask(
                node_pb2.CancelTaskRequest(task_id=task_id, reason="canceled"), timeout=5
            )
        attempt.cancel()  # dropping the stream also stops it on the node

    async def reconcile(self) -> None:
        """Stop the attempts whose task ended or moved on while we were not listening (a
        cancel announced while the LISTEN connection was down never reached us)."""
        owner = self._settings.owner
        stale = await with_retry(lambda: self._store.stale_attempts(owner, self.live_attempts()))
        for task_id in stale:
            await self.cancel_local(task_id)

    async def stop(self) -> None:
        self._stopping = True  # a submit that commits from now on is handed back
        # What is being handed back stops too: the scheduler hands back every attempt it
        # still holds once its dispatcher stopped (TaskStore.release_owned), and a hand-back
        # waiting out a database outage must not hold up the stop.
        stopped = [*self._attempts.values(), *self._giving_back]
        for task in stopped:
            task.cancel()
        await asyncio.gather(*stopped, return_exceptions=True)

    async def _run_attempt(
        self, attempt: StartedAttempt, agent: AgentSlot, key: Reserved | None
    ) -> None:
        try:
            await self._runner.run(attempt, agent, key)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("attempt failed", extra=attempt_fields(attempt, agent))
            # Hand the task back rather than keep a lease on work nobody streams.
            with contextlib.suppress(Exception):
                await self._runner.hand_back(
                    attempt.task_id, attempt.attempt, "the scheduler failed while streaming it"
                )
        finally:
            if key is not None:
                # What the task spent, beside its forecast (whatever became of the attempt).
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._keys.task_ended(attempt.task_id))
                self._parking.keys_freed()
            # A superseded attempt must not forget a newer attempt of the same task.
            if self._attempt_numbers.get(attempt.task_id) == attempt.attempt:
                for registry in (
                    self._attempts,
                    self._endpoints,
                    self._agents,
                    self._attempt_numbers,
                ):
                    registry.pop(attempt.task_id, None)
                self._cancelling.discard(attempt.task_id)
                if self._slots is not None:
                    _take_slot(self._slots, attempt.agent_id, -1)
            if key is not None:
                self.wake()  # the next look at the keys unparks what waited for one
            else:
                self.slot_freed()

    async def probe_unreachable(self, timeout_seconds: float = 2.0) -> None:
        """Dial each agent marked unreachable; one that answers may get work again."""
        for agent_id, endpoint, secret in await self._registry.unreachable():
            try:
                await self._channels.stub(endpoint, secret).GetCapabilities(
                    node_pb2.GetCapabilitiesRequest(), timeout=timeout_seconds
                )
            except grpc.aio.AioRpcError as error:
                log.debug(
                    "agent still unreachable",
                    extra={"agent": agent_id, "code": error.code().name},
                )
                continue
            log.info("agent reachable again", extra={"agent": agent_id})
            await self._registry.mark_reachable(agent_id, endpoint)

    async def _key_signature(self) -> KeySignature:
        async with self._pool.acquire() as conn:
            return await quota.key_signature(conn)


class _NewPlacement:
    """Agents a dispatcher chose for new tasks (see Dispatcher.place_new), as a Placement."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        agents: list[str | None],
        slots: dict[str, AgentSlot],
        lease: tuple[str, float],
    ) -> None:
        self._dispatcher = dispatcher
        self.agents = agents
        # The chosen agents as the view had them: where to stream the attempts.
        self.slots = slots
        self.lease = lease

    def started(self, attempts: list[StartedAttempt]) -> None:
        self._dispatcher._placed_new(self, attempts)

    def not_started(self, task_ids: Sequence[str]) -> None:
        self._dispatcher._not_placed_new(self, task_ids)


def _window(free: int) -> int:
    return min(WINDOW, 4 * max(free, 0) + MIN_WINDOW)


def settle_slots(keys: RoundKeys, claimed: dict[str, str], agents: dict[str, AgentSlot]) -> None:
    """What the key reservation did to the round's placements (`claimed`: task -> agent) and
    to the agents' running counts: a task that waits for a key or ends leaves its agent's
    slot free; one moved to the node that holds its key takes that node's slot instead."""

    for task_id in (*keys.waiting, *keys.rejected, *keys.failed):
        _take_slot(agents, claimed.pop(task_id), -1)
    for task_id, node in keys.moved.items():
        _take_slot(agents, claimed[task_id], -1)
        _take_slot(agents, node, +1)
        claimed[task_id] = node


def _take_slot(agents: dict[str, AgentSlot], agent_id: str, change: int) -> None:
    """One more (or, negative, fewer) of an agent's slots in use, as far as `agents` knows."""
    agent = agents.get(agent_id)
    if agent is not None:
        agents[agent_id] = replace(agent, running=max(agent.running + change, 0))


def _later(position: QueuePosition, than: QueuePosition) -> bool:
    """Whether a queue position comes after another (priority first, highest first)."""
    return position[0] < than[0] or (position[0] == than[0] and position[1] > than[1])
