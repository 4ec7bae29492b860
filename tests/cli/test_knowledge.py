"""`agentmesh knowledge` through the real entry point against a scheduler with the token:
facts added, listed, searched and removed; mistakes are one line. The scheduler has no API
key here, so facts stay unembedded and search says it went by keyword only."""

from __future__ import annotations

import json

from tests.cli.conftest import Cli

ROW_FIELDS = {
    "id", "label", "value", "tags", "visibility", "user", "task_id", "source", "inserted_at",
    "embedded",
}  # fmt: skip


async def test_facts_are_added_listed_searched_and_removed(cli: Cli) -> None:
    added = await cli(
        "knowledge", "add", "--label", "nas address", "--value", "the NAS is 10.0.0.5",
        "--tags", "network,storage", "--user", "alice",
    )  # fmt: skip
    assert added.returncode == 0, added
    assert added.stdout.startswith("added knowledge "), added
    assert added.stderr == "", added
    assert added.stdout.endswith(" (private, alice): nas address\n"), added
    shared = await cli(
        "knowledge", "add", "--label", "printer", "--value", "the printer takes HP 305 toner",
        "--visibility", "shared", "--json",
    )  # fmt: skip
    printer = json.loads(shared.stdout)
    assert set(printer) == ROW_FIELDS
    assert {k: printer[k] for k in ("label", "tags", "visibility", "user", "source")} == {
        "label": "printer",
        "tags": [],
        "visibility": "shared",
        "user": "",
        "source": "cli",
    }
    assert printer["embedded"] is False

    as_alice = json.loads((await cli("knowledge", "list", "--user", "alice", "--json")).stdout)
    assert [row["label"] for row in as_alice] == ["printer", "nas address"]  # newest first
    assert as_alice[1]["tags"] == ["network", "storage"]
    as_bob = json.loads((await cli("knowledge", "list", "--user", "bob", "--json")).stdout)
    assert [row["label"] for row in as_bob] == ["printer"]
    tagged = await cli("knowledge", "list", "--user", "alice", "--tag", "storage")
    header, line = tagged.stdout.splitlines()
    assert header.split() == ["ID", "LABEL", "VALUE", "TAGS", "WHOSE", "EMBEDDED", "ADDED"]
    for shown in ("nas address", "private, alice", "not yet"):
        assert shown in line, line

    found = await cli("knowledge", "search", "where is the NAS", "--user", "alice", "-k", "3")
    assert found.returncode == 0, found
    header, line = found.stdout.splitlines()
    assert header.split() == ["ID", "SCORE", "SIMILARITY", "KEYWORD", "LABEL", "VALUE"]
    assert "nas address" in line, line
    assert found.stderr == "1 fact, by keyword only (the query could not be embedded)\n"
    as_json = json.loads((await cli("knowledge", "search", "toner", "--json")).stdout)
    assert as_json["method"] == "keyword"
    (hit,) = as_json["hits"]
    assert (hit["label"], hit["similarity"]) == ("printer", 0)
    assert hit["text_rank"] > 0
    assert json.loads((await cli("knowledge", "search", "NAS", "--json")).stdout)["hits"] == []

    removed = await cli("knowledge", "rm", str(printer["id"]))
    assert removed.stdout == f"removed knowledge {printer['id']}: printer\n", removed
    again = await cli("knowledge", "rm", str(printer["id"]))
    again.assert_one_error_line(f"no knowledge row {printer['id']}")
    assert again.returncode == 1


async def test_mistakes_are_one_line(cli: Cli) -> None:
    no_user = await cli("knowledge", "add", "--label", "l", "--value", "v")
    no_user.assert_one_error_line("invalid request: user: is required for a private row")
    assert no_user.returncode == 2
    empty = await cli("knowledge", "add", "--label", " ", "--value", "v", "--user", "al")
    empty.assert_one_error_line("invalid request: label: must not be empty")
    bad_k = await cli("knowledge", "search", "q", "-k", "500")
    bad_k.assert_one_error_line("-k")
    assert bad_k.returncode == 2
    bad_id = await cli("knowledge", "rm", "0")
    bad_id.assert_one_error_line("ID")
    assert bad_id.returncode == 2
    assert json.loads((await cli("knowledge", "list", "--json")).stdout) == []
