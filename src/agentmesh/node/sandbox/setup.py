"""Choosing the node's sandbox at start: what the configuration asks, what the host allows."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from agentmesh.config import ConfigError, PermissionMode, Permissions, SandboxKind
from agentmesh.node.sandbox import landlock_exec
from agentmesh.node.sandbox.bubblewrap import Bubblewrap, host_view
from agentmesh.node.sandbox.model import Confinement, NoSandbox, Sandbox, UnavailableSandbox
from agentmesh.node.sandbox.programs import masked_programs

log = logging.getLogger(__name__)

LAUNCHER_C = Path(__file__).with_name("landlock_exec.c")


def choose_sandbox(
    kind: SandboxKind,
    permissions: Permissions,
    *,
    hidden: Iterable[Path | None],
    shown: Iterable[Path | None],
    build_dir: Path | None = None,
) -> Sandbox:
    """The sandbox `node.sandbox` asks for, probed on this host.

    `hidden`: what no task may see (the node's home, data directory, key and env files);
    `shown`: what runs need from inside those (the Python and the Gemini CLI installs).
    `build_dir`: where the C Landlock launcher is compiled (when a C compiler is there).
    Raises ConfigError when `bubblewrap` is asked for and does not work here.
    """
    if kind is SandboxKind.NONE:
        return NoSandbox()
    problem, sandbox = _probe_bubblewrap(permissions, hidden, shown, build_dir)
    if sandbox is not None:
        return sandbox
    if kind is SandboxKind.BUBBLEWRAP:
        raise ConfigError(f"node.sandbox is bubblewrap, and it does not work here: {problem}")
    return UnavailableSandbox(problem)


def _probe_bubblewrap(
    permissions: Permissions,
    hidden: Iterable[Path | None],
    shown: Iterable[Path | None],
    build_dir: Path | None,
) -> tuple[str, Sandbox | None]:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap is not installed (Debian: apt install bubblewrap)", None
    setpriv = shutil.which("setpriv") or "setpriv"
    if os.geteuid() == 0 and not os.path.exists(setpriv):
        return "setpriv (util-linux) is not installed: tasks cannot drop to nobody", None
    launcher = compile_launcher(build_dir) if build_dir is not None else None
    launcher_dir = launcher.parent if launcher is not None else None
    sandbox = Bubblewrap(
        bwrap,
        host_view(hidden, [*shown, Path(sys.base_prefix), launcher_dir]),
        setpriv=setpriv,
        compiled_launcher=launcher,
        masked=masked_programs(permissions.superuser.denylist),
        landlock_abi=landlock_exec.abi_version(),
    )
    with tempfile.TemporaryDirectory(prefix="agentmesh-sandbox-probe-") as workdir:
        sandbox.give(Path(workdir))
        # With Landlock, the probe applies a ruleset too (weak mode's): both must work.
        executables = ("true",) if sandbox.landlock_abi else None
        probe = sandbox.launch(
            ["true"], Confinement(PermissionMode.WEAK, Path(workdir), executables=executables)
        )
        try:
            done = subprocess.run(
                probe.argv, capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return f"bubblewrap did not run: {exc}", None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return f"bubblewrap failed: {lines[-1] if lines else f'exit {done.returncode}'}", None
    return "", sandbox


def compile_launcher(build_dir: Path) -> Path | None:
    """The C Landlock launcher, compiled once per source into `build_dir` (readable by the
    sandbox's user), or None without a C compiler or when it does not build."""
    source = LAUNCHER_C.read_bytes()
    target = build_dir / f"landlock-exec-{hashlib.sha256(source).hexdigest()[:16]}"
    if target.exists():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    build_dir.mkdir(parents=True, exist_ok=True)
    build_dir.chmod(0o755)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    try:
        subprocess.run(
            [compiler, "-O2", "-o", str(partial), str(LAUNCHER_C)],
            capture_output=True,
            timeout=120,
            check=True,
        )
        partial.chmod(0o755)
        partial.replace(target)  # atomic: nodes sharing a data directory build it at once
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("the C Landlock launcher did not build (%s): using the Python one", exc)
        partial.unlink(missing_ok=True)
        return None
    return target
