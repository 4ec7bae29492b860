"""The denylist's intent: programs that have the effect of a denylisted one count as it.

The denylist names programs (`rm`, `mkfs`, `poweroff`), but what it means is their effect: a
program that unlinks files, makes a file system or powers the machine off counts as the
denylisted program whatever it is called.  `INTENT_ALIASES` maps such programs to the
denylisted names they stand for, `PREFIX_ALIASES` does the same for families (`mkfs.ext4`),
and `ARGUMENT_ALIASES` for programs whose arguments decide (`systemctl poweroff`,
`telinit 0`, `fuser -k`).  A call is refused when any name it stands for is on the denylist,
so a node whose denylist leaves `rm` out may still run `unlink`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from agentmesh.node.permissions.commands import Call, Ctx, fold
from agentmesh.node.permissions.errors import Refusal, show

_POWEROFF: Final = ("poweroff", "halt", "shutdown")
_REBOOT: Final = ("reboot", "shutdown")
_PARTITION: Final = ("fdisk", "parted")

INTENT_ALIASES: Final[dict[str, tuple[str, ...]]] = {
    # deleting files
    "unlink": ("rm",),
    "srm": ("rm", "shred"),
    "wipe": ("rm", "shred"),
    "scrub": ("shred",),
    # renaming files
    **dict.fromkeys(("rename", "rename.ul", "prename", "file-rename", "perl-rename"), ("mv",)),
    # raw copies onto devices
    **dict.fromkeys(("ddrescue", "dcfldd", "dc3dd"), ("dd",)),
    # making file systems and partition tables
    **dict.fromkeys(
        ("mke2fs", "mkdosfs", "mkntfs", "mkexfatfs", "mkswap", "newfs", "mformat"), ("mkfs",)
    ),
    **dict.fromkeys(
        ("sfdisk", "cfdisk", "gdisk", "sgdisk", "cgdisk", "delpart", "addpart", "resizepart"),
        _PARTITION,
    ),
    "blkdiscard": ("wipefs",),
    # ownership and modes
    "chgrp": ("chown",),
    "setfacl": ("chmod",),
    "chattr": ("chmod",),
    # killing processes
    "killall5": ("kill", "killall"),
    "skill": ("kill", "pkill"),
    # mounting
    "systemd-mount": ("mount",),
    "systemd-umount": ("umount",),
    "fusermount": ("mount", "umount"),
    "fusermount3": ("mount", "umount"),
    "eject": ("umount",),
    # power
    "kexec": _REBOOT,
}
"""Program (folded basename) -> the denylisted names it stands for, whatever its arguments."""

PREFIX_ALIASES: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("mkfs.", ("mkfs",)),
    ("mount.", ("mount",)),
    ("umount.", ("umount",)),
)
"""Families by name prefix: `mkfs.ext4`, `mount.nfs`, `umount.udisks2`."""

# systemd verbs and units that power the machine off or restart it
_SYSTEMD_POWER: Final = {
    "poweroff": _POWEROFF,
    "halt": _POWEROFF,
    "reboot": _REBOOT,
    "soft-reboot": _REBOOT,
    "kexec": _REBOOT,
    "ctrl-alt-del": _REBOOT,
    "kill": ("kill",),
}
_INIT_LEVELS: Final = {"0": _POWEROFF, "6": _REBOOT}
_DBUS_METHODS: Final = {"poweroff": _POWEROFF, "halt": _POWEROFF, "reboot": _REBOOT}


def _systemctl(call: Call, value: str) -> tuple[str, ...]:
    """`systemctl poweroff`, `systemctl start reboot.target`, `systemd-reboot.service`..."""
    if any(c in value for c in "*?["):  # a unit pattern may match `reboot.target`
        return _REBOOT + _POWEROFF
    unit = value.removesuffix(".target").removesuffix(".service").removeprefix("systemd-")
    return _SYSTEMD_POWER.get(unit, ())


def _telinit(call: Call, value: str) -> tuple[str, ...]:
    """`telinit 0`, `init 6`: runlevels 0 and 6 power off and reboot."""
    return _INIT_LEVELS.get(value, ())


def _dbus(call: Call, value: str) -> tuple[str, ...]:
    """`busctl call ... org.freedesktop.login1.Manager PowerOff b false` and friends."""
    lowered = value.casefold()
    return tuple(n for key, names in _DBUS_METHODS.items() if key in lowered for n in names)


def _fuser(call: Call, value: str) -> tuple[str, ...]:
    """`fuser -k FILE` kills the processes using FILE."""
    if value == "--kill" or (value[:1] == "-" and value[1:2] != "-" and "k" in value):
        return ("kill",)
    return ()


ARGUMENT_ALIASES: Final[dict[str, Callable[[Call, str], tuple[str, ...]]]] = {
    "systemctl": _systemctl,
    "telinit": _telinit,
    "init": _telinit,
    "busctl": _dbus,
    "dbus-send": _dbus,
    "gdbus": _dbus,
    "qdbus": _dbus,
    "fuser": _fuser,
}
"""Programs whose arguments decide what they stand for (`systemctl poweroff`, `telinit 0`)."""


def check_intent(call: Call, ctx: Ctx) -> None:
    """Superuser mode: refuse `call` if it has the effect of a denylisted program."""
    base = call.base
    names = INTENT_ALIASES.get(base, ())
    names += next((n for prefix, n in PREFIX_ALIASES if base.startswith(prefix)), ())
    _refuse_denylisted(call, ctx, names, call.name)
    by_argument = ARGUMENT_ALIASES.get(base)
    if by_argument is None or not ctx.denylist:
        return
    for word in call.args:
        value = call.require_static(word)
        _refuse_denylisted(call, ctx, by_argument(call, value), f"{call.name} {show(value, 40)}")


def _refuse_denylisted(call: Call, ctx: Ctx, names: tuple[str, ...], via: str) -> None:
    for name in names:
        if fold(name) in ctx.denylist:
            raise Refusal(
                call.text,
                "denylisted",
                f"`{via}` has the effect of `{name}`, which is on the superuser denylist",
            )
