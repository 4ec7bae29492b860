"""A gemini task's context: what the agent is told besides its prompt.

Before an attempt is dispatched the scheduler assembles, for the task's user: their profile
(how they like answers, their time zone and local time), the knowledge rows that best match
the prompt (hybrid search, within a token budget), the home-network hosts the prompt names,
and the outputs of the task's subtasks. The node writes it where the Gemini CLI reads its
context (`GEMINI.md`); the prompt stays the user's. `summary` says in one line what was
given (knowledge ids and scores, profile fields, hosts, tokens) for the task's trace.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from agentmesh.memory.model import KnowledgeBase, Profile
from agentmesh.scheduler.agents import HostEntry

CHARS_PER_TOKEN = 4
# What the context may take of the model's input, in tokens (the knowledge rows fill what
# the profile, hosts and subtask outputs leave).
DEFAULT_BUDGET_TOKENS = 2000
DEFAULT_KNOWLEDGE_ROWS = 5
# A row found only by meaning is given when it is at least this close to the prompt (a
# search always returns its k nearest rows, related or not); one that matches its words is.
MIN_SIMILARITY = 0.6
HEADER = "# Context from agentmesh\n\nWhat the mesh knows that bears on this task.\n"


@dataclass(frozen=True)
class ChildResult:
    """A subtask's outcome, as its parent's context shows it."""

    title: str
    agent: str
    state: str
    output: str


@dataclass(frozen=True)
class TaskContext:
    text: str
    # One line for the trace: what was given, and its size.
    summary: str
    tokens: int

    @property
    def empty(self) -> bool:
        return not self.text


def tokens_of(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def named_hosts(prompt: str, hosts: Sequence[HostEntry]) -> list[HostEntry]:
    """The rows of the hosts the prompt names (by host name or address, as a whole word)."""
    words = {word.lower() for word in re.findall(r"[\w.:-]+", prompt)}
    words |= {word.rstrip(".:") for word in words}
    return [
        host
        for host in hosts
        if (host.host_name and host.host_name.lower() in words)
        or (host.ip_address and host.ip_address in words)
    ]


class ContextBuilder:
    """Assembles task contexts from the memory (profiles, knowledge, hosts)."""

    def __init__(
        self,
        find_profile: Callable[[str], Awaitable[Profile | None]],
        knowledge: KnowledgeBase,
        list_hosts: Callable[[], Awaitable[list[HostEntry]]],
        *,
        budget_tokens: int = DEFAULT_BUDGET_TOKENS,
        knowledge_rows: int = DEFAULT_KNOWLEDGE_ROWS,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._find_profile = find_profile
        self._knowledge = knowledge
        self._list_hosts = list_hosts
        self._budget = budget_tokens
        self._rows = knowledge_rows
        self._now = now

    async def build(self, prompt: str, user: str, children: Sequence[ChildResult]) -> TaskContext:
        profile = await self._find_profile(user) if user else None
        about = self._about(profile) if profile is not None else ""
        named = named_hosts(prompt, await self._list_hosts())
        hosts = _hosts_section(named) if named else ""
        results = _children_section(children) if children else ""
        # The knowledge rows fill what the rest leaves of the budget.
        left = self._budget - tokens_of(HEADER + about + hosts + results)
        remembered, shown = await self._knowledge_section(prompt, user, left)
        sections = [part for part in (about, remembered, hosts, results) if part]
        if not sections:
            return TaskContext("", "no context", 0)
        text = HEADER + "\n" + "\n".join(sections)
        given = []
        if about and profile is not None:
            fields = [f for f in ("preferred_format", "timezone") if getattr(profile, f)]
            given.append(f"profile of {user} ({', '.join(fields)})")
        if shown:
            given.append("knowledge " + ", ".join(shown))
        if named:
            given.append("hosts " + ", ".join(sorted({h.host_name for h in named})))
        if children:
            given.append(f"{len(children)} subtask results")
        tokens = tokens_of(text)
        return TaskContext(text, f"{'; '.join(given)}; about {tokens} tokens", tokens)

    def _about(self, profile: Profile) -> str:
        lines = []
        if profile.preferred_format:
            lines.append(f"- The user prefers answers as: {profile.preferred_format}")
        if profile.timezone:
            local = self._now().astimezone(ZoneInfo(profile.timezone))
            lines.append(
                f"- The user's time zone is {profile.timezone}; their local time is"
                f" {local:%A %Y-%m-%d %H:%M}."
            )
        if not lines:
            return ""
        return f"## About the user ({profile.username})\n\n" + "\n".join(lines) + "\n"

    async def _knowledge_section(
        self, prompt: str, user: str, budget_tokens: int
    ) -> tuple[str, list[str]]:
        if budget_tokens <= 0:
            return "", []
        result = await self._knowledge.search(prompt, user, self._rows)
        lines: list[str] = []
        shown: list[str] = []
        spent = tokens_of("## What you remember\n\n")
        for hit in result.hits:
            if hit.text_rank <= 0 and hit.similarity < MIN_SIMILARITY:
                continue  # near only because something must be nearest
            row = hit.row
            tags = f" (tags: {', '.join(row.tags)})" if row.tags else ""
            line = f"- **{row.label}**: {row.value}{tags}"
            if spent + tokens_of(line) > budget_tokens:
                break
            spent += tokens_of(line)
            lines.append(line)
            shown.append(f"#{row.id} ({hit.score:.3f})")
        if not lines:
            return "", []
        return "## What you remember\n\n" + "\n".join(lines) + "\n", shown


def _hosts_section(hosts: Sequence[HostEntry]) -> str:
    lines = []
    for host in hosts:
        where = f" ({host.ip_address})" if host.ip_address else ""
        extra = [f"tags {', '.join(host.tags)}"] if host.tags else []
        if host.notes:
            extra.append(host.notes)
        more = f" — {'; '.join(extra)}" if extra else ""
        lines.append(f"- {host.host_name}{where}: {host.service or 'a host'}{more}")
    return "## Hosts of the home network named in the task\n\n" + "\n".join(lines) + "\n"


def _children_section(children: Sequence[ChildResult]) -> str:
    parts = []
    for child in children:
        where = f" (on {child.agent})" if child.agent else ""
        parts.append(f"### {child.title}{where}: {child.state}\n\n{child.output.strip()}\n")
    return "## Results of the subtasks\n\n" + "\n".join(parts)
