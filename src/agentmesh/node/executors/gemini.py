"""`gemini`: the real Gemini CLI, headless, with its own home, settings and policy per task.

Each task runs `GEMINI_CLI_COMMAND -p PROMPT -o stream-json -m MODEL` with:
- its own `GEMINI_CLI_HOME`, whose settings select API-key auth, turn usage statistics,
  telemetry and auto-update off, and make the CLI give up at the first API error (a 429
  reaches it only when the node's proxy found no key with capacity);
- a policy file for the CLI's policy engine, generated from the task's agent mode and
  permission mode: in agentic mode weak allows `run_shell_command` only for the allowlist's
  programs and superuser allows everything but the denylist's (in headless mode whatever no
  rule allows is denied); plain mode denies every tool, so the task is an answer only;
- no API key at all: `GEMINI_API_KEY` is a per-run credential of the node's Gemini API proxy
  (`GOOGLE_GEMINI_BASE_URL`), which forwards each request with a real key from the run's key
  source (see agentmesh.node.gemini_proxy). Nothing the agent runs can read a key; the keys
  the node knows are still scrubbed from everything the CLI prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shlex
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from agentmesh.config import PermissionMode, Permissions
from agentmesh.node.command_check import CommandChecker
from agentmesh.node.environment import DEFAULT_PATH, Scrubber, task_environment
from agentmesh.node.executors.base import Exit, Job, Output, supervise, with_side_payloads
from agentmesh.node.executors.gemini_errors import classify_api_error
from agentmesh.node.gemini_proxy import GeminiProxy, ProxyRun
from agentmesh.node.key_source import KeySources, NoApiKey, TaskRun
from agentmesh.node.leftovers import Ledger
from agentmesh.node.mesh_tools import SERVER_NAME, MeshGrant, MeshTools
from agentmesh.node.permissions import CommandRefused
from agentmesh.node.permissions.approvals import Approval, words
from agentmesh.node.sandbox import Confinement, Sandbox, SandboxUnavailable
from agentmesh.tasks.events import (
    ApiError,
    Diagnostic,
    Payload,
    Refusal,
    Result,
    Text,
    ToolResult,
    ToolUse,
    Usage,
)
from agentmesh.tasks.model import AgentMode, TaskKind, TaskState

log = logging.getLogger(__name__)

# Exit codes of the Gemini CLI (from its source), for the error message of a failed run.
EXIT_REASONS = {
    1: "general or API error",
    41: "authentication failed",
    42: "invalid input",
    44: "sandbox error",
    52: "configuration error",
    53: "turn limit reached",
    54: "tool execution error",
    55: "untrusted workspace",
    130: "cancelled",
}
STDERR_TAIL_CHARS = 16 << 10
# What a JavaScript regex gives meaning to (escaped in approval rules).
_JS_SPECIAL = re.compile(r"[\\^$.*+?()[\]{}|/]")
# What a weak-mode run must be able to execute besides the CLI: Node.js, which its
# `#!/usr/bin/env node` line starts.
CLI_RUNTIME = ("env", "node")

SETTINGS: dict[str, Any] = {
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "general": {
        "enableAutoUpdate": False,
        "enableAutoUpdateNotification": False,
        "maxAttempts": 1,
    },
}


# Plain mode: one rule above every other (user tier, top priority) that denies all tools,
# including those the CLI's built-in policies allow (read_file, glob, ...).
PLAIN_POLICY = (
    "# agentmesh plain mode: an answer only, every tool is denied.\n"
    "[[rule]]\n"
    "toolName = '*'\n"
    "decision = 'deny'\n"
    "priority = 999\n"
    "denyMessage = 'tools are off: this task runs in plain agent mode (an answer only)'\n"
)


# The mesh tools (agentmesh.node.mesh_tools) are the node's own: the scheduler checks each
# call against the task's limits, so the CLI's policy lets them all run.
MESH_TOOLS_POLICY = (
    "# agentmesh mesh tools: delegation, checked by the scheduler.\n"
    "[[rule]]\n"
    f"toolName = 'mcp_{SERVER_NAME}_*'\n"
    f"mcpName = '{SERVER_NAME}'\n"
    "decision = 'allow'\n"
    "priority = 100\n"
)


def policy_toml(
    mode: PermissionMode,
    permissions: Permissions,
    agent_mode: AgentMode = AgentMode.AGENTIC,
    *,
    mesh_tools: bool = False,
    approvals: Sequence[Approval] = (),
) -> str:
    """The CLI policy for an agent mode and a permission mode (TOML literal strings: no
    escaping needed), allowing the mesh tools when the run has them, and in weak mode the
    commands its user approved."""
    if agent_mode is AgentMode.PLAIN:
        return PLAIN_POLICY
    parts = [_shell_policy(mode, permissions)]
    if mode is PermissionMode.WEAK and approvals:
        parts.append(approval_rules(approvals))
        # An approval never overrides the denylist (a prefix of `env` must not run `env rm`).
        parts.append("\n\n".join(denylist_rules(permissions.superuser.denylist)) + "\n")
    if mesh_tools:
        parts.append(MESH_TOOLS_POLICY)
    return "\n".join(parts)


def approval_rules(approvals: Sequence[Approval]) -> str:
    """Allow rules for approved commands: exactly or by prefix (whole words). TOML basic
    strings, escaped as JSON escapes them.

    The CLI matches a `commandRegex` against the call's arguments as JSON, after
    `"command":"`: an exact rule is the command's JSON text, escaped for a JavaScript
    regex, and the closing quote."""
    rules = ["# agentmesh: commands the task's user approved."]
    for approval in approvals:
        if approval.prefix:
            match = f"commandPrefix = [{json.dumps(approval.command, ensure_ascii=False)}]"
        else:
            # The CLI's JSON of the arguments keeps non-ASCII characters as they are.
            text = json.dumps(approval.command, ensure_ascii=False)[1:-1]
            exact = _JS_SPECIAL.sub(r"\\\g<0>", text) + '"'
            match = f"commandRegex = {json.dumps(exact, ensure_ascii=False)}"
        rules.append(
            f"[[rule]]\ntoolName = 'run_shell_command'\n{match}\ndecision = 'allow'\n"
            "priority = 200\n"
        )
    return "\n".join(rules)


def _shell_policy(mode: PermissionMode, permissions: Permissions) -> str:
    if mode is PermissionMode.WEAK:
        prefixes = ", ".join(f"'{name}'" for name in permissions.weak.allowlist)
        return (
            "# agentmesh weak mode: only the allowlist's programs may run.\n"
            "[[rule]]\n"
            "toolName = 'run_shell_command'\n"
            f"commandPrefix = [{prefixes}]\n"
            "decision = 'allow'\n"
            "priority = 100\n"
        )
    names = permissions.superuser.denylist
    rules = [
        "# agentmesh superuser mode: everything but the denylist's programs.",
        # Redirections are ordinary shell in superuser mode.
        "[[rule]]\ntoolName = 'run_shell_command'\ndecision = 'allow'\npriority = 10\n"
        "allowRedirection = true",
    ]
    rules += denylist_rules(names)
    return "\n\n".join(rules) + "\n"


def denylist_rules(names: Sequence[str]) -> list[str]:
    """Rules that deny the denylist's programs above every allow rule (priority 900)."""
    if not names:
        return []
    # The CLI checks every sub-command of a command line on its own. A program is denied
    # by name (commandPrefix matches whole words) and by path (`/bin/rm`). The CLI drops
    # regexes with nested quantifiers, so these have none.
    prefixes = ", ".join(f"'{name}'" for name in names)
    rules = [
        "[[rule]]\ntoolName = 'run_shell_command'\n"
        f"commandPrefix = [{prefixes}]\ndecision = 'deny'\npriority = 900\n"
        "denyMessage = 'the program is on the superuser denylist'"
    ]
    for name in names:
        rules.append(
            "[[rule]]\ntoolName = 'run_shell_command'\n"
            f"commandRegex = '[^\\s\"]*/{re.escape(name)}[\\s\"\\\\]'\n"
            "decision = 'deny'\npriority = 900\n"
            f"denyMessage = '{name} is on the superuser denylist'"
        )
    return rules


