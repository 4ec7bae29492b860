"""A task's events as a terminal session would show them.

The same events always render the same way, so `watch` of a finished task shows what `run`
showed while it ran. What the task produced (the model's answer, a command's stdout) goes
to stdout as it comes; everything about it (placement, tool calls and their results, the
command's stderr, refusals, API errors, the end) goes to stderr. In a tree, each line of a
subtask carries its title in brackets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from rich.text import Text

from agentmesh.cli.output import Output
from agentmesh.cli.views import STATE_STYLES, duration_text, first_line
from agentmesh.tasks import events
from agentmesh.tasks.events import TaskEvent
from agentmesh.tasks.model import TaskState

PARAMETERS_WIDTH = 160


@dataclass
class _Stream:
    """Where one task's rendering stands."""

    label: str
    at_line_start: bool = True
    pending: str = ""  # in a tree: the part of a line not printed yet
    started_at: float | None = None  # when it was placed
    tools: dict[str, str] = field(default_factory=dict)


class EventRenderer:
    """Renders the events of one task, or of the tasks of a tree (labelled)."""

    def __init__(self, output: Output, agent_names: dict[str, str]) -> None:
        self._output = output
        self._names = agent_names
        self._streams: dict[str, _Stream] = {}
        self.labelled = False

    @property
    def mid_line(self) -> bool:
        """True while a line of stdout is not finished."""
        return any(not s.at_line_start for s in self._streams.values())

    def add_task(self, task_id: str, label: str) -> None:
        self._streams[task_id] = _Stream(label)

    def render(self, event: TaskEvent) -> None:
        stream = self._streams.setdefault(event.task_id, _Stream(event.task_id))
        payload = event.payload
        placed = isinstance(payload, events.Status) and payload.state is TaskState.WORKING
        if stream.started_at is None and placed:  # placed (or waiting for its subtasks)
            stream.started_at = event.time
        match payload:
            case events.Text(text=text, role="assistant") | events.Stdout(text=text):
                self._content(stream, text)
            case events.Text():
                pass  # the prompt as the CLI echoes it
            case events.Stderr(text=text):
                self._meta(stream, Text(text.rstrip("\n"), style="red"))
            case events.Status(state=state, message=message):
                self._meta(stream, Text(f"· {self._named(message or state.value)}", style="dim"))
            case events.ToolUse(tool_id=tool_id, tool_name=name, parameters_json=parameters):
                stream.tools[tool_id] = name
                self._meta(stream, Text(f"⚙ {name} {_compact(parameters)}", style="cyan"))
            case events.ToolResult():
                self._meta(stream, _tool_result(payload, stream.tools.get(payload.tool_id, "")))
            case events.Diagnostic(severity=severity, message=message):
                style = "red" if severity == "error" else "yellow"
                self._meta(stream, Text(f"! {severity}: {message}", style=style))
            case events.Refusal():
                self._meta(
                    stream,
                    Text(
                        f"✗ refused `{payload.command}` ({payload.rule}, {payload.mode} mode):"
                        f" {payload.detail}",
                        style="red",
                    ),
                )
            case events.ApiError():
                self._meta(stream, Text(f"✗ {_api_error(payload)}", style="red"))
            case events.Result():
                self._flush(stream)
                self._meta(stream, self._result(stream, event, payload))

    def waiting(self, task_id: str, reason: str) -> None:
        """Why a task has not started (from GetTask; not part of the trace)."""
        stream = self._streams.setdefault(task_id, _Stream(task_id))
        self._meta(stream, Text(f"… waiting: {reason}", style="yellow"))

    def finish(self) -> None:
        for stream in self._streams.values():
            self._flush(stream)

    # ------------------------------------------------------------------ pieces

    def _named(self, text: str) -> str:
        for agent_id, name in self._names.items():
            if agent_id and agent_id in text:
                text = text.replace(agent_id, name)
        return text

    def _content(self, stream: _Stream, text: str) -> None:
        if not text:
            return
        if not self.labelled:
            self._output.write(text)
            stream.at_line_start = text.endswith("\n")
            return
        *lines, stream.pending = (stream.pending + text).split("\n")
        for line in lines:
            self._output.line(Text.assemble((f"[{stream.label}] ", "bold"), line))

    def _flush(self, stream: _Stream) -> None:
        if self.labelled and stream.pending:
            self._output.line(Text.assemble((f"[{stream.label}] ", "bold"), stream.pending))
            stream.pending = ""
        elif not self.labelled and not stream.at_line_start:
            self._output.write("\n")
            stream.at_line_start = True

    def _meta(self, stream: _Stream, text: Text) -> None:
        if not self.labelled and not stream.at_line_start:
            # The answer so far stays on its line; what follows starts a new one.
            self._output.write("\n")
            stream.at_line_start = True
        if self.labelled:
            text = Text.assemble((f"[{stream.label}] ", "bold"), text)
        self._output.note(text)

    def _result(self, stream: _Stream, event: TaskEvent, result: events.Result) -> Text:
        state = result.state.value
        parts = [state]
        if stream.started_at is not None:
            parts.append(f"in {duration_text(event.time - stream.started_at)}")
        if event.agent_id:
            parts.append(f"on {self._names.get(event.agent_id, event.agent_id)}")
        if result.exit_code:
            parts.append(f"(exit {result.exit_code})")
        if result.usage.total_tokens:
            parts.append(f"· {result.usage.total_tokens} tokens")
        line = "● " + " ".join(parts)
        if result.error:
            line += f": {first_line(result.error, 200)}"
        return Text(line, style=STATE_STYLES.get(state, ""))


def _compact(parameters: str) -> str:
    try:
        text = json.dumps(json.loads(parameters), ensure_ascii=False)
    except ValueError:
        text = parameters
    return text if len(text) <= PARAMETERS_WIDTH else text[: PARAMETERS_WIDTH - 1] + "…"


def _tool_result(result: events.ToolResult, name: str) -> Text:
    label = name or result.tool_id
    if result.status == "success":
        shown = first_line(result.output, 120)
        return Text(f"  ✓ {label}" + (f": {shown}" if shown else ""), style="green")
    problem = first_line(result.error_message or result.output, 160)
    kind = f" ({result.error_type})" if result.error_type else ""
    return Text(f"  ✗ {label}{kind}: {problem}", style="red")


def _api_error(error: events.ApiError) -> str:
    facts = [error.kind.value]
    if error.quota_scope:
        facts.append(error.quota_scope)
    if error.retry_delay_seconds:
        facts.append(f"retry in {error.retry_delay_seconds:g}s")
    return f"API error ({', '.join(facts)}): {first_line(error.message, 200)}"
