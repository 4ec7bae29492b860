"""`agentmesh submit | run | watch | cancel | replay`: tasks, from submission to their end.

`run`, `watch` and `replay` exit with the task's final state: 0 completed, 3 failed,
4 canceled, 5 rejected (1 when the scheduler cannot be used, 2 for a wrong request).
"""

from __future__ import annotations

from typing import Any

import click
from rich.text import Text

from agentmesh.cli.app import App, json_option, output_for, pass_app
from agentmesh.cli.client import (
    CALL_TIMEOUT,
    EXIT_CANCELED,
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REJECTED,
    agent_names,
    get_task,
    scheduler_stub,
    task_tree,
)
from agentmesh.cli.follow import follow
from agentmesh.cli.output import Output
from agentmesh.cli.specs import SpecFlags, build_spec, build_specs, replay_spec
from agentmesh.cli.views import (
    STATE_STYLES,
    duration_text,
    first_line,
    seconds,
    state_name,
    task_json,
)
from agentmesh.v1 import node_pb2, scheduler_pb2, task_pb2

EXIT_CODES = {
    "completed": EXIT_OK,
    "failed": EXIT_FAILED,
    "canceled": EXIT_CANCELED,
    "rejected": EXIT_REJECTED,
}


def exit_code_for(task: task_pb2.Task) -> int:
    return EXIT_CODES.get(state_name(task.state), EXIT_ERROR)