class GeminiExecutor:
    kind = TaskKind.GEMINI
    needs_workdir = True

    def __init__(
        self,
        command: str,
        permissions: Permissions,
        *,
        default_model: str,
        sandbox: Sandbox,
        grace_seconds: float,
        proxy: GeminiProxy,
        keys: KeySources,
        mesh_tools: MeshTools | None = None,
        checker: CommandChecker | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self._command = shlex.split(command)
        # The node's MCP server for its agents' mesh tools (with a scheduler only).
        self._mesh_tools = mesh_tools
        # Tells whether a command the CLI's policy refused may be approved (see approvals).
        self._checker = checker
        self._permissions = permissions
        self._default_model = default_model
        self._sandbox = sandbox
        self._grace = grace_seconds
        self._ledger = ledger
        self._proxy = proxy
        self._keys = keys

    async def run(self, job: Job) -> AsyncIterator[Payload]:
        try:
            source = self._keys.choose(job.api_key)
        except NoApiKey as exc:
            yield Result(TaskState.FAILED, error=str(exc))
            return
        # What the proxy has to say about the run (a cooled key, the budget) joins its events.
        side: asyncio.Queue[Payload] = asyncio.Queue()
        task = TaskRun(job.task_id, job.attempt, job.key_fingerprint, job.token_budget)
        run = self._proxy.register(task, source, side.put_nowait)
        grant = None
        home: Path | None = None
        try:
            if self._mesh_tools and job.mesh_credential and job.agent_mode is AgentMode.AGENTIC:
                grant = self._mesh_tools.grant(job.task_id, job.mesh_credential, lambda: run.tokens)
            home = Path(tempfile.mkdtemp(prefix="agentmesh-gemini-home-"))
            async for payload in self._run_in(home, job, run, side, grant):
                yield payload
        finally:
            if grant is not None:
                self._mesh_tools.revoke(grant)  # type: ignore[union-attr]
            self._proxy.unregister(run)
            if home is not None:
                shutil.rmtree(home, ignore_errors=True)

    async def _run_in(
        self,
        home: Path,
        job: Job,
        run: ProxyRun,
        side: asyncio.Queue[Payload],
        grant: MeshGrant | None,
    ) -> AsyncIterator[Payload]:
        config_dir = home / ".gemini"
        config_dir.mkdir()
        (home / "tmp").mkdir()
        settings = dict(SETTINGS)
        if grant is not None and self._mesh_tools is not None:
            settings["mcpServers"] = self._mesh_tools.cli_settings(grant, job.timeout_seconds)
        (config_dir / "settings.json").write_text(json.dumps(settings, indent=2))
        if job.context:
            # The CLI's own context file, in the run's home (its global GEMINI.md): a shared
            # node.workdir would mix the contexts of tasks running at once.
            (config_dir / "GEMINI.md").write_text(job.context)
        # --policy replaces the user's policy directory, so only this file applies.
        policy = home / "agentmesh-policy.toml"
        policy.write_text(
            policy_toml(
                job.permission_mode,
                self._permissions,
                job.agent_mode,
                mesh_tools=grant is not None,
                approvals=job.approvals,
            )
        )
        model = job.spec.model or self._default_model
        argv = [
            *self._command,
            *("-p", job.spec.prompt, "-o", "stream-json", "-m", model, "--policy", str(policy)),
        ]
        # Weak mode: the shell tool's commands run in a bash that executes only the
        # allowlist (the CLI itself must be able to execute Node.js).
        weak = job.permission_mode is PermissionMode.WEAK
        shell = home / "bin"
        allowed = (*self._permissions.weak.allowlist, *approved_programs(job.approvals))
        confined = weak and self._sandbox.confined_shell(shell, allowed)
        try:
            launch = self._sandbox.launch(
                argv, self._confinement(job, home, shell if confined else None, grant)
            )
        except SandboxUnavailable as exc:
            yield Result(TaskState.REJECTED, error=str(exc))
            return
        if self._sandbox.name == "none":
            yield Diagnostic("warning", f"not sandboxed: {self._sandbox.describe()}")
        for writable in (home, config_dir, home / "tmp", job.workdir):
            self._sandbox.give(writable)
        base = task_environment(home, tmpdir=home / "tmp")
        if confined:
            base["PATH"] = f"{shell}:{base['PATH']}"
        env = {
            **base,
            "GEMINI_API_KEY": run.credential,
            "GOOGLE_GEMINI_BASE_URL": self._proxy.url,
            "GEMINI_CLI_HOME": str(home),
            "GEMINI_CLI_TRUST_WORKSPACE": "true",
            # One process instead of a relaunching wrapper: faster, and SIGTERM reaches it.
            "GEMINI_CLI_NO_RELAUNCH": "true",
            "NO_COLOR": "1",
        }
        held = self._keys.held.keys if self._keys.held else ()
        mesh_token = grant.token if grant is not None else ""
        scrub = Scrubber(job.api_key, mesh_token, *(key.secret for key in held))
        parser = StreamJsonParser(model)
        refusals = PolicyRefusals(job.permission_mode, self._approvable)
        stderr_tail = ""
        pending = ""
        process = supervise(job, launch, env=env, grace_seconds=self._grace, ledger=self._ledger)
        # Closed with the run, however it ends: its pending read must not outlive it.
        async with contextlib.aclosing(with_side_payloads(process, side)) as items:
            async for item in items:
                if not isinstance(item, Output | Exit):
                    yield item
                elif isinstance(item, Exit):
                    if pending:
                        for payload in parser.feed_line(pending):
                            yield payload
                    while not side.empty():
                        yield side.get_nowait()
                    for payload in parser.finish(item, scrub(stderr_tail), stopped=run.stopped):
                        yield payload
                elif item.stream == "stderr":
                    stderr_tail = (stderr_tail + item.text)[-STDERR_TAIL_CHARS:]
                else:
                    pending += item.text
                    *lines, pending = pending.split("\n")
                    for line in lines:
                        for payload in parser.feed_line(line):
                            yield payload
                            if (refusal := await refusals.of(payload)) is not None:
                                yield refusal

    def _confinement(
        self, job: Job, home: Path, shell: Path | None, grant: MeshGrant | None = None
    ) -> Confinement:
        """The run writes its working directory and its CLI home (a fresh one per task: a
        reused one stalls on the previous run's lock file; error reports, which contain the
        conversation, and tool scratch go there too). In weak mode it may execute the CLI
        and its Node.js, and its shell tool the confined shell (`shell`), nothing else; with
        the network off it reaches only the node's API proxy (and its mesh tools)."""
        network = self._permissions.network(job.permission_mode)
        executables = None
        if job.permission_mode is PermissionMode.WEAK:
            # Landlock's layers stack: the run's own must allow what the confined shell runs.
            tool_shell = (str(shell / "bash"),) if shell else ()
            real_shell = shutil.which("bash", path=DEFAULT_PATH) or "bash"
            allowlist = (*self._permissions.weak.allowlist, *approved_programs(job.approvals))
            executables = (self._command[0], *CLI_RUNTIME, *tool_shell, real_shell, *allowlist)
        return Confinement(
            job.permission_mode,
            job.workdir,
            writable=(home,),
            read_only=(shell,) if shell else (),
            network=network,
            executables=executables,
            connect_ports=() if network else self._ports(grant),
        )

    async def _approvable(self, command: str) -> bool:
        """Whether its user may approve a command the CLI's policy refused in weak mode: a
        plain command line that superuser mode would allow."""
        if self._checker is None or words(command) is None:
            return False
        try:
            await self._checker.plan(command, PermissionMode.SUPERUSER)
        except CommandRefused:
            return False
        return True

    def _ports(self, grant: MeshGrant | None) -> tuple[int, ...]:
        """What a run without the network reaches: the node's API proxy, and its mesh
        tools if it has them."""
        if grant is not None and self._mesh_tools is not None:
            return (self._proxy.port, self._mesh_tools.port)
        return (self._proxy.port,)


def approved_programs(approvals: Sequence[Approval]) -> list[str]:
    """The programs approved commands run (their first words)."""
    return [found[0] for approval in approvals if (found := words(approval.command))]


class PolicyRefusals:
    """Turns the shell commands the CLI's policy refused into `Refusal` events (which the
    scheduler may ask the task's user about), from the run's tool calls and results."""

    def __init__(self, mode: PermissionMode, approvable: Callable[[str], Awaitable[bool]]) -> None:
        self._mode = mode
        self._approvable = approvable
        self._commands: dict[str, str] = {}

    async def of(self, payload: Payload) -> Refusal | None:
        if isinstance(payload, ToolUse) and payload.tool_name == "run_shell_command":
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                command = json.loads(payload.parameters_json).get("command")
                if isinstance(command, str):
                    self._commands[payload.tool_id] = command
            return None
        if not isinstance(payload, ToolResult) or payload.error_type != "policy_violation":
            return None
        command = self._commands.pop(payload.tool_id, None)
        if command is None:
            return None
        approvable = self._mode is PermissionMode.WEAK and await self._approvable(command)
        return Refusal(
            command=command,
            rule="gemini-policy",
            mode=str(self._mode),
            detail=payload.error_message or "the CLI's policy refused the tool call",
            approvable=approvable,
        )


class StreamJsonParser:
    """Turns the CLI's stream-json lines into payloads, and its ending into a Result."""

    def __init__(self, model: str) -> None:
        self._model = model
        self._answer: list[str] = []
        self._result: dict[str, Any] | None = None

    def feed_line(self, line: str) -> list[Payload]:
        line = line.strip()
        if not line.startswith("{"):
            return []  # warnings the CLI prints between events
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            return []
        if not isinstance(event, dict):
            return []
        kind = event.get("type")
        if kind == "message" and event.get("role") == "assistant":
            text = str(event.get("content", ""))
            self._answer.append(text)
            return [Text(text)] if text else []
        if kind == "tool_use":
            return [
                ToolUse(
                    tool_id=str(event.get("tool_id", "")),
                    tool_name=str(event.get("tool_name", "")),
                    parameters_json=json.dumps(event.get("parameters", {}), sort_keys=True),
                )
            ]
        if kind == "tool_result":
            raw_error = event.get("error")
            error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
            return [
                ToolResult(
                    tool_id=str(event.get("tool_id", "")),
                    status=str(event.get("status", "")),
                    output=str(event.get("output", "")),
                    error_type=str(error.get("type", "")),
                    error_message=str(error.get("message", "")),
                )
            ]
        if kind == "error":
            return [Diagnostic(str(event.get("severity", "error")), str(event.get("message", "")))]
        if kind == "init":
            self._model = str(event.get("model") or self._model)
        if kind == "result":
            self._result = event
        return []

    def finish(self, exit: Exit, stderr: str, *, stopped: str = "") -> list[Payload]:
        """The run's Result (after an ApiError if the API failed it); `stopped`: why the
        node's proxy refused the run's requests (its token budget), which fails it."""
        answer = "".join(self._answer)
        usage = self._usage()
        if exit.how == "canceled":
            return [Result(TaskState.CANCELED, exit.code, usage, answer, "canceled")]
        if exit.how == "timeout":
            return [Result(TaskState.FAILED, exit.code, usage, answer, "timed out")]
        if exit.how == "output_limit":
            note = exit.output_limit_note()
            return [
                Diagnostic("error", note),
                Result(TaskState.FAILED, exit.code, usage, answer, note),
            ]
        if stopped:
            return [Result(TaskState.FAILED, exit.code, usage, answer, stopped)]
        result = self._result or {}
        if exit.code == 0 and result.get("status", "success") == "success" and self._result:
            return [Result(TaskState.COMPLETED, 0, usage, answer)]
        error = result.get("error")
        message = ""
        if isinstance(error, dict):
            message = str(error.get("message", ""))
        elif error:
            message = str(error)
        payloads: list[Payload] = []
        api_error: ApiError | None = classify_api_error(f"{message}\n{stderr}")
        if api_error is not None:
            payloads.append(api_error)
            message = api_error.message
        reason = EXIT_REASONS.get(exit.code, f"exit code {exit.code}")
        if not message:
            lines = [line for line in stderr.strip().splitlines() if line.strip()]
            message = lines[-1][:500] if lines else ""
        error_text = f"gemini CLI failed ({reason})" + (f": {message}" if message else "")
        payloads.append(Result(TaskState.FAILED, exit.code, usage, answer, error_text))
        return payloads

    def _usage(self) -> Usage:
        stats = (self._result or {}).get("stats")
        if not isinstance(stats, dict):
            return Usage(model=self._model)

        def number(key: str) -> int:
            value = stats.get(key, 0)
            return int(value) if isinstance(value, int | float) else 0

        return Usage(
            input_tokens=number("input_tokens"),
            output_tokens=number("output_tokens"),
            cached_tokens=number("cached"),
            total_tokens=number("total_tokens"),
            duration_ms=number("duration_ms"),
            tool_calls=number("tool_calls"),
            model=self._model,
        )
