"""Placement without a mesh: which agent a task goes to, and the words for why it waits.

Each test states an outcome a user sees: the node a task runs on, or the reason `GetTask`
shows while it waits.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from agentmesh.config import PermissionMode
from agentmesh.scheduler.placement import (
    AgentSlot,
    Waiting,
    ceiling_refusal,
    fitting,
    free_agents,
    pick_agent,
)
from agentmesh.tasks.model import TaskSpec

NO_SIBLINGS: Counter[str] = Counter()


def agent(
    name: str,
    *,
    capabilities: tuple[str, ...] = (),
    executors: tuple[str, ...] = ("echo", "shell"),
    max_concurrency: int = 4,
    running: int = 0,
    draining: bool = False,
    hostname: str | None = None,
    ceiling: str = "weak",
) -> AgentSlot:
    return AgentSlot(
        agent_id=f"id-{name}",
        name=name,
        hostname=hostname or f"{name}.lan",
        endpoint=f"127.0.0.1:{5000 + len(name)}",
        capabilities=frozenset(capabilities),
        executors=frozenset(executors),
        max_concurrency=max_concurrency,
        running=running,
        draining=draining,
        max_permission_mode=PermissionMode(ceiling),
    )


def placed(spec: TaskSpec, agents: list[AgentSlot], siblings: Counter[str] = NO_SIBLINGS) -> str:
    choice = pick_agent(spec, agents, siblings)
    assert not isinstance(choice, Waiting), choice.reason
    return choice.name


def waiting(spec: TaskSpec, agents: list[AgentSlot]) -> Waiting:
    choice = pick_agent(spec, agents, NO_SIBLINGS)
    assert isinstance(choice, Waiting), f"placed on {choice.name}"
    return choice


def waits(spec: TaskSpec, agents: list[AgentSlot]) -> str:
    return waiting(spec, agents).reason


# ----------------------------------------------------------------------------- capabilities


def test_a_task_needing_two_capabilities_goes_only_to_a_node_with_both() -> None:
    spec = TaskSpec(kind="shell", command="nvidia-smi", required_capabilities=("gpu", "cuda12"))
    gpu_only = agent("gpu-only", capabilities=("gpu",))
    cuda_only = agent("cuda-only", capabilities=("cuda12",))
    both = agent("both", capabilities=("gpu", "cuda12", "os:linux"), running=3)

    assert placed(spec, [gpu_only, cuda_only, both]) == "both"
    assert fitting(spec, [gpu_only, cuda_only, both]) == [both]


@pytest.mark.parametrize(("have", "missing"), [(("gpu",), "cuda12"), (("cuda12",), "gpu")])
def test_a_task_needing_two_capabilities_waits_on_a_node_with_one(
    have: tuple[str, ...], missing: str
) -> None:
    spec = TaskSpec(kind="shell", command="nvidia-smi", required_capabilities=("gpu", "cuda12"))

    assert waits(spec, [agent("half", capabilities=have)]) == (
        f"no online agent has capability {missing}"
    )


def test_a_task_without_requirements_runs_anywhere() -> None:
    assert placed(TaskSpec(kind="echo", prompt="hi"), [agent("plain")]) == "plain"


# ----------------------------------------------------------------------------- executors


def test_a_gemini_task_never_lands_on_a_node_without_the_gemini_cli() -> None:
    spec = TaskSpec(kind="gemini", prompt="summarize")
    idle_without = agent("idle", executors=("echo", "shell"))
    busy_with = agent("llm", executors=("echo", "shell", "gemini"), running=3)

    assert placed(spec, [idle_without, busy_with]) == "llm"
    assert waits(spec, [idle_without]) == "no online agent can run gemini tasks"


def test_a_shell_task_needs_the_shell_executor() -> None:
    echo_only = agent("echo-only", executors=("echo",))

    assert waits(TaskSpec(kind="shell", command="ls"), [echo_only]) == (
        "no online agent can run shell tasks"
    )


# ----------------------------------------------------------------------------- load


def test_a_new_task_goes_to_the_least_loaded_node_not_the_busiest() -> None:
    spec = TaskSpec(kind="echo", prompt="hi")
    busiest = agent("busiest", running=3)
    idle = agent("idle", running=0)
    middle = agent("middle", running=1)

    for order in ([busiest, idle, middle], [idle, middle, busiest], [middle, busiest, idle]):
        assert placed(spec, order) == "idle"


def test_load_is_a_share_of_each_node_capacity() -> None:
    spec = TaskSpec(kind="echo", prompt="hi")
    # 2 of 8 slots used is less loaded than 1 of 2.
    big = agent("big", max_concurrency=8, running=2)
    small = agent("small", max_concurrency=2, running=1)

    assert placed(spec, [small, big]) == "big"
    assert placed(spec, [big, small]) == "big"


def test_equal_load_prefers_the_node_with_more_free_slots() -> None:
    spec = TaskSpec(kind="echo", prompt="hi")
    small = agent("a-small", max_concurrency=2, running=1)  # half full, 1 free
    big = agent("z-big", max_concurrency=8, running=4)  # half full, 4 free

    assert placed(spec, [small, big]) == "z-big"
    assert placed(spec, [big, small]) == "z-big"


@pytest.mark.parametrize(
    ("lighter", "heavier"),
    [
        ((1, 4), (6, 10)),  # a quarter full beats 60% full with more free slots
        ((1, 3), (2, 4)),
        ((0, 1), (1, 100)),
    ],
)
def test_the_lowest_share_of_capacity_wins(
    lighter: tuple[int, int], heavier: tuple[int, int]
) -> None:
    spec = TaskSpec(kind="echo", prompt="hi")
    light = agent("z-light", running=lighter[0], max_concurrency=lighter[1])
    heavy = agent("a-heavy", running=heavier[0], max_concurrency=heavier[1])

    assert placed(spec, [heavy, light]) == "z-light"


def test_equal_nodes_are_chosen_the_same_way_every_time() -> None:
    spec = TaskSpec(kind="echo", prompt="hi")
    a, b = agent("a"), agent("b")

    assert placed(spec, [a, b]) == placed(spec, [b, a]) == "a"


def test_siblings_spread_across_hosts_before_load_counts() -> None:
    spec = TaskSpec(kind="echo", prompt="hi")
    idle = agent("idle", running=0)
    busier = agent("busier", running=2)

    siblings: Counter[str] = Counter({idle.hostname: 1, idle.agent_id: 1})
    assert placed(spec, [idle, busier], siblings) == "busier"


def test_siblings_on_another_agent_of_the_same_host_count_for_the_host() -> None:
    spec = TaskSpec(kind="echo", prompt="hi")
    busy = agent("busy", running=3, hostname="quiet-host")
    idle = agent("idle", running=0, hostname="crowded-host")

    # Two siblings already run on crowded-host, on another agent there.
    assert placed(spec, [idle, busy], Counter({"crowded-host": 2})) == "busy"


def test_the_spread_adds_the_host_and_the_agent_siblings() -> None:
    spec = TaskSpec(kind="echo", prompt="hi")
    # 2 siblings on host a (1 of them on this agent) and 3 on host b (none on this one):
    # 3 each, so the load decides.
    on_a = agent("on-a", running=0, hostname="a")
    on_b = agent("on-b", running=2, hostname="b")
    siblings = Counter({"a": 2, "id-on-a": 1, "b": 3})

    assert placed(spec, [on_b, on_a], siblings) == "on-a"


def test_siblings_spread_by_agent_when_agents_share_a_host() -> None:
    spec = TaskSpec(kind="echo", prompt="hi")
    first = agent("first", hostname="box")
    second = agent("second", hostname="box", running=1)

    assert placed(spec, [first, second], Counter({"id-first": 1, "box": 1})) == "second"


# ----------------------------------------------------------------------------- full nodes


def test_a_full_node_gets_nothing_and_the_task_says_it_is_busy() -> None:
    spec = TaskSpec(kind="echo", prompt="hi")
    full = agent("full", max_concurrency=2, running=2)

    assert waits(spec, [full]) == "the only fitting agent (full) is busy"


def test_all_full_nodes_give_a_busy_reason_with_their_count() -> None:
    spec = TaskSpec(kind="echo", prompt="hi")
    full = [agent("a", max_concurrency=1, running=1), agent("b", max_concurrency=2, running=3)]

    assert waits(spec, full) == "all 2 fitting agents are busy"


def test_a_full_node_is_skipped_for_one_with_room() -> None:
    spec = TaskSpec(kind="echo", prompt="hi")
    full = agent("full", max_concurrency=1, running=1)
    roomy = agent("roomy", max_concurrency=1, running=0)

    assert placed(spec, [full, roomy]) == "roomy"


def test_an_overcommitted_node_has_no_free_slot() -> None:
    assert agent("over", max_concurrency=2, running=5).free == 0
    assert agent("one", max_concurrency=2, running=1).free == 1


# ----------------------------------------------------------------------------- draining


def test_a_draining_node_gets_nothing() -> None:
    spec = TaskSpec(kind="echo", prompt="hi")
    draining = agent("draining", draining=True)
    busy = agent("busy", running=3)

    assert placed(spec, [draining, busy]) == "busy"
    assert waits(spec, [draining]) == "no online agent"


def test_a_task_aimed_at_a_draining_node_waits() -> None:
    spec = TaskSpec(kind="echo", prompt="hi", target_host="leaving")

    reason = waits(spec, [agent("leaving", draining=True), agent("other")])

    assert reason == "agent leaving is not online"


def test_no_agents_at_all() -> None:
    assert waits(TaskSpec(kind="echo", prompt="hi"), []) == "no online agent"


# ----------------------------------------------------------------------------- target host


@pytest.mark.parametrize("target", ["desk", "desk.lan", "id-desk"])
def test_a_task_aimed_at_a_host_runs_there_by_name_hostname_or_id(target: str) -> None:
    spec = TaskSpec(kind="echo", prompt="hi", target_host=target)
    desk = agent("desk", running=3)
    idle = agent("idle")

    assert placed(spec, [idle, desk]) == "desk"


def test_a_task_aimed_at_an_absent_host_waits_and_never_runs_elsewhere() -> None:
    spec = TaskSpec(kind="echo", prompt="hi", target_host="nas")

    assert waits(spec, [agent("desk"), agent("laptop")]) == "agent nas is not online"


def test_a_task_aimed_at_a_full_host_waits_for_it() -> None:
    spec = TaskSpec(kind="echo", prompt="hi", target_host="desk")
    desk = agent("desk", max_concurrency=1, running=1)

    assert waits(spec, [desk, agent("idle")]) == "the only fitting agent (desk) is busy"


def test_a_task_aimed_at_a_host_without_the_capability_waits() -> None:
    spec = TaskSpec(
        kind="shell", command="nvidia-smi", target_host="desk", required_capabilities=("gpu",)
    )
    desk = agent("desk")
    gpu_box = agent("gpu-box", capabilities=("gpu",))

    assert waits(spec, [desk, gpu_box]) == "no online agent has capability gpu"


def test_an_agent_is_not_draining_unless_it_says_so() -> None:
    slot = AgentSlot("a", "a", "a.lan", "127.0.0.1:1", frozenset(), frozenset({"echo"}), 1, 0)

    assert placed(TaskSpec(kind="echo", prompt="hi"), [slot]) == "a"


def test_placement_values_are_immutable() -> None:
    slot = agent("a")
    with pytest.raises(AttributeError):
        slot.running = 9  # type: ignore[misc]
    with pytest.raises(AttributeError):
        Waiting("x").reason = "y"  # type: ignore[misc]


# ----------------------------------------------------------------------------- unreachable


def cut_off(slot: AgentSlot) -> AgentSlot:
    """The agent heartbeats, but the scheduler cannot dial it (or it refuses the token)."""
    return dataclasses.replace(slot, unreachable=True)


WHY = "(the scheduler cannot dial it, or it refuses the mesh token)"


def test_an_unreachable_agent_gets_nothing() -> None:
    spec = TaskSpec(kind="echo", prompt="hi")

    assert placed(spec, [cut_off(agent("idle")), agent("busy", running=3)]) == "busy"


def test_a_task_whose_only_fitting_agent_is_unreachable_says_so() -> None:
    choice = waiting(TaskSpec(kind="echo", prompt="hi"), [cut_off(agent("desk"))])

    assert choice == Waiting(f"every fitting agent is cut off: desk is unreachable {WHY}", True)


def test_several_unreachable_agents_are_named_in_order() -> None:
    agents = [cut_off(agent("nas")), cut_off(agent("desk"))]

    choice = waiting(TaskSpec(kind="echo", prompt="hi"), agents)

    assert choice == Waiting(
        f"every fitting agent is cut off: desk, nas are unreachable {WHY}", True
    )


def test_a_busy_reachable_agent_and_an_unreachable_one() -> None:
    agents = [agent("full", max_concurrency=1, running=1), cut_off(agent("desk"))]

    choice = waiting(TaskSpec(kind="echo", prompt="hi"), agents)

    assert choice == Waiting(
        f"the only reachable fitting agent (full) is busy; desk is unreachable {WHY}"
    )


def test_busy_reachable_agents_and_unreachable_ones() -> None:
    agents = [
        agent("a", max_concurrency=1, running=1),
        cut_off(agent("c")),
        agent("b", max_concurrency=1, running=2),
        cut_off(agent("d")),
    ]

    choice = waiting(TaskSpec(kind="echo", prompt="hi"), agents)

    assert choice == Waiting(f"all 2 reachable fitting agents are busy; c, d are unreachable {WHY}")


# ----------------------------------------------------------------------------- parking


@pytest.mark.parametrize(
    ("spec", "agents"),
    [
        (TaskSpec(kind="echo", prompt="hi"), []),
        (TaskSpec(kind="echo", prompt="hi"), [agent("leaving", draining=True)]),
        (TaskSpec(kind="echo", prompt="hi", target_host="nas"), [agent("desk")]),
        (TaskSpec(kind="gemini", prompt="hi"), [agent("desk")]),
        (TaskSpec(kind="echo", prompt="hi", required_capabilities=("gpu",)), [agent("desk")]),
        (TaskSpec(kind="echo", prompt="hi"), [cut_off(agent("desk"))]),
    ],
    ids=["no-agents", "draining", "absent-host", "no-executor", "no-capability", "cut-off"],
)
def test_a_task_nobody_could_run_waits_for_a_change_in_the_mesh(
    spec: TaskSpec, agents: list[AgentSlot]
) -> None:
    # nobody_fits parks the task until the mesh changes: a freed slot would not help it.
    assert waiting(spec, agents).nobody_fits is True


@pytest.mark.parametrize(
    "agents",
    [
        [agent("full", max_concurrency=1, running=1)],
        [agent("a", max_concurrency=1, running=1), agent("b", max_concurrency=1, running=1)],
        [agent("full", max_concurrency=1, running=1), cut_off(agent("desk"))],
    ],
    ids=["one-busy", "all-busy", "busy-and-cut-off"],
)
def test_a_task_waiting_for_busy_agents_waits_for_a_free_slot(agents: list[AgentSlot]) -> None:
    assert waiting(TaskSpec(kind="echo", prompt="hi"), agents).nobody_fits is False


def test_what_an_agent_could_run_changes_with_its_abilities_not_its_load() -> None:
    # Parked tasks are looked at again when this view of the mesh changes.
    idle = agent("desk")

    assert idle.placement_view == agent("desk", running=3, max_concurrency=9).placement_view
    for changed in (
        agent("desk", capabilities=("gpu",)),
        agent("desk", executors=("echo",)),
        agent("desk", hostname="other.lan"),
        agent("laptop"),
        cut_off(idle),
    ):
        assert changed.placement_view != idle.placement_view


def test_a_gemini_task_s_key_may_move_it_only_to_a_reachable_fitting_agent_with_room() -> None:
    # A key held by a node draws the task there if the node is among these (dispatch asks).
    spec = TaskSpec(kind="echo", prompt="hi", required_capabilities=("gpu",))
    agents = [
        agent("room", capabilities=("gpu",), max_concurrency=2, running=1),
        agent("full", capabilities=("gpu",), max_concurrency=1, running=1),
        cut_off(agent("cut", capabilities=("gpu",))),
        agent("no-gpu"),
        agent("idle", capabilities=("gpu",)),
    ]

    assert [a.name for a in free_agents(spec, agents)] == ["room", "idle"]
    assert free_agents(TaskSpec(kind="gemini", prompt="hi"), agents) == []  # nobody fits


# ----------------------------------------------------------------------------- the ceiling

SUPERUSER = TaskSpec(kind="shell", command="echo x > f", permission_mode="superuser")


def test_a_task_goes_only_to_an_agent_whose_ceiling_admits_its_mode() -> None:
    agents = [agent("careful"), agent("strong", ceiling="superuser", running=3)]

    assert placed(SUPERUSER, agents) == "strong"
    assert placed(dataclasses.replace(SUPERUSER, permission_mode="weak"), agents) == "careful"
    # A task that names no mode runs in the node's default, which is within its ceiling.
    assert placed(dataclasses.replace(SUPERUSER, permission_mode=""), agents) == "careful"


def test_with_no_admitting_agent_online_the_task_waits_naming_the_ceiling() -> None:
    found = waiting(SUPERUSER, [agent("careful"), agent("cautious")])

    assert "superuser" in found.reason
    assert "node.max_permission_mode" in found.reason
    assert found.nobody_fits


def test_a_task_above_every_fitting_agents_ceiling_is_refused_naming_them() -> None:
    spec = dataclasses.replace(SUPERUSER, required_capabilities=("inventory",))
    registered = [
        agent("careful", capabilities=("inventory",)),
        agent("gpu", ceiling="superuser", capabilities=("gpu",)),  # lacks the capability
        agent("elsewhere", ceiling="superuser", executors=("echo",)),  # no shell executor
    ]

    refusal = ceiling_refusal(spec, registered)

    assert refusal is not None
    assert "careful" in refusal
    assert "weak" in refusal
    assert "gpu" not in refusal
    assert "elsewhere" not in refusal


@pytest.mark.parametrize(
    ("spec", "registered"),
    [
        # One fitting agent admits it (online or not: it may come back).
        (SUPERUSER, [agent("careful"), agent("strong", ceiling="superuser")]),
        # Nobody could run it at all: it waits like any task for a capability.
        (SUPERUSER, [agent("elsewhere", executors=("echo",))]),
        (SUPERUSER, []),
        # It names no mode, or a mode every agent admits.
        (dataclasses.replace(SUPERUSER, permission_mode=""), [agent("careful")]),
        (dataclasses.replace(SUPERUSER, permission_mode="weak"), [agent("careful")]),
    ],
    ids=["one-admits", "none-could", "no-agents", "no-mode", "weak"],
)
def test_a_task_is_not_refused_while_it_may_yet_be_placed(
    spec: TaskSpec, registered: list[AgentSlot]
) -> None:
    assert ceiling_refusal(spec, registered) is None


def test_the_ceiling_refusal_looks_only_at_the_host_the_task_names() -> None:
    registered = [agent("careful"), agent("strong", ceiling="superuser")]
    aimed = dataclasses.replace(SUPERUSER, target_host="careful")

    refusal = ceiling_refusal(aimed, registered)

    assert refusal is not None
    assert "careful" in refusal
    assert "strong" not in refusal
    assert ceiling_refusal(dataclasses.replace(aimed, target_host="strong"), registered) is None


def test_an_agent_s_dispatch_secret_never_shows_in_its_repr() -> None:
    slot = dataclasses.replace(agent("careful"), dispatch_secret="dispatch-secret-123")

    assert "dispatch-secret-123" not in repr(slot)
