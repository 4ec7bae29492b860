"""The memory's values, as they cross module lines (plain types: no gRPC, no SQL)."""

from __future__ import annotations

import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from agentmesh.config import PermissionMode
from agentmesh.errors import InvalidArgument

# The largest value the seed's INT columns hold.
MAX_INT = 2**31 - 1
MAX_TEXT = 4096


@dataclass(frozen=True)
class Profile:
    """A row of `user_profile`; None: the field is not set (the defaults apply)."""

    username: str
    default_permissions: PermissionMode | None = None
    throttle_tolerance: int | None = None
    max_token_per_request: int | None = None
    timezone: str | None = None
    preferred_format: str | None = None


PROFILE_FIELDS = (
    "default_permissions",
    "throttle_tolerance",
    "max_token_per_request",
    "timezone",
    "preferred_format",
)


def validate_username(value: str, field_name: str = "username") -> str:
    if not value or len(value) > 128 or not value.isprintable():
        raise InvalidArgument(field_name, "must be 1-128 printable characters")
    return value


def profile_change(username: str, values: dict[str, object]) -> dict[str, object | None]:
    """The checked columns to write for a profile: each named field's value, None (cleared)
    for an empty one. Raises InvalidArgument naming the first bad field."""
    validate_username(username)
    change: dict[str, object | None] = {}
    for name, value in values.items():
        if name not in PROFILE_FIELDS:
            raise InvalidArgument("fields", f"{name!r} is not a profile field")
        change[name] = _checked(name, value)
    return change


def _checked(name: str, value: object) -> object | None:
    if value in ("", None):
        return None
    if name == "default_permissions":
        try:
            return PermissionMode(str(value)).value
        except ValueError:
            raise InvalidArgument(name, f"must be weak or superuser (got {value!r})") from None
    if name in ("throttle_tolerance", "max_token_per_request"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidArgument(name, "must be a whole number")
        if not 0 <= value <= MAX_INT:
            raise InvalidArgument(name, f"must be between 0 and {MAX_INT} (got {value})")
        return value
    text = str(value)
    if name == "timezone":
        try:
            zoneinfo.ZoneInfo(text)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise InvalidArgument(name, f"{text!r} is not an IANA time zone name") from None
        return text
    if len(text) > MAX_TEXT:
        raise InvalidArgument(name, f"must be at most {MAX_TEXT} characters")
    return text


@dataclass(frozen=True)
class KnowledgeRow:
    """A row of `custom_knowledge`."""

    id: int
    label: str
    value: str
    tags: tuple[str, ...] = ()
    visibility: str = "private"
    user: str = ""
    task_id: str = ""
    source: str = ""
    inserted_at: datetime | None = None
    embedded: bool = False


@dataclass(frozen=True)
class NewKnowledge:
    """What `KnowledgeBase.add` stores."""

    label: str
    value: str
    tags: tuple[str, ...] = ()
    visibility: str = "private"
    user: str = ""
    source: str = ""
    task_id: str = ""


@dataclass(frozen=True)
class KnowledgeHit:
    row: KnowledgeRow
    score: float
    similarity: float = 0.0
    text_rank: float = 0.0


@dataclass(frozen=True)
class SearchResult:
    hits: list[KnowledgeHit] = field(default_factory=list)
    # "vector", "exact" or "keyword" (see memory.proto's SearchKnowledgeResponse).
    method: str = "keyword"


class KnowledgeBase(Protocol):
    """Long-term facts: `custom_knowledge` rows, embedded in `vector_knowledge`."""

    async def add(self, new: NewKnowledge) -> KnowledgeRow: ...

    async def list(self, user: str, tags: Sequence[str], limit: int) -> list[KnowledgeRow]: ...

    async def search(self, query: str, user: str, k: int) -> SearchResult: ...

    async def delete(self, knowledge_id: int) -> KnowledgeRow: ...
