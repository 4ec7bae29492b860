"""Mesh tools: the MCP server through which a running Gemini agent acts on the mesh.

The node serves one MCP server (the official `mcp` SDK, streamable HTTP on a loopback
port) for all its agentic gemini runs. Each run gets a grant: a random bearer token of its
own, written into its fresh CLI home's `mcpServers` settings, which the CLI presents on
every call. The token is worth nothing off this node and dies with the run; the server
answers no call without a live one. Behind a grant is the run's mesh credential from the
scheduler (never written where the run can read it), with which the tools call the
scheduler as that task: `list_agents`, `delegate`, `delegate_many`, `task_status`, and
`search_knowledge` and `remember` in the task's user's knowledge base. The scheduler
enforces every limit (mode, depth, count, budget, user); a refusal comes back to the agent
as its tool's error, with the reason. Each call and its result are in the parent's trace,
as the CLI's tool_use and tool_result events.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from agentmesh.config import TlsSettings
from agentmesh.rpc import convert
from agentmesh.rpc.channel import open_channel
from agentmesh.v1 import (
    memory_pb2,
    memory_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    task_pb2,
)

log = logging.getLogger(__name__)

# The server's name in the CLI's settings: the model sees its tools as `mcp_mesh_<tool>`.
SERVER_NAME = "mesh"
PATH = "/mcp"
DEFAULT_WAIT_SECONDS = 300.0
# What a tool result quotes of a subtask's output (the rest is in the subtask's trace).
OUTPUT_CHARS = 16 << 10
T = TypeVar("T")

INSTRUCTIONS = (
    "Tools of the agentmesh mesh this agent runs on: list the machines (agents) of the"
    " network, and delegate work to them as subtasks of this task, which run there and"
    " report back. Use them when a command must run on another machine, or when work can"
    " run in parallel."
)


@dataclass
class MeshGrant:
    """What one run may do: act as its task, with the credential the scheduler gave it."""

    task_id: str
    credential: str = field(repr=False)
    # The tokens the run has spent so far (its node's API proxy counts them).
    spent_tokens: Callable[[], int]
    # The run's bearer token for this server (in its CLI settings); never logged.
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)


class Subtask(BaseModel):
    """One piece of work for `delegate_many`."""

    description: str = Field(description="A short title for the subtask, shown in listings.")
    prompt: str = Field("", description="For a Gemini agent: what it should do.")
    command: str = Field("", description="For a shell command: the command line to run.")
    capabilities: list[str] = Field(
        default_factory=list, description="Capabilities the machine must have."
    )
    target_host: str = Field("", description="Run only on this hostname or agent id.")
    permission_mode: str = Field(
        "", description="weak or superuser; at most this task's own mode (default: its mode)."
    )
    max_tokens: int = Field(
        0, description="For a Gemini agent: the most tokens it may spend (0: what is left)."
    )
    kind: str = Field("", description="shell, gemini or echo; implied by command or prompt.")


class MeshTools:
    """The node's MCP server and the grants of the runs it serves."""

    def __init__(self, scheduler: str, tls: TlsSettings) -> None:
        self._channel = open_channel(scheduler, token=None, tls=tls)
        self._scheduler = scheduler_pb2_grpc.SchedulerStub(self._channel)
        self._memory = memory_pb2_grpc.MemoryStub(self._channel)
        # By the SHA-256 of their tokens: a lookup that reveals nothing by its timing.
        self._grants: dict[bytes, MeshGrant] = {}
        self._server: uvicorn.Server | None = None
        self._serving: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    @classmethod
    async def start(cls, scheduler: str, tls: TlsSettings) -> MeshTools:
        tools = cls(scheduler, tls)
        await tools._serve()
        return tools

    async def _serve(self) -> None:
        # The SDK logs each stateless request at INFO; what matters is logged here.
        logging.getLogger("mcp").setLevel(logging.WARNING)
        app = _authorized(
            self._mcp_server().streamable_http_app(
                streamable_http_path=PATH, stateless_http=True, json_response=True
            ),
            self._grant_of,
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            log_config=None,
            # A tool call still waiting for its subtask does not hold up the node's stop.
            timeout_graceful_shutdown=2,
        )
        self._server = _Server(config)
        self._serving = asyncio.create_task(self._server.serve(sockets=[sock]), name="mesh tools")
        while not self._server.started:
            if self._serving.done():
                await self._serving  # raises what stopped it
                raise RuntimeError("the mesh tools' server stopped at start")
            await asyncio.sleep(0.01)
        log.info("mesh tools serving on %s", self.url)

    async def stop(self) -> None:
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._serving
        await self._channel.close()

    def grant(self, task_id: str, credential: str, spent_tokens: Callable[[], int]) -> MeshGrant:
        grant = MeshGrant(task_id, credential, spent_tokens)
        self._grants[_digest(grant.token)] = grant
        return grant

    def revoke(self, grant: MeshGrant) -> None:
        self._grants.pop(_digest(grant.token), None)

    def cli_settings(self, grant: MeshGrant, timeout_seconds: float) -> dict[str, Any]:
        """The `mcpServers` entry of a run's CLI settings."""
        return {
            SERVER_NAME: {
                "httpUrl": self.url,
                "headers": {"Authorization": f"Bearer {grant.token}"},
                # A tool call may wait as long as the run may last.
                "timeout": int(timeout_seconds * 1000),
                "trust": True,
                "description": "agentmesh: the machines of this network, and delegation",
            }
        }

    def _grant_of(self, headers: Mapping[str, str] | None) -> MeshGrant | None:
        scheme, _, token = (headers or {}).get("authorization", "").partition(" ")
        if scheme != "Bearer" or not token:
            return None
        return self._grants.get(_digest(token))

    # ------------------------------------------------------------------ the tools

    def _mcp_server(self) -> MCPServer[Any]:
        server: MCPServer[Any] = MCPServer(SERVER_NAME, instructions=INSTRUCTIONS)

        @server.tool()
        async def list_agents(ctx: Context) -> str:
            """The machines (agents) of the mesh that are online: their hostnames,
            capabilities, what they can run (executors), the highest permission mode they
            accept and how busy they are. Use it to choose where to delegate."""
            grant = self._granted(ctx)
            reply = await self._call(
                grant, self._scheduler.ListAgents, scheduler_pb2.ListAgentsRequest()
            )
            return _json([_agent(agent) for agent in reply.agents])

        @server.tool()
        async def delegate(
            ctx: Context,
            description: str,
            prompt: str = "",
            command: str = "",
            capabilities: list[str] | None = None,
            target_host: str = "",
            permission_mode: str = "",
            max_tokens: int = 0,
            timeout_seconds: float = DEFAULT_WAIT_SECONDS,
            kind: str = "",
        ) -> str:
            """Run a subtask of this task on another machine of the mesh and wait for it.
            Give either a `command` (a shell command line) or a `prompt` (for a Gemini
            agent there). `capabilities` the machine must have, or a `target_host`
            (hostname or agent id), choose where it runs. It runs as this task's user, at
            most in this task's permission mode. Returns the subtask's id, final state,
            the machine it ran on and its output; if it has not ended after
            `timeout_seconds`, returns its state so far (ask again with task_status).
            `kind` is implied (shell for a command, gemini for a prompt); `echo` sends the
            prompt back, to check that a machine answers."""
            grant = self._granted(ctx)
            spec = _spec(
                Subtask(
                    description=description,
                    prompt=prompt,
                    command=command,
                    capabilities=capabilities or [],
                    target_host=target_host,
                    permission_mode=permission_mode,
                    max_tokens=max_tokens,
                    kind=kind,
                )
            )
            task = await self._delegate(grant, spec, timeout_seconds)
            return _json(_result(task))

        @server.tool()
        async def delegate_many(
            ctx: Context, subtasks: list[Subtask], timeout_seconds: float = DEFAULT_WAIT_SECONDS
        ) -> str:
            """Run several subtasks of this task at once (each as `delegate` would) and
            wait until all have ended, or `timeout_seconds`. Returns one result per
            subtask, in order; a subtask that could not start has an `error`."""
            grant = self._granted(ctx)
            specs = [_spec(subtask) for subtask in subtasks]

            async def one(spec: task_pb2.TaskSpec) -> dict[str, Any]:
                try:
                    return _result(await self._delegate(grant, spec, timeout_seconds))
                except ToolError as error:
                    return {"description": spec.description, "error": str(error)}

            return _json(list(await asyncio.gather(*(one(spec) for spec in specs))))

        @server.tool()
        async def task_status(ctx: Context, task_id: str, wait_seconds: float = 0.0) -> str:
            """The state and output of a subtask this task started (by its id); with
            `wait_seconds`, waits up to that long for it to end first."""
            grant = self._granted(ctx)
            task = await self._call(
                grant,
                self._scheduler.GetTask,
                scheduler_pb2.GetTaskRequest(task_id=task_id, wait_seconds=wait_seconds),
                timeout=wait_seconds + 30,
            )
            return _json(_result(task))

        @server.tool()
        async def search_knowledge(ctx: Context, query: str, k: int = 5) -> str:
            """Search the user's knowledge base (facts remembered earlier, by people and by
            agents) for what bears on `query`, by meaning and by keyword; returns the best
            `k` facts with their labels, values and scores."""
            grant = self._granted(ctx)
            reply = await self._call(
                grant,
                self._memory.SearchKnowledge,
                memory_pb2.SearchKnowledgeRequest(query=query, k=k),
            )
            return _json(
                [
                    {
                        "id": hit.row.id,
                        "label": hit.row.label,
                        "value": hit.row.value,
                        "tags": list(hit.row.tags),
                        "score": round(hit.score, 4),
                    }
                    for hit in reply.hits
                ]
            )

        @server.tool()
        async def remember(
            ctx: Context,
            label: str,
            value: str,
            tags: list[str] | None = None,
        ) -> str:
            """Save a fact learned during this task in the user's knowledge base, so that
            the user's later tasks find it: a short `label` and the `value`."""
            grant = self._granted(ctx)
            row = await self._call(
                grant,
                self._memory.AddKnowledge,
                memory_pb2.AddKnowledgeRequest(label=label, value=value, tags=tags or []),
            )
            return _json({"id": row.id, "label": row.label, "visibility": row.visibility})

        return server

    def _granted(self, ctx: Context) -> MeshGrant:
        grant = self._grant_of(ctx.headers)
        if grant is None:  # the run ended while its call was on the way
            raise ToolError("this run's mesh tools have ended")
        return grant

    async def _delegate(
        self, grant: MeshGrant, spec: task_pb2.TaskSpec, timeout_seconds: float
    ) -> task_pb2.Task:
        request = scheduler_pb2.DelegateTaskRequest(
            spec=spec,
            wait_seconds=timeout_seconds,
            parent_tokens_spent=grant.spent_tokens(),
        )
        task = await self._call(
            grant, self._scheduler.DelegateTask, request, timeout=timeout_seconds + 30
        )
        log.info(
            "subtask delegated",
            extra={"task_id": grant.task_id, "subtask": task.id, "state": task.state},
        )
        return task

    async def _call(
        self,
        grant: MeshGrant,
        method: Callable[..., Awaitable[T]],
        request: Any,
        *,
        timeout: float = 30.0,  # noqa: ASYNC109 - the gRPC call's deadline
    ) -> T:
        """A scheduler call as the grant's task; its refusal becomes the tool's error."""
        try:
            return await method(
                request,
                metadata=(("authorization", f"Bearer {grant.credential}"),),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as error:
            raise ToolError(f"{error.code().name}: {error.details()}") from None


class _Server(uvicorn.Server):
    """uvicorn, leaving the process's signals alone: the node (or whatever process hosts
    it) handles SIGTERM and stops this server itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _spec(subtask: Subtask) -> task_pb2.TaskSpec:
    if bool(subtask.prompt) == bool(subtask.command):
        raise ToolError("give either a command (shell) or a prompt (a Gemini agent), not both")
    implied = "gemini" if subtask.prompt else "shell"
    kind = subtask.kind
    if kind not in ("", implied) and not (kind == "echo" and subtask.prompt):
        raise ToolError(f"kind {kind!r} does not fit: a command is shell, a prompt gemini or echo")
    return task_pb2.TaskSpec(
        kind=kind or implied,
        prompt=subtask.prompt,
        command=subtask.command,
        description=subtask.description,
        required_capabilities=subtask.capabilities,
        target_host=subtask.target_host,
        permission_mode=subtask.permission_mode,
        max_tokens=subtask.max_tokens,
    )


def _result(task: task_pb2.Task) -> dict[str, Any]:
    state = convert.state_from_proto(task.state)
    result: dict[str, Any] = {
        "task_id": task.id,
        "description": task.spec.description,
        "state": state.value,
        "ended": state.terminal,
        "agent": task.assigned_agent,
    }
    if state.terminal:
        result["exit_code"] = task.exit_code
        result["output"] = task.output[-OUTPUT_CHARS:]
        if task.error:
            result["error"] = task.error
    elif task.waiting_reason:
        result["waiting"] = task.waiting_reason
    return result


def _agent(status: scheduler_pb2.AgentStatus) -> dict[str, Any]:
    card = status.card
    return {
        "agent_id": card.agent_id,
        "hostname": card.hostname,
        "status": status.status,
        "capabilities": list(card.capabilities),
        "executors": list(card.executors),
        "max_permission_mode": card.max_permission_mode,
        "running": card.running_tasks,
        "max_concurrency": card.max_concurrency,
        "os": card.os,
    }


def _json(value: object) -> str:
    return json.dumps(value, indent=1, ensure_ascii=False)


def _authorized(app: Any, grant_of: Callable[[Mapping[str, str] | None], MeshGrant | None]) -> Any:
    """The app, answering only requests that carry a live run's token (403 otherwise)."""

    async def gate(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {
                name.decode("latin-1").lower(): value.decode("latin-1")
                for name, value in scope["headers"]
            }
            if grant_of(headers) is None:
                body = b'{"error": "no live agentmesh run holds this token"}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await app(scope, receive, send)

    return gate
