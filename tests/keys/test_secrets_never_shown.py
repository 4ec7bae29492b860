"""A key's secret goes in and never comes out: after a scheduler process has loaded a key
file, taken keys from `agentmesh keys add` (standard input and a file) and been asked every
admin question and some wrong ones, no secret is in anything the command line printed, the
scheduler's logs (it logs everything, `-v`), `ListKeys`, or a full dump of the database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentmesh.config import TlsSettings
from agentmesh.keys.pool import fingerprint
from agentmesh.rpc.channel import open_channel
from agentmesh.v1 import keys_pb2, keys_pb2_grpc
from tests.cli.conftest import Cli, Result, cli_environment
from tests.node.conftest import GEMINI_CLI
from tests.support.databases import Server, database_text
from tests.support.processes import ProcessHarness

pytestmark = pytest.mark.slow

TOKEN = "keys-secret-test-token-51c2"
FILE_SECRET = "AIzaSy-from-the-key-file-0d9c41"
STDIN_SECRET = "AIzaSy-through-stdin-7f20b3a8"
SECRET_FILE_SECRET = "AIzaSy-through-secret-file-c4e1"
REFUSED_SECRET = "AIzaSy-given-as-an-argument-99e0"
NODE_SECRET = "AIzaSy-kept-on-its-node-3a7d55"
SECRETS = (FILE_SECRET, STDIN_SECRET, SECRET_FILE_SECRET, REFUSED_SECRET, NODE_SECRET)


@pytest.fixture
def pg_server(embedded_server: Server) -> Server:
    return embedded_server


@pytest.fixture
async def harness(tmp_path: Path, database_uri: str) -> AsyncIterator[ProcessHarness]:
    keys = tmp_path / "api_keys.env"
    keys.write_text(f"FROM_FILE={FILE_SECRET}\n")
    config = {"scheduler": {"heartbeat_interval_seconds": 0.3}}
    env = {"AGENTMESH_TOKEN": TOKEN, "GEMINI_API_KEY_FILE": str(keys)}
    async with ProcessHarness(tmp_path, database_uri, config, env=env, verbose=True) as running:
        yield running
    print(running.describe())  # pytest shows it when the test fails


async def test_no_secret_is_printed_logged_answered_or_stored_in_clear(
    harness: ProcessHarness, tmp_path: Path, database_uri: str
) -> None:
    scheduler = await harness.start_scheduler()
    node_keys = tmp_path / "node_keys.env"
    node_keys.write_text(f"NODE_KEY={NODE_SECRET}\n")
    # A node with a key file of its own: it may advertise the key, never send it.
    await harness.start_node(
        "desk",
        scheduler=scheduler.address,
        # (a node advertises its keys when it can run gemini tasks)
        env={"GEMINI_API_KEY_FILE": str(node_keys), "GEMINI_CLI_COMMAND": GEMINI_CLI},
    )
    work = tmp_path / "cli"
    work.mkdir()
    cli = Cli(work, cli_environment(AGENTMESH_SCHEDULER=scheduler.address, AGENTMESH_TOKEN=TOKEN))
    (work / "secret.key").write_text(SECRET_FILE_SECRET + "\n")

    results: list[Result] = [
        await cli("keys", "add", "--label", "stdin-key", "--user", "alice", stdin=STDIN_SECRET),
        await cli("keys", "add", "--label", "file-key", "--secret-file", "secret.key"),
        await cli("keys", "add", "--label", "copy", stdin=FILE_SECRET),  # stored already
        await cli("keys", "add", "--label", STDIN_SECRET, stdin=REFUSED_SECRET),
        await cli("keys", "add", "--label", "argument", REFUSED_SECRET),
        await cli("keys", "update", "stdin-key", "--priority", "4", "--rpd", "60"),
        await cli("keys", "disable", "file-key", "--reason", "spare"),
        await cli("keys", "enable", "file-key"),
        await cli("keys", "rm", STDIN_SECRET),  # a secret where an ID belongs
        await cli("keys", "list"),
        await cli("keys", "list", "--json"),
    ]
    assert [r.returncode for r in results] == [0, 0, 1, 2, 2, 0, 0, 0, 2, 0, 0], results
    channel = open_channel(scheduler.address, token=TOKEN, tls=TlsSettings())
    try:
        # The node registers its key with its heartbeats: by fingerprint and label only.
        for _ in range(100):
            listed = await keys_pb2_grpc.KeyPoolStub(channel).ListKeys(
                keys_pb2.ListKeysRequest(), timeout=10
            )
            if any(key.label == "desk/NODE_KEY" for key in listed.keys):
                break
            await asyncio.sleep(0.1)
    finally:
        await channel.close()
    labels = {key.label for key in listed.keys}
    assert labels == {"FROM_FILE", "stdin-key", "file-key", "desk/NODE_KEY"}
    dump = await database_text(database_uri)
    logs = "\n".join(
        path.read_text(errors="replace") for path in sorted(harness.logs_dir.iterdir())
    )

    # What was searched holds what it should: the keys, by fingerprint and sealed.
    assert fingerprint(STDIN_SECRET) in logs
    assert all(fingerprint(secret) in dump for secret in SECRETS[:3])
    assert dump.count("fernet:") >= 3
    for secret in SECRETS:
        for result in results:
            assert secret not in result.stdout + result.stderr, (secret, result)
        assert secret not in logs, secret
        assert secret.encode() not in listed.SerializeToString(), secret
        assert secret not in dump, secret
