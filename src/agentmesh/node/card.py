"""The node's card: who it is, what it can run and what its host has."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import shlex
import shutil
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

from agentmesh import __version__

log = logging.getLogger(__name__)

# Tools whose presence is worth advertising as `tool:NAME` capabilities.
NOTABLE_TOOLS = (
    "git", "docker", "podman", "python3", "node", "npm", "go", "cargo", "java", "gcc", "make",
    "kubectl", "systemctl", "nvidia-smi", "ffmpeg", "psql", "curl", "ssh", "rsync",
)  # fmt: skip


@dataclass(frozen=True)
class HeldKey:
    """An API key the node holds in its own GEMINI_API_KEY_FILE: never its secret."""

    label: str
    fingerprint: str


@dataclass(frozen=True)
class AgentCard:
    """Mirrors `agentmesh.v1.AgentCard`; `running_tasks` and `draining` are filled per call."""

    agent_id: str
    name: str
    hostname: str
    ip_addresses: tuple[str, ...]
    version: str
    executors: tuple[str, ...]
    models: tuple[str, ...]
    capabilities: tuple[str, ...]
    os: str
    arch: str
    cpu_count: int
    memory_bytes: int
    max_concurrency: int
    permission_mode: str
    endpoint: str
    started_at: str
    gemini_cli_version: str = ""
    running_tasks: int = 0
    draining: bool = False
    # The node's own API keys, for the scheduler to account and lease back to it by fingerprint.
    held_keys: tuple[HeldKey, ...] = ()
    # How the node confines shell and gemini tasks (agentmesh.node.sandbox), in words.
    sandbox: str = ""
    # The highest permission mode it runs (node.max_permission_mode).
    max_permission_mode: str = "weak"


def held_keys_from(values: object) -> tuple[HeldKey, ...]:
    """held_keys from their JSON form (a list of {label, fingerprint} objects)."""
    if not isinstance(values, list | tuple):
        return ()
    return tuple(
        HeldKey(str(item.get("label", "")), str(item.get("fingerprint", "")))
        for item in values
        if isinstance(item, dict)
    )


def stable_agent_id(data_dir: Path, name: str) -> str:
    """The node's id, created once and kept in its data directory across restarts."""
    path = data_dir / "nodes" / name / "agent_id"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    agent_id = f"{name}-{uuid.uuid4().hex[:12]}"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(agent_id + "\n")
    tmp.replace(path)
    return agent_id


def ip_addresses() -> tuple[str, ...]:
    found = []
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                found.append(address.address.split("%", 1)[0])
    return tuple(sorted(set(found), key=lambda a: (":" in a, a)))


def detected_capabilities() -> tuple[str, ...]:
    system = platform.system().lower()
    capabilities = [f"os:{system}", f"arch:{platform.machine().lower()}"]
    capabilities += [f"tool:{tool}" for tool in NOTABLE_TOOLS if shutil.which(tool)]
    return tuple(capabilities)


async def gemini_cli_version(command: str, within_seconds: float = 60.0) -> str | None:
    """The CLI's version if `command --version` runs; None if it does not, and then one
    warning line naming GEMINI_CLI_COMMAND: the node runs without its gemini executor."""
    unavailable = f"no gemini executor: GEMINI_CLI_COMMAND={command}"
    try:
        argv = [*shlex.split(command), "--version"]
    except ValueError as exc:
        log.warning("%s is not a valid command line (%s)", unavailable, exc)
        return None
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
    except OSError as exc:
        log.warning("%s cannot start: %s", unavailable, exc.strerror or exc)
        return None
    try:
        out, err = await asyncio.wait_for(process.communicate(), within_seconds)
    except TimeoutError:
        process.kill()
        await process.wait()
        log.warning("%s: --version did not answer within %gs", unavailable, within_seconds)
        return None
    if process.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        log.warning(
            "%s: --version exited with %s%s",
            unavailable,
            process.returncode,
            f": {lines[-1][:200]}" if lines else "",
        )
        return None
    return out.decode(errors="replace").strip().splitlines()[-1] if out.strip() else "unknown"


def build_card(
    *,
    agent_id: str,
    name: str,
    executors: tuple[str, ...],
    models: tuple[str, ...],
    configured_capabilities: tuple[str, ...],
    max_concurrency: int,
    permission_mode: str,
    endpoint: str,
    gemini_version: str | None,
    held_keys: tuple[HeldKey, ...] = (),
    sandbox: str = "",
    max_permission_mode: str = "weak",
) -> AgentCard:
    capabilities = tuple(dict.fromkeys((*configured_capabilities, *detected_capabilities())))
    return AgentCard(
        agent_id=agent_id,
        name=name,
        hostname=socket.gethostname(),
        ip_addresses=ip_addresses(),
        version=__version__,
        executors=executors,
        models=models if gemini_version else (),
        capabilities=capabilities,
        os=f"{platform.system()} {platform.release()}",
        arch=platform.machine(),
        cpu_count=os.cpu_count() or 1,
        memory_bytes=psutil.virtual_memory().total,
        max_concurrency=max_concurrency,
        permission_mode=permission_mode,
        endpoint=endpoint,
        started_at=datetime.now(UTC).isoformat(),
        gemini_cli_version=gemini_version or "",
        held_keys=held_keys,
        sandbox=sandbox,
        max_permission_mode=max_permission_mode,
    )
