"""Run a program under a Landlock ruleset: only the named files may be executed, and (on
request) TCP connections only to the named ports.

This file runs on its own, inside the sandbox, before the task's program: the node passes
its text to `python3 -I -S -c`, so it imports nothing but the standard library's builtins
(no agentmesh, no site-packages) and starts in a few milliseconds.

    python3 -I -S -c "$(cat landlock_exec.py)" [--exec PATH]... [--connect PORT]... -- ARGV...

`--exec` names a file (or a directory, for everything beneath it) that may be executed; a
bare name is looked up on PATH. The interpreter each one needs is added too: the ELF
program interpreter (the dynamic loader) and a script's `#!` interpreter. Landlock checks
the right when a file is executed, so a program not named cannot run by any path, through
any wrapper (`ip vrf exec ... rm`, `xargs rm`, a copy in /tmp): execve fails with EACCES.
The restriction is inherited by every process the program starts and cannot be lifted.
With `--connect`, TCP connect() is allowed only to those ports and bind() to none.

As a script (`confined_shell`), the arguments it always applies are in PRESET, and its
own arguments follow them: the node writes such a script as the `bash` a Gemini CLI run's
shell tool finds first on PATH, so every command of the model runs under a narrower ruleset
than the CLI itself (which must be able to execute Node.js and this script).

Exit codes: 126 when the ruleset cannot be applied (the kernel lacks Landlock or an ABI
the request needs), 127 when the program cannot be executed.
"""

from __future__ import annotations

import ctypes
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing alone would double the launcher's start-up
    from typing import Literal, NoReturn

# Syscall numbers: the same in the generic table every architecture uses for new calls.
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_PR_SET_NO_NEW_PRIVS = 38
_ACCESS_FS_EXECUTE = 1 << 0
_ACCESS_NET_BIND_TCP = 1 << 0
_ACCESS_NET_CONNECT_TCP = 1 << 1
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2
# Arguments applied before the command line's own (see the docstring); one line, replaced
# as a whole when the node writes the script.
PRESET: list[str] = []


class _RulesetAttr(ctypes.Structure):
    _fields_ = (("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64))


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


class _NetPortAttr(ctypes.Structure):
    _fields_ = (("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def abi_version() -> int:
    """The kernel's Landlock ABI version, or 0 without Landlock."""
    version = _libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return max(int(version), 0)


def _fail(code: int, message: str) -> NoReturn:
    os.write(2, f"agentmesh sandbox: {message}\n".encode())
    os._exit(code)


def _which(name: str, path: str) -> str | None:
    if "/" in name:
        return name
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _interpreter(path: str) -> str | None:
    """What the kernel also executes to run `path`: its ELF interpreter or `#!` program."""
    try:
        with open(path, "rb") as file:
            head = file.read(4096)
            if head.startswith(b"#!"):
                words = head[2:].split(b"\n", 1)[0].split()
                return os.fsdecode(words[0]) if words else None
            if not head.startswith(b"\x7fELF") or head[4] != 2:  # 64-bit ELF only
                return None
            order: Literal["little", "big"] = "little" if head[5] == 1 else "big"
            phoff = int.from_bytes(head[32:40], order)
            phentsize = int.from_bytes(head[54:56], order)
            phnum = int.from_bytes(head[56:58], order)
            file.seek(phoff)
            table = file.read(phentsize * phnum)
            for index in range(phnum):
                entry = table[index * phentsize : (index + 1) * phentsize]
                if int.from_bytes(entry[0:4], order) == 3:  # PT_INTERP
                    offset = int.from_bytes(entry[8:16], order)
                    size = int.from_bytes(entry[32:40], order)
                    file.seek(offset)
                    return os.fsdecode(file.read(size).rstrip(b"\0"))
    except (OSError, IndexError):
        return None
    return None


def _executables(names: list[str], path: str) -> list[str]:
    """The paths to allow: each name resolved, and the interpreters they need."""
    found: list[str] = []
    pending = list(names)
    while pending:
        resolved = _which(pending.pop(), path)
        if resolved is None or resolved in found:
            continue
        found.append(resolved)
        if os.path.isfile(resolved) and (interpreter := _interpreter(resolved)):
            pending.append(interpreter)
    return found


def _check(result: int, what: str) -> int:
    if result < 0:
        _fail(126, f"{what} failed: {os.strerror(ctypes.get_errno())}")
    return result


def restrict(executables: list[str], connect_ports: list[int] | None) -> None:
    abi = abi_version()
    if abi < 1 or (connect_ports is not None and abi < 4):
        _fail(126, f"Landlock ABI {abi} cannot enforce this task's limits")
    attr = _RulesetAttr(_ACCESS_FS_EXECUTE, 0)
    if connect_ports is not None:
        attr.handled_access_net = _ACCESS_NET_BIND_TCP | _ACCESS_NET_CONNECT_TCP
    size = ctypes.sizeof(attr) if connect_ports is not None else 8
    ruleset = _check(
        _libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0),
        "landlock_create_ruleset",
    )
    for path in executables:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # a program this host lacks cannot be executed anyway
        rule = _PathBeneathAttr(_ACCESS_FS_EXECUTE, fd)
        _check(
            _libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0),
            f"allowing {path}",
        )
        os.close(fd)
    for port in connect_ports or ():
        port_rule = _NetPortAttr(_ACCESS_NET_CONNECT_TCP, port)
        _check(
            _libc.syscall(_ADD_RULE, ruleset, _RULE_NET_PORT, ctypes.byref(port_rule), 0),
            f"allowing port {port}",
        )
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    _check(_libc.syscall(_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    os.close(ruleset)


def main(args: list[str]) -> None:
    names: list[str] = []
    ports: list[int] | None = None
    while args and args[0] != "--":
        option, value, *args = args
        if option == "--exec":
            names.append(value)
        elif option == "--connect":
            ports = [*(ports or []), int(value)]
        else:
            _fail(126, f"unknown option {option}")
    argv = args[1:]
    if not argv:
        _fail(126, "no program given")
    path = os.environ.get("PATH", "/usr/bin:/bin")
    restrict(_executables(names, path), ports)
    try:
        os.execvp(argv[0], argv)  # noqa: S606 - the task's own argv, no shell
    except OSError as error:
        _fail(127, f"{argv[0]}: {error.strerror}")


if __name__ == "__main__":
    main([*PRESET, *sys.argv[1:]])
