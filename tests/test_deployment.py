"""The deployment files, checked without Docker (this machine has no Docker engine).

docker-compose.yml: PostgreSQL with pgvector, a scheduler and two nodes; every variable it
uses is in .env.example; the services' environment is what agentmesh reads; published
ports, listen addresses and healthchecks agree; the nodes reach the scheduler by its
service name; and the healthcheck itself works against a real node. Dockerfile: Python
3.11, Node.js 20 and the Makefile's Gemini CLI pin, an unprivileged user, and the files it
copies build the same package, with the same entry point, as `pip install .` of the
checkout.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentmesh.config import EnvSettings, NodeSettings, load_settings
from agentmesh.node.service import AgentNode

REPO = Path(__file__).resolve().parent.parent
COMPOSE_TEXT = (REPO / "docker-compose.yml").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# The services that run the agentmesh image, by the command they run.
AGENTMESH = {name: s for name, s in SERVICES.items() if s.get("build") == "."}
SCHEDULER = "scheduler"
NODES = sorted(name for name, s in AGENTMESH.items() if s["command"][0] == "node")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
TOKEN = "deployment-test-token-2b8e"


def flags(service: str) -> dict[str, str]:
    """The `--flag value` pairs of a service's command."""
    command = AGENTMESH[service]["command"]
    return dict(zip(command[1::2], command[2::2], strict=True))


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def env_example_names() -> set[str]:
    text = (REPO / ".env.example").read_text()
    return set(re.findall(r"^# ([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))


def healthcheck_address(service: str) -> str:
    """The address a service's healthcheck asks, checking the command's shape on the way."""
    test = SERVICES[service]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    assert len(test) == 5, test
    address: str = test[4]
    return address


def container_ports(service: str) -> set[int]:
    """The container side of a service's published ports ("HOST_IP:HOST:CONTAINER")."""
    return {int(str(entry).rpartition(":")[2]) for entry in SERVICES[service].get("ports", [])}


# ----------------------------------------------------------------------------- compose


def test_compose_runs_postgres_with_pgvector_a_scheduler_and_two_nodes() -> None:
    assert set(SERVICES) == {"postgres", SCHEDULER, *NODES}
    assert SERVICES["postgres"]["image"].startswith("pgvector/pgvector:pg16")
    assert AGENTMESH[SCHEDULER]["command"][0] == "scheduler"
    assert NODES == ["node-1", "node-2"]
    assert set(AGENTMESH) == {SCHEDULER, *NODES}
    assert len({s["image"] for s in AGENTMESH.values()}) == 1  # one image, built once


def test_every_variable_compose_uses_is_in_env_example() -> None:
    # ${NAME}, ${NAME:-default} and ${NAME:?message}; $${NAME} is the container's own.
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_TEXT))
    assert {"AGENTMESH_TOKEN", "POSTGRES_PASSWORD", "GEMINI_API_KEY_FILE"} <= used
    assert used - env_example_names() == set()


def test_agentmesh_services_set_only_variables_agentmesh_reads() -> None:
    for name, service in AGENTMESH.items():
        assert set(service["environment"]) <= set(EnvSettings.model_fields), name
        # Credentials are required: compose refuses to start without them. The scheduler
        # holds the user credential, each node a node credential of its own.
        if name == SCHEDULER:
            token = service["environment"]["AGENTMESH_TOKEN"]
            assert token.startswith("${AGENTMESH_TOKEN:?"), name
        else:
            assert "AGENTMESH_TOKEN" not in service["environment"], name
            token = service["environment"]["AGENTMESH_NODE_TOKEN"]
            assert token.startswith("${AGENTMESH_NODE_"), name
    node_tokens = {AGENTMESH[node]["environment"]["AGENTMESH_NODE_TOKEN"] for node in NODES}
    assert len(node_tokens) == len(NODES)  # one credential per node
    assert set(AGENTMESH[SCHEDULER]["environment"]) >= {"POSTGRES_HOST", "GEMINI_API_KEY_FILE"}
    for node in NODES:  # nodes never talk to the database
        assert not any(v.startswith("POSTGRES_") for v in AGENTMESH[node]["environment"])


