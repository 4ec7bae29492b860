"""What the scheduler accepts: a runnable spec, or a tree of them no deeper than the limit;
and the defaults it fills in, so that the stored spec says what runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from agentmesh.errors import InvalidArgument
from agentmesh.tasks.model import (
    AgentMode,
    TaskKind,
    TaskSpec,
    validate_common,
    validate_runnable,
)

MAX_TASKS_PER_SUBMISSION = 1000


def validate_submission(spec: TaskSpec, *, max_depth: int) -> None:
    """Raise InvalidArgument naming the first bad field, e.g. `spec.subtasks[2].command`."""
    count = _validate(spec, "spec", depth=0, max_depth=max_depth)
    if count > MAX_TASKS_PER_SUBMISSION:
        raise InvalidArgument(
            "spec.subtasks",
            f"{count} tasks in one submission; the limit is {MAX_TASKS_PER_SUBMISSION}",
        )


def validate_submissions(specs: Sequence[TaskSpec], *, max_depth: int) -> None:
    """SubmitTasks' specs: at least one, each as `validate_submission` checks it (named
    `specs[3]...`), and no more tasks in all than one submission may have."""
    if not specs:
        raise InvalidArgument("specs", "is empty: give at least one task spec")
    count = sum(
        _validate(spec, f"specs[{index}]", depth=0, max_depth=max_depth)
        for index, spec in enumerate(specs)
    )
    if count > MAX_TASKS_PER_SUBMISSION:
        raise InvalidArgument(
            "specs", f"{count} tasks in one call; the limit is {MAX_TASKS_PER_SUBMISSION}"
        )


def _validate(spec: TaskSpec, path: str, *, depth: int, max_depth: int) -> int:
    if not spec.subtasks:
        validate_runnable(spec, path)
        return 1
    if depth >= max_depth:
        raise InvalidArgument(
            f"{path}.subtasks", f"subtasks are nested deeper than the limit of {max_depth}"
        )
    if spec.kind:
        validate_runnable(spec, path)
    else:
        validate_common(spec, path)
    return 1 + sum(
        _validate(child, f"{path}.subtasks[{index}]", depth=depth + 1, max_depth=max_depth)
        for index, child in enumerate(spec.subtasks)
    )


def with_defaults(spec: TaskSpec, *, agent_mode: AgentMode) -> TaskSpec:
    """The spec with the configured agent mode on every gemini task that names none."""
    filled = spec
    if spec.kind == TaskKind.GEMINI and not spec.agent_mode:
        filled = dataclasses.replace(filled, agent_mode=agent_mode.value)
    if spec.subtasks:
        children = tuple(with_defaults(child, agent_mode=agent_mode) for child in spec.subtasks)
        filled = dataclasses.replace(filled, subtasks=children)
    return filled


def with_user_modes(spec: TaskSpec, modes: Mapping[str, str], inherited_user: str = "") -> TaskSpec:
    """The spec with each task that names no permission mode given its user's
    `default_permissions` (`modes`, by user); a subtask without a user is its parent's."""
    user = spec.user or inherited_user
    filled = spec
    if not spec.permission_mode and (mode := modes.get(user)):
        filled = dataclasses.replace(filled, permission_mode=mode)
    if spec.subtasks:
        children = tuple(with_user_modes(child, modes, user) for child in spec.subtasks)
        filled = dataclasses.replace(filled, subtasks=children)
    return filled


def users_of(spec: TaskSpec) -> set[str]:
    """Every user a submission names."""
    return {spec.user, *(user for child in spec.subtasks for user in users_of(child))} - {""}
