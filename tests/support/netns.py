"""Hosts with addresses of their own on one machine: Linux network namespaces on a bridge.

`VirtualNetwork(names)` creates a bridge in the root namespace holding the subnet's first
address (so the test process can reach every host) and, per name, a namespace with `lo` up
and a veth pair: one end on the bridge, the other (`eth0`) in the namespace with the host's
address. A process joins a host with `ip netns exec NAMESPACE`, see `Host.launcher`.

Names carry a random suffix and the subnet is a 10.77.N.0/24 that no interface or route of
the root namespace uses, so concurrent runs do not collide. Leaving the context manager
deletes every link and namespace it created, also after a failure, a half-built network
included. Kill the processes inside first: a namespace lives on while a process is in it.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

SUBNET_PREFIX = "10.77"
# Held while a run picks its subnet and claims it by addressing its bridge.
_LOCK_FILE = Path(tempfile.gettempdir()) / "agentmesh-netns.lock"


class NetnsUnavailable(Exception):
    """This machine (or this user) cannot create network namespaces; the message says why."""


def unavailable_reason() -> str | None:
    """Why namespaces cannot be created here, or None when they may be."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); running as uid " + str(os.geteuid())
    if shutil.which("ip") is None:
        return "no `ip` command: install iproute2"
    return None


@dataclass(frozen=True)
class Host:
    """One simulated host: its namespace and its address on the bridge."""

    name: str
    namespace: str
    address: str

    @property
    def launcher(self) -> tuple[str, ...]:
        """The command prefix that runs a program on this host."""
        return ("ip", "netns", "exec", self.namespace)


class VirtualNetwork:
    """A bridge and one namespace per host name; a context manager that removes them."""

    def __init__(self, names: Sequence[str]) -> None:
        if len(set(names)) != len(names) or not 0 < len(names) < 250:
            raise ValueError(f"need between 1 and 249 distinct host names, got {names!r}")
        self.suffix = secrets.token_hex(3)
        self.bridge = f"amb-{self.suffix}"
        self._names = tuple(names)
        self.hosts: dict[str, Host] = {}
        self.gateway = ""
        self._links: list[str] = []
        self._namespaces: list[str] = []
        self._bridge_created = False

    def __enter__(self) -> VirtualNetwork:
        reason = unavailable_reason()
        if reason is not None:
            raise NetnsUnavailable(reason)
        try:
            self._build()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()

    def _build(self) -> None:
        # The first namespace and the bridge show whether the kernel and our rights allow
        # this at all: their failure means "unavailable here", any later one is a bug.
        first = self._namespace_name(0)
        self._probe(["ip", "netns", "add", first], "cannot create a network namespace")
        self._namespaces.append(first)
        self._probe(["ip", "link", "add", self.bridge, "type", "bridge"], "cannot create a bridge")
        self._bridge_created = True
        with _subnet_lock():
            subnet = _free_subnet()
            addresses = [str(address) for address in subnet.hosts()]
            self.gateway = addresses[0]
            _ip("addr", "add", f"{self.gateway}/{subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index, name in enumerate(self._names):
            namespace = self._namespace_name(index)
            if index > 0:
                _ip("netns", "add", namespace)
                self._namespaces.append(namespace)
            link = f"amv-{self.suffix}-{index}"
            _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            self._links.append(link)
            _ip("link", "set", link, "master", self.bridge, "up")
            address = addresses[index + 1]
            _ip("-n", namespace, "addr", "add", f"{address}/{subnet.prefixlen}", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
            self.hosts[name] = Host(name=name, namespace=namespace, address=address)

    def _namespace_name(self, index: int) -> str:
        return f"am-{self.suffix}-{self._names[index]}"

    def _probe(self, argv: list[str], what: str) -> None:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise NetnsUnavailable(f"{what} ({' '.join(argv)}): {result.stderr.strip()}")

    def remove(self) -> None:
        """Delete what was created; idempotent, and it tries every step."""
        failures = []
        for link in self._links:
            failures += _delete(["ip", "link", "del", link], f'Cannot find device "{link}"')
        for namespace in self._namespaces:
            failures += _delete(["ip", "netns", "del", namespace], "No such file or directory")
        if self._bridge_created:
            failures += _delete(
                ["ip", "link", "del", self.bridge], f'Cannot find device "{self.bridge}"'
            )
        self._links.clear()
        self._namespaces.clear()
        self._bridge_created = False
        if failures:
            raise RuntimeError("could not remove the test network:\n" + "\n".join(failures))

    def leftovers(self) -> list[str]:
        """Links and namespaces of this network that still exist (none after `remove`)."""
        links = subprocess.run(
            ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True
        ).stdout
        namespaces = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout
        return sorted(set(re.findall(rf"\bam[bv]?-{self.suffix}[-\w]*", links + namespaces)))


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


def _delete(argv: list[str], gone: str) -> list[str]:
    """Run a deletion; an object that is already gone is not a failure."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode == 0 or gone in result.stderr:
        return []
    return [f"{' '.join(argv)}: {result.stderr.strip()}"]


@contextlib.contextmanager
def _subnet_lock() -> Iterator[None]:
    with _LOCK_FILE.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.77.N.0/24 that no address or route of the root namespace is in."""
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    shown += subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True, check=True
    ).stdout
    used = {int(n) for n in re.findall(rf"\b{re.escape(SUBNET_PREFIX)}\.(\d+)\.", shown)}
    free = [n for n in range(256) if n not in used]
    if not free:
        raise RuntimeError(f"every {SUBNET_PREFIX}.N.0/24 is in use")
    return ipaddress.IPv4Network(f"{SUBNET_PREFIX}.{secrets.choice(free)}.0/24")
