"""Every path by which a denylisted program can be executed on this host.

Superuser mode masks each of them in the sandbox (an empty, unexecutable file in its
place), so `rm`, `/bin/rm`, `/usr/bin/rm`, a hard link to it under another name and a
multi-call binary that provides it (`busybox rm`) all fail, whatever the parser thought.
A copy made inside the sandbox copies the mask, not the program.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from agentmesh.node.permissions.intent import INTENT_ALIASES, PREFIX_ALIASES

# Where programs live on the hosts we run on (PATH may name fewer).
PROGRAM_DIRS = (
    "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin",
    "/usr/libexec", "/usr/lib/klibc/bin",
)  # fmt: skip

# Programs that can only power off or restart the machine when asked (`telinit 0`): the
# parser reads their arguments; the sandbox masks them whole. systemctl and loginctl stay
# (status, restart...): the sandbox hides the sockets they would ask systemd through, and
# its uid has no right to ask.
POWER_PROGRAMS = ("telinit", "init")
POWER_NAMES = frozenset({"poweroff", "halt", "shutdown", "reboot"})
MULTI_CALL = ("busybox", "toybox")


def masked_programs(denylist: Iterable[str], dirs: Iterable[str] = PROGRAM_DIRS) -> list[str]:
    """The real paths to mask for `denylist` (sorted): each program and what has its effect,
    under every name and link that reaches the same file, and multi-call binaries that
    provide one of them."""
    patterns = set()
    for name in denylist:
        patterns.update(same_effect(name))
    entries = list(_program_entries(dirs))
    targets: set[tuple[int, int]] = set()
    paths: set[str] = set()
    for path, name, stat in entries:
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            targets.add((stat.st_dev, stat.st_ino))
            paths.add(os.path.realpath(path))
    for path, name, stat in entries:
        linked = (stat.st_dev, stat.st_ino) in targets  # a hard link under another name
        if linked or (name in MULTI_CALL and _provides_any(path, patterns)):
            paths.add(os.path.realpath(path))
    return sorted(paths)


def same_effect(name: str) -> set[str]:
    """A denylisted name and the programs (as fnmatch patterns) that have its effect, from
    the parser's intent table (agentmesh.node.permissions.intent)."""
    patterns = {name}
    patterns.update(alias for alias, names in INTENT_ALIASES.items() if name in names)
    patterns.update(f"{prefix}*" for prefix, names in PREFIX_ALIASES if name in names)
    if name in POWER_NAMES:
        patterns.update(POWER_PROGRAMS)
    return patterns


def _program_entries(dirs: Iterable[str]) -> Iterable[tuple[str, str, os.stat_result]]:
    seen: set[str] = set()
    for directory in dirs:
        real = os.path.realpath(directory)
        if real in seen or not os.path.isdir(real):
            continue
        seen.add(real)
        with contextlib.suppress(OSError), os.scandir(real) as scan:
            for entry in scan:
                with contextlib.suppress(OSError):
                    stat = entry.stat()  # follows symlinks: the file that would run
                    if entry.is_file() and stat.st_mode & 0o111:
                        yield entry.path, entry.name, stat


def _provides_any(path: str, patterns: set[str]) -> bool:
    """Whether a multi-call binary lists one of the patterns among its applets."""
    try:
        listed = subprocess.run(
            [path, "--list"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return True  # cannot tell: mask it
    applets = {Path(applet).name for applet in listed}
    return any(fnmatch.filter(applets, pattern) for pattern in patterns) or not applets


def resolve(name: str, path: str) -> str | None:
    """A program's path as the sandbox's PATH finds it."""
    return shutil.which(name, path=path)
