"""One started attempt's run: its request to its node, its events into the task's trace,
and its end (a result, a refusal, a lost node, a hand-back), each recorded once.

The dispatcher decides where attempts run and keeps count of them (see dispatch); this
module runs one, from the request it sends to what becomes of the task.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from enum import Enum

import grpc

from agentmesh.access.task_credentials import TaskCredentials
from agentmesh.db.outages import DATABASE_ERRORS, with_retry
from agentmesh.errors import Reason
from agentmesh.keys.reservations import KeyReserver, Reserved
from agentmesh.memory.context import ChildResult, ContextBuilder, TaskContext
from agentmesh.node.permissions.approvals import Approval
from agentmesh.rpc import convert
from agentmesh.scheduler.agents import AgentRegistry
from agentmesh.scheduler.node_link import CallError, Channels
from agentmesh.scheduler.placement import AgentSlot
from agentmesh.scheduler.store import StartedAttempt, TaskStore, summarize_children
from agentmesh.scheduler.trace_writer import TraceWriter, trace_cost
from agentmesh.tasks import events
from agentmesh.tasks.events import ApiError, ApiErrorKind, Diagnostic, Payload, Result
from agentmesh.tasks.model import AgentMode, TaskKind, TaskSpec, TaskState, for_node
from agentmesh.v1 import node_pb2, task_pb2

log = logging.getLogger(__name__)

# How long a node's first event may wait for the next one to share its write (see
# TraceWriter.add).
START_LINGER_SECONDS = 0.02


class Refusal(Enum):
    """What a node's refusal means for the attempt."""

    NOT_STARTED = "not started"  # handed back without using an attempt; try again soon
    BAD_SPEC = "bad spec"  # the task fails with the node's message
    # The node's ceiling is below the task's mode: the card placement read was stale (the
    # node restarted with a lower ceiling). Handed back, counted: placement decides anew
    # from the next heartbeat's card, and a node that lies about its ceiling cannot loop.
    ABOVE_CEILING = "above ceiling"


# The one table from a node's reasons (google.rpc.ErrorInfo) to what becomes of the attempt.
# A stream that breaks without a reason is a lost attempt (counted, retried elsewhere).
REFUSALS: dict[Reason, Refusal] = {
    Reason.NODE_DRAINING: Refusal.NOT_STARTED,
    Reason.NODE_FULL: Refusal.NOT_STARTED,
    Reason.DUPLICATE_ATTEMPT: Refusal.NOT_STARTED,
    Reason.NO_EXECUTOR: Refusal.NOT_STARTED,
    Reason.BAD_SPEC: Refusal.BAD_SPEC,
    Reason.MODE_ABOVE_CEILING: Refusal.ABOVE_CEILING,
}


