"""Placement around agents the scheduler cannot dial, and what counts as never reached."""

from __future__ import annotations

from collections import Counter

import grpc

from agentmesh.scheduler.attempts import never_reached
from agentmesh.scheduler.node_link import CallError
from agentmesh.scheduler.placement import AgentSlot, Waiting, pick_agent
from agentmesh.tasks.model import TaskSpec


def slot(name: str, *, running: int = 0, unreachable: bool = False) -> AgentSlot:
    return AgentSlot(
        agent_id=f"{name}-id",
        name=name,
        hostname=name,
        endpoint=f"{name}:1",
        capabilities=frozenset(),
        executors=frozenset({"echo"}),
        max_concurrency=1,
        running=running,
        unreachable=unreachable,
    )


ECHO = TaskSpec(kind="echo", prompt="x")


def test_an_unreachable_agent_gets_nothing_even_when_idle() -> None:
    choice = pick_agent(ECHO, [slot("lost", unreachable=True), slot("desk")], Counter())

    assert isinstance(choice, AgentSlot)
    assert choice.name == "desk"


def test_only_unreachable_agents_fit_the_task_waits_parked_with_the_reason() -> None:
    choice = pick_agent(ECHO, [slot("lost", unreachable=True)], Counter())

    assert isinstance(choice, Waiting)
    assert choice.nobody_fits  # only a change in the mesh helps: parked
    assert "lost is unreachable" in choice.reason


def test_busy_reachable_agents_and_an_unreachable_one_are_both_named() -> None:
    choice = pick_agent(ECHO, [slot("lost", unreachable=True), slot("desk", running=1)], Counter())

    assert isinstance(choice, Waiting)
    assert not choice.nobody_fits  # a freed slot on desk is enough
    assert choice.reason.startswith("the only reachable fitting agent (desk) is busy")
    assert "lost is unreachable" in choice.reason


def test_without_unreachable_agents_the_busy_reason_is_unchanged() -> None:
    choice = pick_agent(ECHO, [slot("desk", running=1)], Counter())

    assert choice == Waiting("the only fitting agent (desk) is busy")


def _error(code: grpc.StatusCode, details: str) -> CallError:
    return CallError.of_rpc(
        grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)
    )


def test_a_refused_dial_or_token_before_any_event_never_reached_the_node() -> None:
    refused = _error(
        grpc.StatusCode.UNAVAILABLE,
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.2:5: "
        "Failed to connect to remote host: Connection refused",
    )
    assert never_reached(refused, received=0)
    assert never_reached(_error(grpc.StatusCode.UNAUTHENTICATED, "wrong token"), received=0)
    # A stream that broke after events, or a node that died mid-call, did reach the node.
    assert not never_reached(refused, received=3)
    assert not never_reached(_error(grpc.StatusCode.UNAVAILABLE, "Socket closed"), received=0)
    assert not never_reached(_error(grpc.StatusCode.INTERNAL, "failed to connect"), received=0)
