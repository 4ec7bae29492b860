"""The command line dials the scheduler with the configuration's TLS settings and the token."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import TOKEN, Cli, cli_environment
from tests.scheduler.conftest import HEARTBEAT, Mesh
from tests.support.pki import make_pki


def _config(path: Path, tls: dict[str, str]) -> Path:
    path.write_text(json.dumps({"node": {"heartbeat_interval_seconds": HEARTBEAT}, "tls": tls}))
    return path


async def test_the_cli_reaches_a_scheduler_that_requires_tls_and_client_certificates(
    mesh: Mesh, tmp_path: Path, database_uri: str
) -> None:
    pki = make_pki(tmp_path / "pki", "mesh", "client")
    served = _config(
        tmp_path / "mesh.json",
        {
            "cert_file": str(pki / "mesh.crt"),
            "key_file": str(pki / "mesh.key"),
            "client_ca_file": str(pki / "ca.crt"),
            "ca_file": str(pki / "ca.crt"),
        },
    )
    mesh.configure(AGENTMESH_CONFIG=str(served), AGENTMESH_TOKEN=TOKEN)
    await mesh.start_scheduler()
    await mesh.start_node("alpha")
    client = _config(
        tmp_path / "client.json",
        {
            "ca_file": str(pki / "ca.crt"),
            "cert_file": str(pki / "client.crt"),
            "key_file": str(pki / "client.key"),
        },
    )
    address = mesh.schedulers[0].address
    cli = Cli(
        tmp_path,
        cli_environment(
            AGENTMESH_SCHEDULER=address, AGENTMESH_TOKEN=TOKEN, AGENTMESH_CONFIG=str(client)
        ),
    )

    run = await cli("run", "--command", "uname -s")
    assert (run.returncode, run.stdout) == (0, "Linux\n"), run

    # Without a client certificate, or without TLS: the scheduler closes the connection.
    closed = f"cannot reach the scheduler at {address}: it closed the connection (do the tls"
    without_certificate = _config(tmp_path / "ca-only.json", {"ca_file": str(pki / "ca.crt")})
    refused = await cli("agents", env={"AGENTMESH_CONFIG": str(without_certificate)})
    refused.assert_one_error_line(closed)
    plaintext = _config(tmp_path / "plaintext.json", {})
    (await cli("agents", env={"AGENTMESH_CONFIG": str(plaintext)})).assert_one_error_line(closed)