def spec_options(function: Any) -> Any:
    """The flags of a task spec, shared by `submit` and `run`."""
    options = [
        click.option(
            "-f",
            "--file",
            "spec_file",
            metavar="FILE",
            help="a TaskSpec (with subtasks) as JSON or YAML; - reads standard input",
        ),
        click.option(
            "--kind",
            type=click.Choice(["shell", "gemini", "echo"]),
            help="the executor (default: shell with --command, gemini with --prompt)",
        ),
        click.option("--prompt", help="gemini: the prompt; echo: the text"),
        click.option("--command", help="shell: one command line"),
        click.option(
            "--capability",
            "capabilities",
            multiple=True,
            metavar="NAME",
            help="a capability the node must have (repeatable)",
        ),
        click.option("--host", help="run only on this node (name, hostname or agent id)"),
        click.option("--user", help="who the task runs for"),
        click.option("--model", help="gemini: the model, e.g. gemini-2.5-flash"),
        click.option(
            "--mode",
            type=click.Choice(["weak", "superuser"]),
            help="permission mode (default: agent_defaults.permissions)",
        ),
        click.option(
            "--agent-mode",
            type=click.Choice(["agentic", "plain"]),
            help="gemini: with tools, or an answer only (default: agent_defaults.mode)",
        ),
        click.option("--priority", type=int, help="higher runs first"),
        click.option("--timeout", type=click.IntRange(min=1), metavar="SECONDS"),
        click.option("--max-attempts", type=click.IntRange(min=1), metavar="N"),
        click.option("--idempotency-key", metavar="KEY", help="the same key returns the same task"),
        click.option("--description", help="a few words shown in listings"),
        click.option(
            "--on-refusal",
            type=click.Choice(["reject", "ask"]),
            help="a refused command ends the task (reject, the default) or asks its user (ask)",
        ),
        click.option(
            "--remember-as",
            metavar="LABEL",
            help="keep the task's output as knowledge under this label when it completes",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _flags(values: dict[str, Any]) -> SpecFlags:
    return SpecFlags(
        kind=values["kind"],
        prompt=values["prompt"],
        command=values["command"],
        capabilities=tuple(values["capabilities"]),
        host=values["host"],
        user=values["user"],
        model=values["model"],
        mode=values["mode"],
        agent_mode=values["agent_mode"],
        priority=values["priority"],
        timeout=values["timeout"],
        max_attempts=values["max_attempts"],
        idempotency_key=values["idempotency_key"],
        description=values["description"],
        remember_as=values["remember_as"],
        on_refusal=values["on_refusal"],
    )


@click.command()
@spec_options
@json_option
@pass_app
def submit(app: App, /, spec_file: str | None, as_json: bool, **values: Any) -> int:
    """Submit a task and print its id (with --json: the task).

    A file (-f) may hold a list of task specs: they are stored in one call, all or none
    (at most 1,000 tasks), and their ids printed in order, one a line (with --json: a list
    of the tasks).
    """

    async def command() -> int:
        built = build_specs(_flags(values), spec_file)
        output = output_for(as_json)
        async with scheduler_stub(app.settings(), app.scheduler_address()) as stub:
            if built.listed:
                batch = scheduler_pb2.SubmitTasksRequest(specs=built.specs)
                tasks = list((await stub.SubmitTasks(batch, timeout=CALL_TIMEOUT)).tasks)
            else:
                request = scheduler_pb2.SubmitTaskRequest(spec=built.specs[0])
                tasks = [await stub.SubmitTask(request, timeout=CALL_TIMEOUT)]
        if output.json:
            documents = [task_json(task) for task in tasks]
            output.data(documents if built.listed else documents[0])
        else:
            for task in tasks:
                output.line(task.id)
        return EXIT_OK

    return app.run(command)


class _Following:
    """The id of the task a command follows, for the message on Ctrl-C."""

    task_id = ""

    def hint(self) -> str | None:
        if not self.task_id:
            return None
        return (
            f"stopped following {self.task_id}; it goes on"
            f" (agentmesh watch {self.task_id}, agentmesh cancel {self.task_id})"
        )


@click.command()
@spec_options
@json_option
@pass_app
def run(app: App, /, spec_file: str | None, as_json: bool, **values: Any) -> int:
    """Submit a task and show it live until it ends.

    Exit code: 0 completed, 3 failed, 4 canceled, 5 rejected. With --json: its events, one
    JSON object a line.
    """
    following = _Following()

    async def command() -> int:
        spec = build_spec(_flags(values), spec_file)
        output = output_for(as_json)
        async with scheduler_stub(app.settings(), app.scheduler_address()) as stub:
            task = await stub.SubmitTask(
                scheduler_pb2.SubmitTaskRequest(spec=spec), timeout=CALL_TIMEOUT
            )
            following.task_id = task.id
            _announce(output, task)
            final = await follow(stub, output, task.id)
        return exit_code_for(final)

    return app.run(command, on_interrupt=following.hint)


@click.command()
@click.argument("task_id", metavar="ID")
@json_option
@pass_app
def watch(app: App, task_id: str, as_json: bool) -> int:
    """Follow a running task to its end, or replay a finished one, as `run` shows it.

    Exit code: as `run`'s, from the task's final state.
    """
    following = _Following()
    following.task_id = task_id

    async def command() -> int:
        output = output_for(as_json)
        async with scheduler_stub(app.settings(), app.scheduler_address()) as stub:
            task = await get_task(stub, task_id)
            _announce(output, task)
            final = await follow(stub, output, task.id)
        return exit_code_for(final)

    return app.run(command, on_interrupt=following.hint)


def _announce(output: Output, task: task_pb2.Task) -> None:
    if not output.json:
        output.note(Text(f"task {task.id}", style="bold"))


@click.command()
@click.argument("task_id", metavar="ID")
@click.option("--reason", default="", help="why (stored as the task's error)")
@json_option
@pass_app
def cancel(app: App, task_id: str, reason: str, as_json: bool) -> int:
    """Cancel a task, its subtasks and what runs of them."""

    async def command() -> int:
        output = output_for(as_json)
        async with scheduler_stub(app.settings(), app.scheduler_address()) as stub:
            task = await stub.CancelTask(
                node_pb2.CancelTaskRequest(task_id=task_id, reason=reason), timeout=CALL_TIMEOUT
            )
        if output.json:
            output.data(task_json(task))
        else:
            output.line(f"{task.id} {state_name(task.state)}")
        return EXIT_OK

    return app.run(command)


@click.command()
@click.argument("task_id", metavar="ID")
@json_option
@pass_app
def replay(app: App, task_id: str, as_json: bool) -> int:
    """Run a task's spec again as a new task linked to it; compare the two when it ends.

    Exit code: as `run`'s, from the new task's final state. With --json: {"original": TASK,
    "replay": TASK} once it ends.
    """
    following = _Following()

    async def command() -> int:
        output = output_for(as_json)
        async with scheduler_stub(app.settings(), app.scheduler_address()) as stub:
            tree = await task_tree(stub, task_id)
            request = scheduler_pb2.SubmitTaskRequest(
                spec=replay_spec(tree, task_id), replay_of=task_id
            )
            task = await stub.SubmitTask(request, timeout=CALL_TIMEOUT)
            following.task_id = task.id
            if not output.json:
                output.note(Text(f"task {task.id}, a replay of {task_id}", style="bold"))
            final = await follow(stub, output, task.id, quiet=output.json)
            original = await get_task(stub, task_id)
            names = await agent_names(stub)
        if output.json:
            output.data({"original": task_json(original), "replay": task_json(final)})
        else:
            _side_by_side(output, original, final, names)
        return exit_code_for(final)

    return app.run(command, on_interrupt=following.hint)


def _side_by_side(
    output: Output, original: task_pb2.Task, replayed: task_pb2.Task, names: dict[str, str]
) -> None:
    def facts(task: task_pb2.Task) -> list[str | Text]:
        state = state_name(task.state)
        return [
            task.id,
            Text(state, style=STATE_STYLES.get(state, "")),
            names.get(task.assigned_agent, task.assigned_agent) or "-",
            duration_text(seconds(task)),
            str(task.usage.total_tokens),
            first_line(task.output or task.error, 60) or "-",
        ]

    labels = ["task", "state", "node", "time", "tokens", "output"]
    rows = [
        [label, left, right]
        for label, left, right in zip(labels, facts(original), facts(replayed), strict=True)
    ]
    output.line()
    output.table(["", "original", "replay"], rows)
