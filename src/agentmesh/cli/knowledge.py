"""`agentmesh knowledge`: long-term facts (`custom_knowledge`), added, listed, searched and
removed.

A fact is `private` (its user's alone: `--user` says whose) or `shared`. The scheduler embeds
each fact in the background (the Gemini API, with a key from its pool): `add` returns at once,
and a fact not embedded yet is still found by keyword. `search` ranks by meaning and by
keyword together, and says which it could use.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

import click

from agentmesh.cli.app import App, json_option, output_for, pass_app
from agentmesh.cli.client import CALL_TIMEOUT, EXIT_OK, memory_stub
from agentmesh.cli.views import ago, first_line
from agentmesh.v1 import memory_pb2

METHODS = {
    "vector": "by meaning (HNSW index) and keyword",
    "exact": "by meaning (every row compared: no pgvector) and keyword",
    "keyword": "by keyword only (the query could not be embedded)",
}


def knowledge_json(row: memory_pb2.Knowledge) -> dict[str, Any]:
    """A `custom_knowledge` row as `knowledge list --json` prints it."""
    return {
        "id": row.id,
        "label": row.label,
        "value": row.value,
        "tags": list(row.tags),
        "visibility": row.visibility,
        "user": row.user,
        "task_id": row.task_id,
        "source": row.source,
        "inserted_at": (
            row.inserted_at.ToDatetime(tzinfo=UTC).isoformat()
            if row.HasField("inserted_at")
            else None
        ),
        "embedded": row.embedded,
    }


def _tags(value: str) -> list[str]:
    return [tag.strip() for tag in value.split(",") if tag.strip()]


def _whose(row: memory_pb2.Knowledge) -> str:
    return f"private, {row.user}" if row.visibility == "private" else "shared"


@click.group()
def knowledge() -> None:
    """Long-term facts the agents remember: add, list, search, rm."""


@knowledge.command()
@click.option("--label", required=True, help="what the fact is about, in a few words")
@click.option("--value", required=True, help="the fact itself")
@click.option("--tags", default="", help="comma-separated tags")
@click.option(
    "--visibility",
    type=click.Choice(["private", "shared"]),
    default="private",
    show_default=True,
    help="private: only the user's tasks and searches see it",
)
@click.option("--user", default="", help="whose fact it is (required for a private one)")
@json_option
@pass_app
def add(
    app: App, label: str, value: str, tags: str, visibility: str, user: str, as_json: bool
) -> int:
    """Remember a fact; it is embedded in the background, found by keyword meanwhile."""

    async def command() -> int:
        request = memory_pb2.AddKnowledgeRequest(
            label=label,
            value=value,
            tags=_tags(tags),
            visibility=visibility,
            user=user,
            source="cli",
        )
        async with memory_stub(app.settings(), app.scheduler_address()) as stub:
            row = await stub.AddKnowledge(request, timeout=CALL_TIMEOUT)
        output = output_for(as_json)
        if output.json:
            output.data(knowledge_json(row))
        else:
            output.line(f"added knowledge {row.id} ({_whose(row)}): {row.label}")
        return EXIT_OK

    return app.run(command)


@knowledge.command(name="list")
@click.option("--user", default="", help="as this user: theirs and the shared facts")
@click.option("--tag", "tags", multiple=True, help="only facts with this tag (repeat for more)")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
@pass_app
def list_knowledge(app: App, user: str, tags: tuple[str, ...], limit: int, as_json: bool) -> int:
    """List facts, newest first: the user's own and the shared ones."""

    async def command() -> int:
        request = memory_pb2.ListKnowledgeRequest(user=user, tags=tags, limit=limit)
        async with memory_stub(app.settings(), app.scheduler_address()) as stub:
            reply = await stub.ListKnowledge(request, timeout=CALL_TIMEOUT)
        output = output_for(as_json)
        if output.json:
            output.data([knowledge_json(row) for row in reply.rows])
            return EXIT_OK
        rows = [
            [
                str(row.id),
                first_line(row.label, 32),
                first_line(row.value, 48),
                ",".join(row.tags) or "-",
                _whose(row),
                "yes" if row.embedded else "not yet",
                ago(row.inserted_at, row.HasField("inserted_at")),
            ]
            for row in reply.rows
        ]
        output.table(["ID", "LABEL", "VALUE", "TAGS", "WHOSE", "EMBEDDED", "ADDED"], rows)
        return EXIT_OK

    return app.run(command)


@knowledge.command()
@click.argument("query")
@click.option("-k", "k", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option("--user", default="", help="as this user: theirs and the shared facts")
@json_option
@pass_app
def search(app: App, query: str, k: int, user: str, as_json: bool) -> int:
    """Find the K facts that best match QUERY, by meaning and by keyword."""

    async def command() -> int:
        request = memory_pb2.SearchKnowledgeRequest(query=query, user=user, k=k)
        async with memory_stub(app.settings(), app.scheduler_address()) as stub:
            reply = await stub.SearchKnowledge(request, timeout=CALL_TIMEOUT)
        output = output_for(as_json)
        if output.json:
            output.data(
                {
                    "method": reply.method,
                    "hits": [
                        {
                            **knowledge_json(hit.row),
                            "score": hit.score,
                            "similarity": hit.similarity,
                            "text_rank": hit.text_rank,
                        }
                        for hit in reply.hits
                    ],
                }
            )
            return EXIT_OK
        rows = [
            [
                str(hit.row.id),
                f"{hit.score:.4f}",
                f"{hit.similarity:.3f}" if hit.similarity else "-",
                f"{hit.text_rank:.3f}" if hit.text_rank else "-",
                first_line(hit.row.label, 32),
                first_line(hit.row.value, 48),
            ]
            for hit in reply.hits
        ]
        output.table(["ID", "SCORE", "SIMILARITY", "KEYWORD", "LABEL", "VALUE"], rows)
        found = f"{len(reply.hits)} fact{'' if len(reply.hits) == 1 else 's'}"
        output.note(f"{found}, {METHODS.get(reply.method, reply.method)}")
        return EXIT_OK

    return app.run(command)


@knowledge.command(name="rm")
@click.argument("knowledge_id", metavar="ID", type=click.IntRange(1, 2**63 - 1))
@json_option
@pass_app
def remove(app: App, knowledge_id: int, as_json: bool) -> int:
    """Forget a fact (and its embedding)."""

    async def command() -> int:
        request = memory_pb2.DeleteKnowledgeRequest(id=knowledge_id)
        async with memory_stub(app.settings(), app.scheduler_address()) as stub:
            row = await stub.DeleteKnowledge(request, timeout=CALL_TIMEOUT)
        output = output_for(as_json)
        if output.json:
            output.data(knowledge_json(row))
        else:
            output.line(f"removed knowledge {row.id}: {row.label}")
        return EXIT_OK

    return app.run(command)
