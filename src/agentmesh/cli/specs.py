"""Task specs from the command line: from flags, or from a JSON or YAML file of a TaskSpec.

A file uses the protobuf JSON mapping of `agentmesh.v1.TaskSpec` (field names as in the
proto, or their lowerCamelCase forms), with `subtasks` nested to any depth the scheduler
allows; or it is a list of such specs (`submit` stores them in one call, all or none). YAML
is read as the same structure. Flags given with a file override the top-level fields (of
each spec of a list). A file that cannot be used is one `CliError` line naming the file and
the problem (and the list entry: `tasks.yaml[2]`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from agentmesh.cli.client import EXIT_USAGE, CliError
from agentmesh.v1 import task_pb2


@dataclass(frozen=True)
class SpecFlags:
    """The task flags of `submit` and `run`; None (or empty) means not given."""

    kind: str | None = None
    prompt: str | None = None
    command: str | None = None
    capabilities: tuple[str, ...] = ()
    host: str | None = None
    user: str | None = None
    model: str | None = None
    mode: str | None = None
    agent_mode: str | None = None
    priority: int | None = None
    timeout: int | None = None
    max_attempts: int | None = None
    idempotency_key: str | None = None
    description: str | None = None
    remember_as: str | None = None
    on_refusal: str | None = None

    def given(self) -> bool:
        return any(value not in (None, ()) for value in vars(self).values())


# Flag name -> TaskSpec field.
_FIELDS = {
    "kind": "kind",
    "prompt": "prompt",
    "command": "command",
    "host": "target_host",
    "user": "user",
    "model": "model",
    "mode": "permission_mode",
    "agent_mode": "agent_mode",
    "priority": "priority",
    "timeout": "timeout_seconds",
    "max_attempts": "max_attempts",
    "idempotency_key": "idempotency_key",
    "description": "description",
    "remember_as": "remember_as",
    "on_refusal": "on_refusal",
}


@dataclass(frozen=True)
class Specs:
    """What a command submits: one spec, or a file's list of them (`listed`)."""

    specs: list[task_pb2.TaskSpec]
    listed: bool


def build_spec(flags: SpecFlags, file: str | None) -> task_pb2.TaskSpec:
    """The spec a command submits: the file's (if any) with the flags on top."""
    built = build_specs(flags, file)
    if built.listed:
        raise CliError(
            f"{_name(file or '-')}: holds a list of task specs; this command follows one"
            " task (agentmesh submit -f stores a list)",
            EXIT_USAGE,
        )
    return built.specs[0]


def build_specs(flags: SpecFlags, file: str | None) -> Specs:
    """The specs a command submits: the file's (one, or a list) with the flags on top of
    each; or the flags' one spec."""
    if file is None and not flags.given():
        raise CliError(
            "nothing to run: give --command, --prompt (with --kind) or -f FILE", EXIT_USAGE
        )
    read = read_spec_file(file) if file is not None else Specs([task_pb2.TaskSpec()], False)
    return Specs([_with_flags(spec, flags) for spec in read.specs], read.listed)


def _with_flags(spec: task_pb2.TaskSpec, flags: SpecFlags) -> task_pb2.TaskSpec:
    for flag, name in _FIELDS.items():
        value = getattr(flags, flag)
        if value is not None:
            setattr(spec, name, value)
    if flags.capabilities:
        del spec.required_capabilities[:]
        spec.required_capabilities.extend(flags.capabilities)
    if not spec.kind and not spec.subtasks:
        # The kind the flags imply: a command is for the shell, a prompt for Gemini.
        if spec.command and not spec.prompt:
            spec.kind = "shell"
        elif spec.prompt and not spec.command:
            spec.kind = "gemini"
    return spec


def read_spec_file(file: str) -> Specs:
    """Parse the TaskSpecs of FILE (`-`: standard input), JSON or YAML: one spec, or a list."""
    name = _name(file)
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{name}: cannot read: {exc.strerror}", EXIT_USAGE) from None
    except UnicodeDecodeError:
        raise CliError(f"{name}: not UTF-8 text", EXIT_USAGE) from None
    values = _parse(name, text)
    if isinstance(values, list):
        if not values:
            raise CliError(f"{name}: the list of task specs is empty", EXIT_USAGE)
        return Specs([_spec(f"{name}[{index}]", entry) for index, entry in enumerate(values)], True)
    return Specs([_spec(name, values)], False)


def _name(file: str) -> str:
    return "standard input" if file == "-" else file


def _spec(name: str, values: Any) -> task_pb2.TaskSpec:
    if not isinstance(values, dict):
        raise CliError(
            f"{name}: a task spec must be a mapping of fields (or a file a list of them)",
            EXIT_USAGE,
        )
    try:
        return json_format.ParseDict(values, task_pb2.TaskSpec())
    except json_format.ParseError as exc:
        problem = " ".join(str(exc).split())
        raise CliError(f"{name}: not a TaskSpec: {problem}", EXIT_USAGE) from None


def _parse(name: str, text: str) -> Any:
    if text.lstrip().startswith(("{", "[")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise CliError(
                f"{name}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                EXIT_USAGE,
            ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise CliError(f"{name}: invalid YAML{where}: {problem}", EXIT_USAGE) from None


def replay_spec(tree: list[task_pb2.Task], root_id: str) -> task_pb2.TaskSpec:
    """The spec tree of a stored task, to submit again: the scheduler keeps each task's own
    spec on its row and its subtasks as child tasks. The idempotency key is dropped (the same
    key would return the original)."""
    by_id = {task.id: task for task in tree}

    def rebuild(task_id: str) -> task_pb2.TaskSpec:
        task = by_id[task_id]
        spec = task_pb2.TaskSpec()
        spec.CopyFrom(task.spec)
        spec.idempotency_key = ""
        del spec.subtasks[:]
        spec.subtasks.extend(rebuild(child) for child in task.child_ids)
        return spec

    return rebuild(root_id)
