"""Confinement with bubblewrap (Debian's `bubblewrap`, as Flatpak and Claude Code's sandbox
use it), plus Landlock for what mounts cannot say.

Why bubblewrap: it needs no daemon and no image, starts in a few milliseconds, and gives
in one exec what a task needs from the kernel: a read-only view of the host, namespaces
(pid, ipc, uts and, when the network is off, net), no capabilities, and masks over single
files and directories. Landlock alone cannot hide files or processes; bubblewrap alone
cannot say "only these programs may be executed" (mounts are per directory, and
libraries live beside programs), so weak mode adds a Landlock ruleset inside the sandbox
(`landlock_exec.py`), which also limits TCP connections when the network is off.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agentmesh.node.environment import DEFAULT_PATH
from agentmesh.node.sandbox.model import Confinement, Launch, SandboxUnavailable

log = logging.getLogger(__name__)

# The uid and gid tasks run as when the node runs as root.
NOBODY = 65534
# util-linux's setpriv: the uid, gid and groups of nobody, no capabilities in any set, and
# no regaining them through setuid programs.
DROP_TO_NOBODY = (
    f"--reuid={NOBODY}",
    f"--regid={NOBODY}",
    "--clear-groups",
    "--inh-caps=-all",
    "--ambient-caps=-all",
    "--bounding-set=-all",
    "--no-new-privs",
)
# Sockets through which a process asks a privileged daemon to act for it (systemd, D-Bus,
# sysvinit's initctl): hidden, so that the sandbox's limits are not asked around.
DAEMON_SOCKETS = ("/run/systemd", "/run/dbus", "/run/initctl", "/var/run/dbus")
# Shared scratch space: every run gets its own, empty.
PRIVATE_DIRS = (Path("/tmp"), Path("/var/tmp"))  # noqa: S108 - hidden, not used
LAUNCHER_SOURCE = Path(__file__).with_name("landlock_exec.py")


@dataclass(frozen=True)
class HostView:
    """What the sandbox hides from the host and shows again."""

    # Hidden directories (an empty tmpfs instead) and files (an empty file instead).
    hidden: tuple[Path, ...] = ()
    # Shown again, read-only, inside hidden directories: what a run needs from them (the
    # Python that starts the Landlock launcher, the Gemini CLI's install).
    shown: tuple[Path, ...] = ()


class Bubblewrap:
    name = "bubblewrap"

    def __init__(
        self,
        bwrap: str,
        view: HostView,
        *,
        masked: Sequence[str],
        landlock_abi: int,
        setpriv: str = "setpriv",
        python: str = os.path.realpath(sys.executable),
        compiled_launcher: Path | None = None,
    ) -> None:
        self._bwrap = bwrap
        self._view = view
        self._masked = tuple(masked)
        self._landlock_abi = landlock_abi
        self._python = python
        self._launcher = LAUNCHER_SOURCE.read_text()
        # The C build where the node could compile it (a millisecond), else the Python one.
        self._launch_landlock = (
            [str(compiled_launcher)]
            if compiled_launcher is not None
            else [python, "-I", "-S", "-c", self._launcher]
        )
        self._as_root = os.geteuid() == 0
        self._setpriv = setpriv

    @property
    def landlock_abi(self) -> int:
        return self._landlock_abi

    @property
    def uid(self) -> int:
        return NOBODY if self._as_root else os.geteuid()

    def describe(self) -> str:
        landlock = f"Landlock ABI {self._landlock_abi}" if self._landlock_abi else "no Landlock"
        if self._landlock_abi and len(self._launch_landlock) > 1:
            landlock += ", Python launcher"
        user = "as nobody" if self._as_root else f"as uid {self.uid}"
        return f"bubblewrap ({landlock}; {user}; {len(self._masked)} denylisted paths masked)"

    def give(self, path: Path) -> None:
        """The directory itself, not what is in it: a configured working directory may be
        large, and what the user put there stays theirs (the task may still replace it)."""
        if self._as_root:
            os.chown(path, NOBODY, NOBODY)

    def launch(self, argv: Sequence[str], confinement: Confinement) -> Launch:
        command = [self._bwrap, *self.options(confinement), "--"]
        if self._as_root:
            # bubblewrap runs as root (so it can show paths only root may reach, such as a
            # Python under /root) and the run itself as nobody, without capabilities.
            command += [self._setpriv, *DROP_TO_NOBODY, "--"]
        landlock = self._landlock_args(confinement)
        if landlock:
            command += [*self._launch_landlock, *landlock, "--"]
        log.debug("confined: %s", shlex.join(command))
        command += argv
        return Launch(tuple(command))

    def confined_shell(self, directory: Path, executables: Sequence[str]) -> Path | None:
        """Write `directory/bash`: bash under a Landlock ruleset that lets it execute only
        `executables`; put `directory` first on PATH and mount it read-only."""
        real = shutil.which("bash", path=DEFAULT_PATH)
        if real is None or not self._landlock_abi:
            return None
        preset = [arg for name in (real, *executables) for arg in ("--exec", name)]
        script = self._launcher.replace(
            "\nPRESET: list[str] = []\n", f"\nPRESET: list[str] = {[*preset, '--', real]!r}\n"
        )
        directory.mkdir(parents=True, exist_ok=True)
        wrapper = directory / "bash"
        wrapper.write_text(f"#!{self._python} -IS\n{script}")
        wrapper.chmod(0o755)
        return directory

    def options(self, confinement: Confinement) -> list[str]:
        """bubblewrap's options for a confinement; later mounts cover earlier ones."""
        # Not root: an unprivileged user namespace, with no nested ones.
        user = [] if self._as_root else ["--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
        options = [
            "--die-with-parent",
            "--new-session",
            *user,
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
        ]
        if not confinement.network and not confinement.connect_ports:
            options.append("--unshare-net")
        hidden = (*PRIVATE_DIRS, *self._view.hidden, *map(Path, DAEMON_SOCKETS))
        hidden_dirs = []
        for path in dict.fromkeys(p.resolve() for p in hidden):  # bwrap mounts real paths
            options += _hide(path)
            if path.is_dir():
                hidden_dirs.append(path)
        for path in self._view.shown:
            # bubblewrap would make the directories leading to it as closed as the host's
            # (a 0700 /root/.pyenv): open ones, so that the sandbox's user can reach it.
            cover = next((h for h in hidden_dirs if path.is_relative_to(h)), None)
            if cover is not None:
                for between in reversed(path.relative_to(cover).parents[:-1]):
                    options += ["--perms", "0755", "--dir", str(cover / between)]
            options += ["--ro-bind", str(path), str(path)]
        if confinement.executables is None:
            for program in self._masked:
                options += ["--ro-bind", "/dev/null", program]
        for path in (confinement.workdir, *confinement.writable):
            options += ["--bind", str(path), str(path)]
        for path in confinement.read_only:  # over what the run may write
            options += ["--ro-bind", str(path), str(path)]
        options += ["--chdir", str(confinement.workdir)]
        return options

    def _landlock_args(self, confinement: Confinement) -> list[str]:
        limited_network = not confinement.network and confinement.connect_ports
        if confinement.executables is None and not limited_network:
            return []
        if not self._landlock_abi:
            raise SandboxUnavailable(
                f"{confinement.mode} mode needs Landlock (limits on what may be executed or"
                " connected to), and this kernel has none"
            )
        args: list[str] = []
        for program in confinement.executables or ():
            args += ["--exec", program]
        if confinement.executables is None:
            args += ["--exec", "/"]  # anything the mounts leave executable
        if limited_network:
            if self._landlock_abi < 4:
                raise SandboxUnavailable(
                    f"the network is off in {confinement.mode} mode, and this kernel's"
                    f" Landlock (ABI {self._landlock_abi}) cannot limit connections"
                )
            for port in confinement.connect_ports:
                args += ["--connect", str(port)]
        return args


def _hide(path: Path) -> list[str]:
    if path.is_dir():
        return ["--tmpfs", str(path)]
    if path.exists():
        return ["--ro-bind", "/dev/null", str(path)]
    return []


def host_view(hidden: Iterable[Path | None], shown: Iterable[Path | None]) -> HostView:
    """A view hiding `hidden` and showing `shown` again where it lies inside them.

    A shown path below a directory others may not enter (a Python under /root, mode 0700)
    would stay out of the sandbox user's reach: that directory is hidden too (an empty one
    in its place, which anyone may enter), and the path shown inside it."""
    shown_paths = [p.resolve() for p in shown if p is not None and p.exists()]
    closed = [_closed_ancestor(p) for p in shown_paths]
    hidden_paths = tuple(
        dict.fromkeys(
            [p.resolve() for p in hidden if p is not None and p.exists()]
            + [c for c in closed if c is not None]
        )
    )
    covered = (*hidden_paths, *PRIVATE_DIRS)
    inside = [p for p in shown_paths if any(p.is_relative_to(h) for h in covered)]
    return HostView(hidden_paths, tuple(dict.fromkeys(inside)))


def _closed_ancestor(path: Path) -> Path | None:
    """The outermost directory above `path` that others may not enter, if any."""
    for ancestor in reversed(path.parents):
        try:
            if not os.stat(ancestor).st_mode & 0o001:
                return ancestor
        except OSError:
            return None
    return None
