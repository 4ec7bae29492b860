"""The dispatcher's pure rules: what a round's key reservation does to its placements and
to the agents' free slots, and which of two queue positions comes later."""

from __future__ import annotations

from agentmesh.keys.reservations import RoundKeys
from agentmesh.scheduler.dispatch import _later, settle_slots
from agentmesh.scheduler.placement import AgentSlot


def slot(agent_id: str, running: int) -> AgentSlot:
    return AgentSlot(
        agent_id=agent_id,
        name=agent_id,
        hostname=f"{agent_id}.lan",
        endpoint="127.0.0.1:9",
        capabilities=frozenset(),
        executors=frozenset({"gemini"}),
        max_concurrency=4,
        running=running,
    )


def test_a_task_that_waits_or_ends_frees_its_slot_and_a_moved_one_takes_its_key_s_node() -> None:
    # The round placed t1, t2, t4 on a, t3 on b, t5 and t6 on c (their slots taken already).
    claimed = {"t1": "a", "t2": "a", "t3": "b", "t4": "a", "t5": "c", "t6": "c"}
    agents = {"a": slot("a", 3), "b": slot("b", 1), "c": slot("c", 2)}
    keys = RoundKeys(
        waiting={"t1": ("every key is cooling down", None)},
        rejected={"t3": "over the user's limit"},
        failed={"t6": "waited longer than its user tolerates"},
        moved={"t2": "c", "t4": "b"},
    )

    settle_slots(keys, claimed, agents)

    assert claimed == {"t2": "c", "t4": "b", "t5": "c"}
    assert {a.agent_id: a.running for a in agents.values()} == {"a": 0, "b": 1, "c": 2}
    assert agents["a"] == slot("a", 0)  # nothing else about the agent changes


def test_nothing_reserved_changes_nothing() -> None:
    claimed = {"t1": "a"}
    agents = {"a": slot("a", 1)}
    settle_slots(RoundKeys(), claimed, agents)
    assert claimed == {"t1": "a"}
    assert agents == {"a": slot("a", 1)}


def test_a_queue_position_is_later_with_a_lower_priority_or_a_higher_id_at_the_same() -> None:
    # (priority, queue id): the queue runs highest priority first, then in order of arrival.
    assert _later((5, 10), (6, 1))
    assert not _later((6, 1), (5, 10))
    assert _later((5, 11), (5, 10))
    assert not _later((5, 9), (5, 10))
    assert not _later((5, 10), (5, 10))  # the same position is not later
    # Priorities are any int32: equal ones compare by value (these are two int objects).
    high = int("1000")
    assert _later((high, 11), (int("1000"), 10))
