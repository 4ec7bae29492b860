"""`agentmesh profile` and `agentmesh network` as a user runs them, against a scheduler with
the token: a profile is checked field by field and takes effect on the user's next task;
hosts that run no node are added, tagged and removed."""

from __future__ import annotations

import json
from typing import Any

from tests.cli.conftest import Cli


async def test_a_profile_is_set_field_by_field_and_its_mode_applies_to_the_users_tasks(
    cli: Cli,
) -> None:
    assert (await cli("profile", "show", "ada")).returncode == 1

    changed = await cli(
        "profile", "set", "ada", "--default-permissions", "superuser",
        "--timezone", "Europe/Paris", "--preferred-format", "short bullet points", "--json",
    )  # fmt: skip
    assert changed.returncode == 0, changed
    assert json.loads(changed.stdout) == {
        "username": "ada",
        "default_permissions": "superuser",
        "throttle_tolerance": None,
        "max_token_per_request": None,
        "timezone": "Europe/Paris",
        "preferred_format": "short bullet points",
    }
    # Only the options given are written.
    await cli("profile", "set", "ada", "--throttle-tolerance", "30")
    shown = json.loads((await cli("profile", "show", "ada", "--json")).stdout)
    assert (shown["throttle_tolerance"], shown["timezone"]) == (30, "Europe/Paris")
    table = (await cli("profile", "show", "ada")).stdout
    assert "short bullet points" in table
    assert "(default)" in table  # max_token_per_request

    # A task of ada's that names no mode runs in hers; another user's in the configured one.
    async def submitted(user: str, *more: str) -> dict[str, Any]:
        echo = ("submit", "--kind", "echo", "--prompt", "hi", "--json")
        task: dict[str, Any] = json.loads((await cli(*echo, "--user", user, *more)).stdout)
        return task

    mine, theirs = await submitted("ada"), await submitted("bo")
    explicit = await submitted("ada", "--mode", "weak")
    assert mine["spec"]["permission_mode"] == "superuser"
    assert "permission_mode" not in theirs["spec"]
    assert explicit["spec"]["permission_mode"] == "weak"


async def test_bad_profile_fields_are_refused_by_name_and_nothing_is_written(cli: Cli) -> None:
    await cli("profile", "set", "ada", "--timezone", "UTC")
    cases = {
        ("--timezone", "Mars/Olympus"): "timezone: 'Mars/Olympus' is not an IANA time zone name",
        ("--default-permissions", "root"): "default_permissions: must be weak or superuser",
        ("--throttle-tolerance", "-1"): "throttle_tolerance: must be between 0 and",
        ("--max-tokens-per-request", "-5"): "max_token_per_request: must be between 0 and",
    }
    for (flag, value), problem in cases.items():
        # A bad field beside a good one: neither is written.
        refused = await cli("profile", "set", "ada", "--preferred-format", "prose", flag, value)
        refused.assert_one_error_line(problem)
        assert refused.returncode == 2
    shown = json.loads((await cli("profile", "show", "ada", "--json")).stdout)
    assert shown["timezone"] == "UTC"
    assert shown["preferred_format"] is None


async def test_hosts_that_run_no_node_are_added_tagged_and_removed(cli: Cli) -> None:
    added = await cli(
        "network", "add", "nas", "--ip", "192.168.1.20", "--service", "smb",
        "--tags", "storage,backup", "--notes", "the family photos",
    )  # fmt: skip
    assert added.returncode == 0, added
    await cli("network", "add", "nas", "--service", "ssh")

    tagged = await cli("network", "tag", "nas", "cold", "--remove", "backup", "--json")
    tagged = json.loads(tagged.stdout)
    assert {row["service"]: row["tags"] for row in tagged} == {
        "smb": ["cold", "storage"],
        "ssh": ["cold"],
    }
    hosts = json.loads((await cli("network", "--json")).stdout)
    nas = {h["service"]: h for h in hosts if h["host_name"] == "nas"}
    assert nas["smb"]["ip_address"] == "192.168.1.20"
    assert nas["smb"]["notes"] == "the family photos"
    assert nas["smb"]["last_seen"] is None  # no node reports it
    assert any(h["service"] == "agentmesh-node" for h in hosts)  # the node's own row

    (
        await cli("network", "add", "nas", "--ip", "300.1.1.1", "--service", "x")
    ).assert_one_error_line("ip_address: '300.1.1.1' is not an IPv4 or IPv6 address")
    (await cli("network", "tag", "nowhere", "x")).assert_one_error_line("no host 'nowhere'")
    removed = await cli("network", "rm", "nas", "--service", "ssh")
    assert "removed 1 row(s) of nas" in removed.stdout
    assert (await cli("network", "rm", "nas")).returncode == 0
    hosts = json.loads((await cli("network", "--json")).stdout)
    assert not [h for h in hosts if h["host_name"] == "nas"]