def test_the_scheduler_uses_the_postgres_service() -> None:
    scheduler = AGENTMESH[SCHEDULER]["environment"]
    postgres = SERVICES["postgres"]
    assert scheduler["POSTGRES_HOST"] == "postgres"
    assert {int(scheduler["POSTGRES_PORT"])} == container_ports("postgres")
    for name in ("POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"):
        assert scheduler[name] == postgres["environment"][name], name
    assert AGENTMESH[SCHEDULER]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "healthcheck" in postgres


def test_the_scheduler_reads_the_key_file_as_a_secret() -> None:
    (secret,) = AGENTMESH[SCHEDULER]["secrets"]
    assert AGENTMESH[SCHEDULER]["environment"]["GEMINI_API_KEY_FILE"] == f"/run/secrets/{secret}"
    assert COMPOSE["secrets"][secret]["file"].startswith("${GEMINI_API_KEY_FILE:?")


def test_published_ports_listen_addresses_and_healthchecks_agree() -> None:
    listen = flags(SCHEDULER)["--listen"]
    assert listen.startswith("0.0.0.0:")  # reachable from the other containers
    assert container_ports(SCHEDULER) == {port_of(listen)}
    assert healthcheck_address(SCHEDULER) == f"127.0.0.1:{port_of(listen)}"

    for node in NODES:
        node_flags = flags(node)
        port = port_of(node_flags["--listen"])
        assert node_flags["--listen"] == f"0.0.0.0:{port}"
        assert {int(p) for p in AGENTMESH[node]["expose"]} == {port}
        assert healthcheck_address(node) == f"127.0.0.1:{port}"
        # The scheduler dials the node by its service name, which is also its host name.
        assert node_flags["--advertise"] == f"{node}:{port}"
        assert AGENTMESH[node]["hostname"] == node_flags["--name"] == node
        # And the node registers with the scheduler by the scheduler's service name.
        assert node_flags["--scheduler"] == f"{SCHEDULER}:{port_of(listen)}"
        assert AGENTMESH[node]["depends_on"] == {SCHEDULER: {"condition": "service_healthy"}}
        assert AGENTMESH[node].get("ports") is None  # only the scheduler dials nodes


def test_every_health_condition_has_a_healthcheck() -> None:
    for service in SERVICES.values():
        for name, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}
            assert "healthcheck" in SERVICES[name], name


