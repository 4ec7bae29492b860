"""Spec validation without a server: the agent mode's accepted values and where it applies."""

from __future__ import annotations

import pytest

from agentmesh.errors import InvalidArgument
from agentmesh.scheduler.validation import validate_submission
from agentmesh.tasks.model import TaskSpec, validate_runnable


@pytest.mark.parametrize("mode", ["", "agentic", "plain"])
def test_gemini_task_accepts_the_agent_modes(mode: str) -> None:
    validate_runnable(TaskSpec(kind="gemini", prompt="hi", agent_mode=mode))


def test_unknown_agent_mode_names_the_field_and_lists_the_accepted_values() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_runnable(TaskSpec(kind="gemini", prompt="hi", agent_mode="headless"))
    assert caught.value.field == "spec.agent_mode"
    assert str(caught.value) == (
        "spec.agent_mode: must be one of agentic, plain, or empty (got 'headless')"
    )


def test_agent_mode_of_a_nested_subtask_is_named_by_its_path() -> None:
    spec = TaskSpec(
        subtasks=(
            TaskSpec(kind="echo", prompt="a"),
            TaskSpec(kind="gemini", prompt="b", agent_mode="yolo"),
        )
    )
    with pytest.raises(InvalidArgument) as caught:
        validate_submission(spec, max_depth=4)
    assert caught.value.field == "spec.subtasks[1].agent_mode"


@pytest.mark.parametrize(
    ("spec", "shown"),
    [
        (TaskSpec(kind="shell", command="ls", agent_mode="plain"), "a shell task"),
        (
            TaskSpec(agent_mode="plain", subtasks=(TaskSpec(kind="echo", prompt="a"),)),
            "a task without a kind",
        ),
    ],
)
def test_agent_mode_applies_to_gemini_tasks_only(spec: TaskSpec, shown: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_submission(spec, max_depth=4)
    assert str(caught.value) == f"spec.agent_mode: applies to gemini tasks only (this is {shown})"