class AttemptRunner:
    """Runs the attempts one scheduler replica (`owner`) started, each to its end.

    `agent_marked` is told when an attempt found out something about its agent (draining,
    unreachable, gone) and recorded it: placement should read the agents again."""

    def __init__(
        self,
        store: TaskStore,
        registry: AgentRegistry,
        channels: Channels,
        keys: KeyReserver,
        *,
        owner: str,
        max_trace_chars: int,
        retry_backoff_seconds: float,
        agent_marked: Callable[[], None],
        mesh_credentials: TaskCredentials | None = None,
        context: ContextBuilder | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._channels = channels
        self._keys = keys
        self._owner = owner
        # What one attempt may add to its task's trace (see trace_writer.trace_cost).
        self._max_trace_chars = max_trace_chars
        self._retry_backoff_seconds = retry_backoff_seconds
        self._agent_marked = agent_marked
        # Mints each agentic gemini attempt's mesh credential (its agent's mesh tools).
        self._mesh_credentials = mesh_credentials
        # Assembles each gemini attempt's context from the memory (see memory.context).
        self._context = context

    async def run(self, attempt: StartedAttempt, agent: AgentSlot, key: Reserved | None) -> None:
        """Send the attempt to its node and record what comes back, until its end."""
        spec = attempt.spec
        context = await self._task_context(attempt) if spec.kind == TaskKind.GEMINI else None
        request = node_pb2.ExecuteTaskRequest(
            task_id=attempt.task_id,
            attempt=attempt.attempt,
            spec=convert.spec_to_proto(for_node(spec)),
            key_fingerprint=key.key.fingerprint if key else "",
            token_budget=key.budget if key else 0,
            mesh_credential=self._mesh_credential(attempt),
            context=context.text if context is not None else "",
            approvals=[
                task_pb2.CommandApproval(command=a.command, prefix=a.prefix)
                for a in await self._approvals_for(attempt)
            ],
        )
        received = 0
        # What this attempt added to the trace: a node that streams without end (one that
        # does not cap its tasks' output) is stopped here, and its task fails.
        trace_chars = 0
        exhausted: ApiError | None = None
        refusal: events.Refusal | None = None
        writer = TraceWriter(
            lambda batch, after_seq: with_retry(
                functools.partial(
                    self._store.append_many,
                    attempt.task_id,
                    attempt.attempt,
                    self._owner,
                    agent.agent_id,
                    batch,
                    after_seq=after_seq,
                )
            ),
            attempt.last_seq,
        )
        if context is not None and not context.empty:
            # What the agent was told besides its prompt, and why: first in its trace.
            await writer.add(Diagnostic("info", f"context given: {context.summary}"))
        stream = self._channels.link(agent.endpoint, agent.dispatch_secret).run(request)
        try:
            async for message in stream:
                received += 1
                payload = convert.payload_from_proto(message)
                if isinstance(payload, ApiError) and payload.kind is ApiErrorKind.QUOTA_EXHAUSTED:
                    exhausted = payload  # the node's proxy found no key with capacity
                if isinstance(payload, events.Refusal):
                    refusal = payload
                    if spec.kind == TaskKind.GEMINI and _asks_about(spec, refusal):
                        # The agent's command waits for its user: this run stops here.
                        await writer.add(payload)
                        if await writer.close():
                            await self._await_approval(attempt, refusal)
                        return
                if isinstance(payload, Result):
                    rejected = payload.state is TaskState.REJECTED
                    if rejected and refusal is not None and _asks_about(spec, refusal):
                        # Not the end: the task waits for its user's answer.
                        if await writer.close():
                            await self._await_approval(attempt, refusal)
                        return
                    if payload.state is TaskState.FAILED and exhausted is not None:
                        # Not the task's fault: it waits for a key again, without an attempt.
                        if await writer.close():
                            await self.hand_back(
                                attempt.task_id,
                                attempt.attempt,
                                f"every API key was out of capacity ({exhausted.message})",
                                backoff_seconds=0.0,
                                counts=False,
                            )
                        return
                    # What the writer has not written yet goes in the statement that ends
                    # the task (for a short task: its whole trace in one round trip).
                    trail = await writer.take_rest()
                    if trail is None:
                        return
                    if key is not None:
                        # What it spent is known now (the proxy reports each request before
                        # its answer ends): logged before the task is seen ended.
                        await with_retry(functools.partial(self._keys.task_ended, attempt.task_id))
                    await self._finish(attempt, agent, payload, trail, writer.last_seq)
                    return
                trace_chars += trace_cost(payload)
                if trace_chars > self._max_trace_chars:
                    await self._trace_full(attempt, agent, writer)
                    return
                # The node's "running on" waits a moment for the first output (a short
                # task's whole output): one round trip for both.
                await writer.add(payload, linger=START_LINGER_SECONDS if received == 1 else 0.0)
                if writer.superseded:
                    log.info("attempt superseded", extra=attempt_fields(attempt, agent))
                    return
        except CallError as error:
            await writer.close()
            await self._attempt_failed(attempt, agent, error, received)
            return
        except BaseException:
            writer.cancel()
            raise
        finally:
            # Whoever stops reading before the result (a superseded attempt, a cancel)
            # stops the node's work too (see NodeLink.run).
            await stream.aclose()  # type: ignore[attr-defined]
        await writer.close()
        await self.hand_back(
            attempt.task_id, attempt.attempt, f"{agent.name} ended the stream without a result"
        )

    async def hand_back(
        self,
        task_id: str,
        attempt: int,
        reason: str,
        *,
        backoff_seconds: float | None = None,
        counts: bool = True,
    ) -> None:
        """Queue the task again (or fail it when out of attempts), waiting out a database
        outage; see TaskStore.retry_attempt."""
        await with_retry(
            functools.partial(
                self._store.retry_attempt,
                task_id,
                attempt,
                self._owner,
                reason,
                backoff_seconds=(
                    self._retry_backoff_seconds if backoff_seconds is None else backoff_seconds
                ),
                counts=counts,
            )
        )

    async def _task_context(self, attempt: StartedAttempt) -> TaskContext | None:
        """The attempt's context from the memory; None if it cannot be had (the task runs
        without: its memory is help, not a condition)."""
        rows = await with_retry(lambda: self._store.child_results(attempt.task_id))
        if self._context is None:
            text = summarize_children(rows) if rows else ""
            return TaskContext(text, f"{len(rows)} subtask results", 0) if text else None
        children = [
            ChildResult(
                title=row["description"] or row["id"],
                agent=row["assigned_agent"] or "",
                state=row["state"],
                output=row["output"],
            )
            for row in rows
        ]
        try:
            context = await self._context.build(attempt.spec.prompt, attempt.user, children)
        except Exception:
            log.exception("no context for the attempt", extra={"task_id": attempt.task_id})
            return None
        if not context.empty:
            # The forecasts learn from what the model was given: prompt and context.
            with contextlib.suppress(*DATABASE_ERRORS):
                await self._keys.count_context(attempt.task_id, len(context.text))
        return context

    async def _approvals_for(self, attempt: StartedAttempt) -> list[Approval]:
        """What the user approved that a weak-mode attempt may run (see
        node.permissions.approvals): for a shell task, what covers its command; for a gemini
        task, all of it (its agent's commands are not known before it runs them)."""
        spec = attempt.spec
        if spec.permission_mode == "superuser" or spec.kind == TaskKind.ECHO:
            return []
        command = spec.command if spec.kind == TaskKind.SHELL else None
        return await with_retry(
            lambda: self._store.approvals_for(attempt.task_id, attempt.user, command)
        )

    async def _await_approval(self, attempt: StartedAttempt, refusal: events.Refusal) -> None:
        await with_retry(
            functools.partial(
                self._store.await_approval,
                attempt.task_id,
                attempt.attempt,
                self._owner,
                refusal,
            )
        )

    def _mesh_credential(self, attempt: StartedAttempt) -> str:
        """An agentic gemini attempt acts on the mesh as its task (see access)."""
        spec = attempt.spec
        if self._mesh_credentials is None or spec.kind != TaskKind.GEMINI:
            return ""
        if spec.agent_mode != AgentMode.AGENTIC:
            return ""
        return self._mesh_credentials.mint(attempt.task_id, attempt.attempt)

    async def _trace_full(
        self, attempt: StartedAttempt, agent: AgentSlot, writer: TraceWriter
    ) -> None:
        """Stop storing the attempt's events: one diagnostic says why, and the task fails
        (retrying would fill the trace again). Returning stops the node's work too."""
        reason = (
            f"the task's events passed the scheduler's limit of {self._max_trace_chars}"
            " characters in one attempt (scheduler.max_trace_chars): the rest was not stored"
            " and the task was stopped"
        )
        log.warning("attempt stopped: its trace is full", extra=attempt_fields(attempt, agent))
        await writer.add(Diagnostic("error", reason))
        if await writer.close():
            await self._finish(attempt, agent, Result(TaskState.FAILED, error=reason))

    async def _finish(
        self,
        attempt: StartedAttempt,
        agent: AgentSlot,
        result: Result,
        trail: Sequence[Payload] = (),
        after_seq: int | None = None,
    ) -> None:
        """End the task with the attempt's result (see TaskStore.finish_attempt)."""
        await with_retry(
            functools.partial(
                self._store.finish_attempt,
                attempt.task_id,
                attempt.attempt,
                self._owner,
                agent.agent_id,
                result,
                in_tree=bool(attempt.parent_id),
                trail=trail,
                after_seq=after_seq,
            )
        )

    async def _attempt_failed(
        self, attempt: StartedAttempt, agent: AgentSlot, error: CallError, received: int
    ) -> None:
        task_id, number = attempt.task_id, attempt.attempt
        code = error.code
        detail = error.details
        reason = error.reason
        fields = {**attempt_fields(attempt, agent), "code": code.name}
        if reason is not None:
            fields["reason"] = reason.value
        refusal = REFUSALS.get(reason) if reason is not None else None
        if refusal is Refusal.NOT_STARTED:
            log.info("attempt not started: the node refused it", extra=fields)
            if reason is Reason.NODE_DRAINING:
                # Its next heartbeat would say so too; place nothing more there meanwhile.
                await self._mark(self._registry.mark_draining, agent.agent_id)
            await self.hand_back(
                task_id, number, f"{agent.name}: {detail}", backoff_seconds=0.5, counts=False
            )
        elif refusal is Refusal.ABOVE_CEILING:
            log.info("attempt refused: above the node's ceiling", extra=fields)
            await self.hand_back(task_id, number, f"{agent.name}: {detail}")
        elif refusal is Refusal.BAD_SPEC:
            log.info("attempt refused: bad spec", extra=fields)
            await with_retry(
                lambda: self._store.fail_attempt(
                    task_id, number, self._owner, agent.agent_id, detail
                )
            )
        elif never_reached(error, received):
            # The request never reached the node (its endpoint refused the dial, or the node
            # refused our token): nothing ran there. Heartbeats cannot vouch for the way
            # back, so the agent gets no work until a dial to it succeeds (probe_unreachable).
            log.warning("attempt not started: the node cannot be reached", extra=fields)
            await self._mark(self._registry.mark_unreachable, agent.agent_id)
            await self.hand_back(
                task_id,
                number,
                f"{agent.name} at {agent.endpoint} cannot be reached ({code.name}: {detail})",
                backoff_seconds=0.0,
                counts=False,
            )
        else:
            if code is grpc.StatusCode.UNAVAILABLE:
                # The node is gone: place nothing more there until it heartbeats again.
                await self._mark(self._registry.mark_offline, agent.agent_id)
            log.warning("attempt lost", extra=fields)
            await self.hand_back(
                task_id,
                number,
                f"connection to {agent.name} lost ({code.name}) after {received} events",
            )

    async def _mark(self, mark: Callable[[str], Awaitable[None]], agent_id: str) -> None:
        """Record in the registry what an attempt found out about its agent, and say so.
        Every replica hears of it on the queue channel (the marks notify); this one does
        not wait for that."""
        await with_retry(lambda: mark(agent_id))
        self._agent_marked()


def _asks_about(spec: TaskSpec, refusal: events.Refusal) -> bool:
    """Whether a refused command makes the task ask its user rather than end (on_refusal)."""
    return spec.on_refusal == "ask" and refusal.approvable


def never_reached(error: CallError, received: int) -> bool:
    """True when an attempt's call failed before the node could run anything."""
    if received:
        return False
    if error.code is grpc.StatusCode.UNAUTHENTICATED:
        return True  # the node refused our token: the mesh's tokens differ
    # gRPC's own words when no connection could be made at all.
    return (
        error.code is grpc.StatusCode.UNAVAILABLE and "failed to connect" in error.details.lower()
    )


def attempt_fields(attempt: StartedAttempt, agent: AgentSlot) -> dict[str, object]:
    """What every log line about an attempt carries."""
    return {"task_id": attempt.task_id, "attempt": attempt.attempt, "agent": agent.agent_id}
