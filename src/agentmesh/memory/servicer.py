"""`agentmesh.v1.Memory` over gRPC: the only memory module that knows the generated code."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from agentmesh.access.task_credentials import TaskIdentity
from agentmesh.errors import InvalidArgument, PermissionDenied
from agentmesh.memory.model import (
    MAX_TEXT,
    PROFILE_FIELDS,
    KnowledgeBase,
    KnowledgeRow,
    NewKnowledge,
    Profile,
    profile_change,
    validate_username,
)
from agentmesh.memory.network import HomeNetwork
from agentmesh.memory.profiles import Profiles
from agentmesh.rpc import auth
from agentmesh.rpc.errors import unary
from agentmesh.scheduler.servicer import host_to_proto
from agentmesh.v1 import memory_pb2, memory_pb2_grpc, scheduler_pb2

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE_NAME = memory_pb2.DESCRIPTOR.services_by_name["Memory"].full_name
VISIBILITIES = ("private", "shared")
MAX_LIST = 1000
MAX_HITS = 100


def profile_to_proto(profile: Profile) -> memory_pb2.Profile:
    message = memory_pb2.Profile(username=profile.username)
    for name in PROFILE_FIELDS:
        value = getattr(profile, name)
        if value is not None:
            setattr(message, name, str(value) if name == "default_permissions" else value)
            message.fields.append(name)
    return message


def knowledge_to_proto(row: KnowledgeRow) -> memory_pb2.Knowledge:
    message = memory_pb2.Knowledge(
        id=row.id,
        label=row.label,
        value=row.value,
        tags=row.tags,
        visibility=row.visibility,
        user=row.user,
        task_id=row.task_id,
        source=row.source,
        embedded=row.embedded,
    )
    if row.inserted_at is not None:
        stamp = Timestamp()
        stamp.FromDatetime(row.inserted_at)
        message.inserted_at.CopyFrom(stamp)
    return message


def new_knowledge(request: memory_pb2.AddKnowledgeRequest) -> NewKnowledge:
    """Checked: a label and a value, a known visibility, a plausible user."""
    for name in ("label", "value"):
        text = getattr(request, name)
        if not text.strip():
            raise InvalidArgument(name, "must not be empty")
        if len(text) > MAX_TEXT * 4:
            raise InvalidArgument(name, f"must be at most {MAX_TEXT * 4} characters")
    visibility = request.visibility or "private"
    if visibility not in VISIBILITIES:
        raise InvalidArgument("visibility", f"must be private or shared (got {visibility!r})")
    if request.user:
        validate_username(request.user, "user")
    if visibility == "private" and not request.user:
        raise InvalidArgument("user", "is required for a private row (whose is it?)")
    for tag in request.tags:
        if not tag or len(tag) > 64 or any(c.isspace() or c == "," for c in tag):
            raise InvalidArgument("tags", f"{tag!r}: a tag is 1-64 characters, no spaces or ,")
    return NewKnowledge(
        label=request.label,
        value=request.value,
        tags=tuple(dict.fromkeys(request.tags)),
        visibility=visibility,
        user=request.user,
        source=request.source or "api",
    )


class MemoryServicer(memory_pb2_grpc.MemoryServicer):
    def __init__(
        self,
        profiles: Profiles,
        knowledge: KnowledgeBase,
        network: HomeNetwork,
        task_user: Callable[[TaskIdentity], Awaitable[str]] | None = None,
    ) -> None:
        self._profiles = profiles
        self._knowledge = knowledge
        self._network = network
        # A running agent (a mesh credential) searches and remembers as its task's user.
        self._task_user = task_user

    async def _as_task(self) -> tuple[TaskIdentity, str] | None:
        """The task and user a mesh credential speaks for (None for a person)."""
        task = auth.caller()
        if not isinstance(task, TaskIdentity):
            return None
        if self._task_user is None:
            raise PermissionDenied("this scheduler takes no knowledge calls from agents")
        return task, await self._task_user(task)

    @unary
    async def GetProfile(
        self, request: memory_pb2.GetProfileRequest, context: Context
    ) -> memory_pb2.Profile:
        return profile_to_proto(await self._profiles.get(request.username))

    @unary
    async def SetProfile(
        self, request: memory_pb2.SetProfileRequest, context: Context
    ) -> memory_pb2.Profile:
        if not request.fields:
            raise InvalidArgument("fields", f"name at least one of {', '.join(PROFILE_FIELDS)}")
        values = {name: getattr(request.profile, name, None) for name in request.fields}
        for name in request.fields:
            if name not in PROFILE_FIELDS:
                raise InvalidArgument("fields", f"{name!r} is not a profile field")
        change = profile_change(request.profile.username, values)
        return profile_to_proto(await self._profiles.set(request.profile.username, change))

    @unary
    async def ListProfiles(
        self, request: memory_pb2.ListProfilesRequest, context: Context
    ) -> memory_pb2.ListProfilesResponse:
        profiles = await self._profiles.list()
        return memory_pb2.ListProfilesResponse(profiles=[profile_to_proto(p) for p in profiles])

    @unary
    async def AddKnowledge(
        self, request: memory_pb2.AddKnowledgeRequest, context: Context
    ) -> memory_pb2.Knowledge:
        if (agent := await self._as_task()) is not None:
            task, user = agent
            request.user = user
            request.source = f"agent:{task.task_id}"
            # An agent's facts are its user's: one that read something hostile must not
            # reach other users' agents (only a task without a user writes shared rows).
            request.visibility = "private" if user else "shared"
            new = dataclasses.replace(new_knowledge(request), task_id=task.task_id)
            return knowledge_to_proto(await self._knowledge.add(new))
        return knowledge_to_proto(await self._knowledge.add(new_knowledge(request)))

    @unary
    async def ListKnowledge(
        self, request: memory_pb2.ListKnowledgeRequest, context: Context
    ) -> memory_pb2.ListKnowledgeResponse:
        if not 0 <= request.limit <= MAX_LIST:
            raise InvalidArgument("limit", f"must be between 0 and {MAX_LIST}")
        if request.user:
            validate_username(request.user, "user")
        rows = await self._knowledge.list(request.user, tuple(request.tags), request.limit or 50)
        return memory_pb2.ListKnowledgeResponse(rows=[knowledge_to_proto(r) for r in rows])

    @unary
    async def SearchKnowledge(
        self, request: memory_pb2.SearchKnowledgeRequest, context: Context
    ) -> memory_pb2.SearchKnowledgeResponse:
        if not request.query.strip():
            raise InvalidArgument("query", "must not be empty")
        if len(request.query) > MAX_TEXT:
            raise InvalidArgument("query", f"must be at most {MAX_TEXT} characters")
        if not 0 <= request.k <= MAX_HITS:
            raise InvalidArgument("k", f"must be between 0 and {MAX_HITS}")
        if (agent := await self._as_task()) is not None:
            request.user = agent[1]  # what its user may see, and no more
        if request.user:
            validate_username(request.user, "user")
        result = await self._knowledge.search(request.query, request.user, request.k or 5)
        return memory_pb2.SearchKnowledgeResponse(
            hits=[
                memory_pb2.KnowledgeHit(
                    row=knowledge_to_proto(hit.row),
                    score=hit.score,
                    similarity=hit.similarity,
                    text_rank=hit.text_rank,
                )
                for hit in result.hits
            ],
            method=result.method,
        )

    @unary
    async def DeleteKnowledge(
        self, request: memory_pb2.DeleteKnowledgeRequest, context: Context
    ) -> memory_pb2.Knowledge:
        if request.id <= 0:
            raise InvalidArgument("id", "must be a knowledge row's id (agentmesh knowledge list)")
        return knowledge_to_proto(await self._knowledge.delete(request.id))

    @unary
    async def AddHost(
        self, request: memory_pb2.AddHostRequest, context: Context
    ) -> scheduler_pb2.Host:
        host = await self._network.add(
            request.host_name, request.ip_address, request.service, request.tags, request.notes
        )
        return host_to_proto(host)

    @unary
    async def TagHost(
        self, request: memory_pb2.TagHostRequest, context: Context
    ) -> scheduler_pb2.ListHostsResponse:
        if not request.add and not request.remove:
            raise InvalidArgument("add", "name tags to add or to remove")
        hosts = await self._network.tag(request.host_name, request.add, request.remove)
        return scheduler_pb2.ListHostsResponse(hosts=[host_to_proto(h) for h in hosts])

    @unary
    async def RemoveHost(
        self, request: memory_pb2.RemoveHostRequest, context: Context
    ) -> memory_pb2.RemoveHostResponse:
        removed = await self._network.remove(request.host_name, request.service)
        return memory_pb2.RemoveHostResponse(removed=removed)


def register(servicer: MemoryServicer) -> Callable[[grpc.aio.Server], None]:
    return lambda server: memory_pb2_grpc.add_MemoryServicer_to_server(servicer, server)
