"""One dispatch round on the database, with agents that only heartbeat.

A round fills each agent's free slots and no more. A long queue of tasks waiting for busy
agents hides nothing behind it: each round reads the head of the queue and then pages on
from where the round before stopped, so a task an idle agent could run is reached in a
bounded number of rounds, however long the queue."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import asyncpg
import grpc
import pytest

from agentmesh.keys.pool import fingerprint
from agentmesh.node.card import AgentCard, HeldKey
from agentmesh.scheduler.agents import AgentRegistry
from agentmesh.scheduler.dispatch import MAX_PAGES, MIN_WINDOW
from agentmesh.tasks.model import TaskKind, TaskSpec
from agentmesh.v1 import agent_pb2, node_pb2, node_pb2_grpc
from tests.store.dispatching import card, dispatcher_on, hold_attempts


async def test_a_round_fills_each_agent_s_free_slots_and_no_more(pool: asyncpg.Pool) -> None:
    cards = [card("two", slots=2), card("one", slots=1), card("full", slots=1)]
    dispatcher, store, channels = await dispatcher_on(pool, cards, owner="slots")
    try:
        taken = await store.submit(TaskSpec(kind="echo", prompt="elsewhere"))
        await store.start_attempts({taken: "agent-full"}, "elsewhere", 60)
        for n in range(6):
            await store.submit(TaskSpec(kind="echo", prompt=f"t {n}"))

        await dispatcher.round()

        rows = await pool.fetch(
            "SELECT assigned_agent, count(*) AS n FROM tasks WHERE state = 'working'"
            " GROUP BY assigned_agent"
        )
        assert {r["assigned_agent"]: r["n"] for r in rows} == {
            "agent-two": 2,
            "agent-one": 1,
            "agent-full": 1,  # the other scheduler's
        }
        assert len(dispatcher.live_attempts()) == 3
    finally:
        await dispatcher.stop()
        await channels.close()


async def test_each_round_reads_on_from_where_the_last_one_stopped(pool: asyncpg.Pool) -> None:
    cards = [card("busy", slots=1, capabilities=("a",)), card("idle", slots=2, capabilities=("b",))]
    dispatcher, store, channels = await dispatcher_on(pool, cards, owner="window")
    try:
        # busy's one slot is taken (by another scheduler's attempt): its tasks wait.
        taken = await store.submit(TaskSpec(kind="echo", required_capabilities=("a",)))
        await store.start_attempts({taken: "agent-busy"}, "elsewhere", 60)
        # Two free slots: a round reads pages of 4 * 2 + MIN_WINDOW tasks, at most MAX_PAGES.
        window = 4 * 2 + MIN_WINDOW
        first_round = MAX_PAGES * window  # the head, then on
        second_round = first_round + (MAX_PAGES - 1) * window  # the head, then on from there
        for n in range(second_round - 1):
            await store.submit(TaskSpec(kind="echo", prompt=f"a {n}", required_capabilities=("a",)))
        # The last the second round reaches, and the first it does not: a page of another
        # size, or one that began anywhere but after the last one's end, would tell.
        last = await store.submit(TaskSpec(kind="echo", prompt="b 1", required_capabilities=("b",)))
        await store.submit(TaskSpec(kind="echo", prompt="b 2", required_capabilities=("b",)))

        await dispatcher.round()
        assert [t for t, _ in dispatcher.live_attempts()] == []  # past the first round's reach
        await dispatcher.round()
        assert [t for t, _ in dispatcher.live_attempts()] == [last]
    finally:
        await dispatcher.stop()
        await channels.close()


@pytest.mark.parametrize("rejected_share", [0, 2])
async def test_a_round_that_cleared_a_full_window_runs_again_at_once(
    pool: asyncpg.Pool, rejected_share: int
) -> None:
    # Four pages of tasks nobody can run, then one an agent can: they wait for a capability
    # nobody has (parked: they leave the queue), or (every second one, with rejected_share
    # 2) ask for a mode above every ceiling (rejected). The round after the one that cleared
    # them starts the last, without waiting for the next poll (an hour here) or a
    # notification (none: no listener).
    cards = [card("plain", slots=1)]
    dispatcher, store, channels = await dispatcher_on(pool, cards, "again", poll_seconds=3600)
    window = 4 + MIN_WINDOW
    rejected = []
    for n in range(MAX_PAGES * window):
        if rejected_share and n % rejected_share == 0:
            spec = TaskSpec(kind="echo", prompt=f"s {n}", permission_mode="superuser")
            rejected.append(await store.submit(spec))
        else:
            spec = TaskSpec(kind="echo", prompt=f"x {n}", required_capabilities=("x",))
            await store.submit(spec)
    runnable = await store.submit(TaskSpec(kind="echo", prompt="runs"))
    running = asyncio.create_task(dispatcher.run())
    try:
        async with asyncio.timeout(60):
            while not await pool.fetchval("SELECT attempt FROM tasks WHERE id = $1", runnable):
                await asyncio.sleep(0.05)  # started (its attempt then fails: nobody listens)
        states = await pool.fetch("SELECT state FROM tasks WHERE id = ANY($1)", rejected)
        assert [row["state"] for row in states] == ["rejected"] * len(rejected)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await dispatcher.stop()
        await channels.close()


async def test_a_gemini_task_moves_to_the_node_that_holds_its_key(pool: asyncpg.Pool) -> None:
    # Placement picks the idler node (zulu); the only key is alpha's, whose id sorts first.
    # An echo task placed in the same round, ahead of it, needs no key.
    held = (HeldKey("GEMINI", fingerprint("AIzaSy-held-by-alpha-7c21")),)
    cards = [card("alpha", slots=4, held_keys=held), card("zulu", slots=8)]
    dispatcher, store, channels = await dispatcher_on(pool, cards, owner="keys")
    try:
        taken = await store.submit(TaskSpec(kind="echo", prompt="elsewhere"))
        await store.start_attempts({taken: "agent-alpha"}, "elsewhere", 60)
        ahead = await store.submit(TaskSpec(kind="echo", prompt="no key"))
        task = await store.submit(TaskSpec(kind=TaskKind.GEMINI, prompt="hello", user="ada"))

        await dispatcher.round()

        rows = await pool.fetch(
            "SELECT id, assigned_agent FROM tasks WHERE id = ANY($1)", [ahead, task]
        )
        assert {r["id"]: r["assigned_agent"] for r in rows} == {
            ahead: "agent-zulu",
            task: "agent-alpha",
        }
        assert sorted(t for t, _ in dispatcher.live_attempts()) == sorted([ahead, task])
    finally:
        await dispatcher.stop()
        await channels.close()


async def siblings_placed(pool: asyncpg.Pool, cards: list[AgentCard], owner: str) -> list[str]:
    """Where one round places the two subtasks of a parent (after another scheduler's task
    on agent-b, if there is one)."""
    dispatcher, store, channels = await dispatcher_on(pool, cards, owner=owner)
    try:
        if any(c.agent_id == "agent-b" for c in cards):
            taken = await store.submit(TaskSpec(kind="echo", prompt="elsewhere"))
            await store.start_attempts({taken: "agent-b"}, "elsewhere", 60)
        echo = TaskSpec(kind="echo", prompt="sibling")
        parent = await store.submit(TaskSpec(subtasks=(echo, echo)))
        await dispatcher.round()
        rows = await pool.fetch(
            "SELECT t.assigned_agent FROM subtasks s JOIN tasks t ON t.id = s.child_task_id"
            " WHERE s.parent_task_id = $1",
            parent,
        )
        return sorted(row["assigned_agent"] for row in rows)
    finally:
        await dispatcher.stop()
        await channels.close()


async def test_siblings_spread_over_agents_of_one_host(pool: asyncpg.Pool) -> None:
    # Two agents on one machine; b already runs another scheduler's task, so the load alone
    # would send both siblings to a.
    cards = [card("a", slots=4, hostname="box.lan"), card("b", slots=4, hostname="box.lan")]
    assert await siblings_placed(pool, cards, "siblings") == ["agent-a", "agent-b"]


async def test_siblings_spread_over_hosts_before_agents(pool: asyncpg.Pool) -> None:
    # Two agents on one machine and one on another: the second sibling goes to the other
    # machine, not to the first machine's other agent.
    cards = [
        card("a1", slots=4, hostname="box.lan"),
        card("a2", slots=4, hostname="box.lan"),
        card("c", slots=4, hostname="other.lan"),
    ]
    assert await siblings_placed(pool, cards, "hosts") == ["agent-a1", "agent-c"]


class _Answers(node_pb2_grpc.AgentNodeServicer):
    """A node that answers the scheduler's probe and nothing else."""

    async def GetCapabilities(
        self, request: node_pb2.GetCapabilitiesRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.AgentCard:
        return agent_pb2.AgentCard()


async def test_a_probe_marks_an_agent_that_answers_reachable_and_leaves_one_that_does_not(
    pool: asyncpg.Pool,
) -> None:
    server = grpc.aio.server()
    node_pb2_grpc.add_AgentNodeServicer_to_server(_Answers(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    back = replace(card("back", slots=1), endpoint=f"127.0.0.1:{port}")
    cards = [card("gone", slots=1), back]  # nothing listens at gone's endpoint
    dispatcher, _, channels = await dispatcher_on(pool, cards, owner="probe")
    try:
        for agent_id in ("agent-gone", "agent-back"):
            await pool.execute("UPDATE agents SET status = 'unreachable' WHERE id = $1", agent_id)

        await dispatcher.probe_unreachable(timeout_seconds=2)

        rows = await pool.fetch("SELECT id, status FROM agents")
        assert {r["id"]: r["status"] for r in rows} == {
            "agent-gone": "unreachable",
            "agent-back": "online",
        }
    finally:
        await dispatcher.stop()
        await channels.close()
        await server.stop(None)


async def test_an_attempt_that_ends_does_not_forget_a_newer_attempt_of_its_task(
    pool: asyncpg.Pool,
) -> None:
    # As when an attempt's end is still being written (its key's use, say) while the round
    # after its hand-back starts the next one: the old attempt's end must leave the new one
    # registered, or its lease would go unrenewed and the task run twice.
    dispatcher, store, channels = await dispatcher_on(pool, [card("n", slots=2)], owner="newer")
    try:
        task = await store.submit(TaskSpec(kind="echo", prompt="twice?"))
        await dispatcher.round()
        [(started, number)] = dispatcher.live_attempts()
        assert started == task
        first = dispatcher._attempts[task]
        newer = asyncio.create_task(asyncio.sleep(3600))  # stands for attempt 2's coroutine
        dispatcher._attempt_numbers[task] = number + 1
        dispatcher._attempts[task] = newer
        await first  # attempt 1 ends: nothing listens at its node's endpoint
        assert dispatcher.live_attempts() == [(task, number + 1)]
        assert dispatcher._attempts[task] is newer
    finally:
        await dispatcher.stop()
        await channels.close()


async def test_a_waiting_reason_follows_the_mesh_whichever_way_it_sorts(
    pool: asyncpg.Pool,
) -> None:
    dispatcher, store, channels = await dispatcher_on(pool, [card("one", slots=1)], "reasons")
    try:
        busy = await store.submit(TaskSpec(kind="echo", prompt="busy"))
        await store.start_attempts({busy: "agent-one"}, "elsewhere", 60)
        task = await store.submit(TaskSpec(kind="echo", prompt="waits"))
        await dispatcher.round()
        reason = "SELECT waiting_reason FROM tasks WHERE id = $1"
        assert await pool.fetchval(reason, task) == "the only fitting agent (one) is busy"

        # A second agent joins, busy too: the reason changes (to one that sorts first).
        registry = AgentRegistry(pool, ttl_seconds=60)
        await registry.heartbeat(card("two", slots=1), ())
        other = await store.submit(TaskSpec(kind="echo", prompt="busy too", target_host="two"))
        await store.start_attempts({other: "agent-two"}, "elsewhere", 60)
        await dispatcher.round()
        assert await pool.fetchval(reason, task) == "all 2 fitting agents are busy"
    finally:
        await dispatcher.stop()
        await channels.close()


async def test_a_round_that_fails_after_starting_attempts_still_streams_them(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatcher, store, channels = await dispatcher_on(pool, [card("one", slots=1)], "fails")
    try:
        placed = await store.submit(TaskSpec(kind="echo", prompt="placed"))
        await store.submit(TaskSpec(kind="echo", prompt="waits"))

        async def deadlocked(reasons: dict[str, str]) -> None:
            raise asyncpg.exceptions.DeadlockDetectedError("deadlock detected")

        monkeypatch.setattr(store, "set_waiting_reasons", deadlocked)
        with pytest.raises(asyncpg.exceptions.DeadlockDetectedError):
            await dispatcher.round()

        # Its attempt is streamed (and its lease renewed), not left to expire and run again.
        assert dispatcher.live_attempts() == [(placed, 1)]
    finally:
        await dispatcher.stop()
        await channels.close()


@pytest.mark.parametrize(
    ("slots", "tasks", "wakes"),
    [(1, 2, True), (2, 1, False)],
    ids=["a task waits for the slot", "nothing waits"],
)
async def test_a_finished_attempt_wakes_a_round_only_if_a_task_waits_for_a_slot(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, slots: int, tasks: int, wakes: bool
) -> None:
    """At a steady rate every finish used to start a round that found nothing to do, and
    the next submit waited behind it; a task waiting for the slot must still get one."""
    dispatcher, store, channels = await dispatcher_on(pool, [card("one", slots=slots)], "wakes")
    finish = await hold_attempts(dispatcher, monkeypatch)
    try:
        for n in range(tasks):
            await store.submit(TaskSpec(kind="echo", prompt=f"task {n}"))
        await dispatcher.round()
        [(task, _)] = dispatcher.live_attempts()
        dispatcher._wake.clear()

        finish.set()
        await dispatcher._attempts[task]

        assert dispatcher._wake.is_set() is wakes
    finally:
        await dispatcher.stop()
        await channels.close()


@pytest.mark.parametrize(
    ("slots", "wakes"),
    [(1, True), (2, False)],
    ids=["the round left a task waiting for the slot", "nothing waits"],
)
async def test_an_attempt_that_finishes_during_a_round_wakes_the_next_only_for_a_waiting_task(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, slots: int, wakes: bool
) -> None:
    """The round under way may count the freed slot as taken: a task it leaves waiting
    needs the round after it, or it would wait for the next poll. Where nothing waits, that
    round would find nothing (at a steady rate, most slots free while a round runs)."""
    dispatcher, store, channels = await dispatcher_on(pool, [card("one", slots=slots)], "during")
    finish = await hold_attempts(dispatcher, monkeypatch)
    reading, read = asyncio.Event(), asyncio.Event()
    try:
        task = await store.submit(TaskSpec(kind="echo", prompt="runs"))
        await dispatcher.round()
        # With one slot, the next round counts it as the running attempt's: this one waits.
        waiting = await store.submit(TaskSpec(kind="echo", prompt="waits"))
        if slots > 1:
            await dispatcher.round()  # it starts: nothing waits after it
        ready = store.ready

        async def slow_ready(*args: object, **kwargs: object) -> object:
            reading.set()
            await read.wait()
            return await ready(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "ready", slow_ready)
        next_round = asyncio.create_task(dispatcher.round())
        await reading.wait()
        dispatcher._wake.clear()
        finish.set()
        await dispatcher._attempts[task]
        assert not dispatcher._wake.is_set()  # the round under way has yet to place
        read.set()
        await next_round

        started = await pool.fetchval("SELECT attempt FROM tasks WHERE id = $1", waiting)
        assert started == (0 if wakes else 1)
        assert dispatcher._wake.is_set() is wakes
    finally:
        finish.set()
        await dispatcher.stop()
        await channels.close()


async def test_a_task_unparked_by_an_agent_that_joins_starts_in_that_same_round(
    pool: asyncpg.Pool,
) -> None:
    """Rounds read the agents and the queue at once: what the new agent unparks comes back
    after the queue was read, and must be read again, not left for a later round."""
    dispatcher, store, channels = await dispatcher_on(pool, [card("plain", slots=1)], "joins")
    try:
        task = await store.submit(TaskSpec(kind="echo", prompt="x", required_capabilities=("x",)))
        await dispatcher.round()
        await dispatcher.round()  # parked: this one reads the agents and the queue at once
        assert dispatcher.live_attempts() == []
        await AgentRegistry(pool, ttl_seconds=60).heartbeat(
            card("xy", slots=1, capabilities=("x",)), ()
        )

        await dispatcher.round()

        assert dispatcher.live_attempts() == [(task, 1)]
    finally:
        await dispatcher.stop()
        await channels.close()


async def test_a_round_sees_a_node_s_card_as_its_last_heartbeat_gave_it(
    pool: asyncpg.Pool,
) -> None:
    """Rounds keep each card parsed while it stays the same: a changed one is read again."""
    registry = AgentRegistry(pool, ttl_seconds=60)
    await registry.heartbeat(card("shifting", slots=1, capabilities=("a",)), ())
    (before,) = [s for s in await registry.online({}) if s.name == "shifting"]
    await registry.heartbeat(card("shifting", slots=3, capabilities=("b",)), ())
    (after,) = [s for s in await registry.online({}) if s.name == "shifting"]
    assert (before.capabilities, before.max_concurrency) == (frozenset({"a"}), 1)
    assert (after.capabilities, after.max_concurrency) == (frozenset({"b"}), 3)