@pytest.mark.parametrize("service", sorted(AGENTMESH))
def test_service_commands_use_flags_the_command_line_has(service: str) -> None:
    command = AGENTMESH[service]["command"]
    result = subprocess.run(
        [sys.executable, "-m", "agentmesh.cli.main", command[0], "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    for flag in command[1::2]:
        assert flag in result.stdout, (service, flag)


async def test_the_healthcheck_passes_for_a_serving_node_and_fails_without_one(
    tmp_path: Path,
) -> None:
    """The compose healthcheck's own script, against a real node that requires a token."""
    test = SERVICES[NODES[0]]["healthcheck"]["test"]
    script = test[3]

    async def check(address: str) -> int:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, address, stderr=asyncio.subprocess.DEVNULL
        )
        return await asyncio.wait_for(process.wait(), 30)

    settings = load_settings(
        {
            "AGENTMESH_TOKEN": TOKEN,
            "AGENTMESH_DATA_DIR": str(tmp_path / "data"),
            "GEMINI_CLI_COMMAND": "/nonexistent",
        },
        cwd=tmp_path,
    )
    node = await AgentNode.start(settings, NodeSettings(listen="127.0.0.1:0", name="health"))
    try:
        assert await check(node.address) == 0
    finally:
        await node.shutdown(grace_seconds=0)
    assert await check(node.address) != 0


# ----------------------------------------------------------------------------- Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text()
    logical = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            found.append((keyword.upper(), arguments.strip()))
    return found


def instructions(keyword: str) -> list[str]:
    return [arguments for name, arguments in dockerfile() if name == keyword]


def test_the_image_pins_the_makefile_s_gemini_cli_on_node_20() -> None:
    makefile = (REPO / "Makefile").read_text()
    (pinned,) = re.findall(r"^GEMINI_CLI_VERSION\s*:?=\s*(\S+)", makefile, re.MULTILINE)
    assert f"GEMINI_CLI_VERSION={pinned}" in instructions("ARG")
    assert any(
        "npm install" in run and "@google/gemini-cli@${GEMINI_CLI_VERSION}" in run
        for run in instructions("RUN")
    )
    bases = [arguments.split()[0] for arguments in instructions("FROM")]
    assert any(base.startswith("node:20-") for base in bases), bases
    assert bases[-1].startswith("python:3.11-slim"), bases


def test_the_image_runs_the_package_s_entry_point_as_an_unprivileged_user() -> None:
    # `pip install [OPTIONS] .`, as a user installs it from the checkout.
    assert any(re.search(r"\bpip install\b[^&;|]* \.(\s|$)", run) for run in instructions("RUN"))
    (entrypoint,) = instructions("ENTRYPOINT")
    assert json.loads(entrypoint) == list(PYPROJECT["project"]["scripts"])
    assert instructions("USER")[-1] not in ("root", "0")


def test_the_build_context_leaves_secrets_out() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".env", "api_keys.env", ".venv", ".git"} <= set(ignored)


def _dockerignore() -> Callable[[str, list[str]], Iterable[str]]:
    """A copytree filter for the .dockerignore patterns (the forms that file uses)."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignore(directory: str, names: list[str]) -> set[str]:
        relative = Path(directory).relative_to(REPO)
        dropped = set()
        for name in names:
            path = str(relative / name) if relative.parts else name
            for pattern in patterns:
                anywhere = pattern.removeprefix("**/")
                if fnmatch.fnmatch(path, pattern) or (
                    pattern.startswith("**/") and fnmatch.fnmatch(name, anywhere)
                ):
                    dropped.add(name)
        return dropped

    return ignore


def _wheel(source: Path, out: Path) -> zipfile.ZipFile:
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"),
            *("--no-build-isolation", "--wheel-dir", str(out), str(source)),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


@pytest.mark.slow
def test_the_files_the_image_copies_build_the_checkout_s_package(tmp_path: Path) -> None:
    # The image: each COPY of the build context (the checkout less .dockerignore).
    image = tmp_path / "image"
    image.mkdir()
    for arguments in instructions("COPY"):
        if arguments.startswith("--from"):
            continue
        *sources, destination = arguments.split()
        assert destination.startswith("./"), arguments
        for source in sources:
            target = image / destination
            if destination.endswith("/"):
                target = target / source
            origin = REPO / source
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=_dockerignore())
            else:
                shutil.copy2(origin, target)
    # The checkout: what git has (a fresh clone), where `pip install .` runs.
    checkout = tmp_path / "checkout"
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    if listing.returncode != 0:
        pytest.skip(f"not a git checkout: {listing.stderr.decode().strip()}")
    listed = listing.stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, checkout / name)

    built = _wheel(image, tmp_path / "image-wheel")
    expected = _wheel(checkout, tmp_path / "checkout-wheel")

    assert sorted(built.namelist()) == sorted(expected.namelist())
    for name in expected.namelist():
        if not name.endswith("RECORD"):
            assert built.read(name) == expected.read(name), name
    (entry_points,) = [n for n in built.namelist() if n.endswith("entry_points.txt")]
    scripts = PYPROJECT["project"]["scripts"]
    assert built.read(entry_points).decode().split() == [
        "[console_scripts]",
        *[part for name, target in scripts.items() for part in (name, "=", target)],
    ]
