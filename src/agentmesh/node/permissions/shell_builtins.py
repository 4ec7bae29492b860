"""Bash builtins that set variables (`declare`, `read`, `printf -v`, `getopts`, ...) or
change how the shell finds and reads commands (`hash -p`, `shopt`, `set -H`)."""

from __future__ import annotations

from typing import Final

from agentmesh.node.permissions.commands import Call, Ctx, Handler, Inner, Word
from agentmesh.node.permissions.errors import Refusal, show
from agentmesh.node.permissions.options import refused_option
from agentmesh.node.permissions.variables import ASSIGNMENT, IDENT, check_variable

# aliases and history expansion run text these checks never parse; `keyword` (set -k) turns
# `cmd PATH=x` into a PATH change for the command search
UNSAFE_SHELL_OPTIONS: Final = frozenset({"expand_aliases", "history", "histexpand", "keyword"})


def _h_declare(call: Call, ctx: Ctx) -> list[Inner]:
    for word in call.args:
        match = ASSIGNMENT.match(word.raw)
        if match is not None:
            check_variable(call, ctx, match.group(1))
            continue
        value = call.require_static(word)
        if value == "--":
            continue
        if value[:1] in ("-", "+") and len(value) > 1:
            bad = set(value[1:]) - set("xrgpfFltuaA")
            if bad:
                raise refused_option(call, value)
        elif not IDENT.fullmatch(value):
            raise Refusal(
                call.text,
                "unsupported",
                f"`{call.name} {show(value, 40)}` (array subscripts and computed names) is "
                "not supported",
            )
    return []


def _check_name_argument(call: Call, ctx: Ctx, word: Word, *, assigns: bool) -> None:
    value = call.require_static(word)
    if "[" in value:
        raise Refusal(
            call.text,
            "unsupported",
            f"`{call.name}` with an array subscript (evaluated as arithmetic) is not supported",
        )
    if assigns and IDENT.fullmatch(value):
        check_variable(call, ctx, value)


def _h_read(call: Call, ctx: Ctx) -> list[Inner]:
    """`read`, `mapfile`, `readarray`, `unset`: every argument may name a variable."""
    for word in call.args:
        value = call.require_static(word)
        if call.base in ("mapfile", "readarray") and value.startswith("-") and "C" in value:
            raise refused_option(call, value)
        _check_name_argument(call, ctx, word, assigns=call.base != "unset")
    return []


def _h_printf(call: Call, ctx: Ctx) -> list[Inner]:
    args = call.args
    if args and args[0].static and args[0].value.startswith("-v"):
        if args[0].value != "-v":
            name = args[0].value[2:]
            _check_name_argument(call, ctx, Word(name, name, True), assigns=True)
        elif len(args) > 1:
            _check_name_argument(call, ctx, args[1], assigns=True)
    elif args:
        call.require_static(args[0])
    return []


def _h_named_option(option: str | None, position: int | None = None) -> Handler:
    """Builtins whose variable name follows `option` (or sits at a fixed position)."""

    def handler(call: Call, ctx: Ctx) -> list[Inner]:
        args = call.args
        if position is not None and len(args) > position:
            _check_name_argument(call, ctx, args[position], assigns=True)
        if option is not None:
            for k, word in enumerate(args[:-1]):
                if word.static and word.value == option:
                    _check_name_argument(call, ctx, args[k + 1], assigns=option != "-v")
        return []

    return handler


_h_getopts = _h_named_option(None, position=1)
_h_wait = _h_named_option("-p")
_h_test = _h_named_option("-v")


def _h_hash(call: Call, ctx: Ctx) -> list[Inner]:
    for word in call.args:
        value = call.require_static(word)
        if value.startswith("-") and "p" in value:
            raise refused_option(call, value)
    return []


def _h_shopt(call: Call, ctx: Ctx) -> list[Inner]:
    for word in call.args:
        if call.require_static(word) in UNSAFE_SHELL_OPTIONS:
            raise refused_option(call, word.value)
    return []


def _h_set(call: Call, ctx: Ctx) -> list[Inner]:
    """`set -H` / `set -o history`: history expansion (`!!`) would run text never parsed here."""
    args = call.args
    i = 0
    while i < len(args):
        value = call.require_static(args[i])
        if value in ("-", "--") or value[:1] not in ("-", "+"):
            return []
        if value[0] == "-" and ("H" in value or "k" in value):
            raise refused_option(call, value)
        if "o" in value[1:]:
            i += 1
            if i < len(args) and call.require_static(args[i]) in UNSAFE_SHELL_OPTIONS:
                raise refused_option(call, f"{value} {args[i].value}")
        i += 1
    return []


BUILTINS: Final[dict[str, Handler]] = {
    **dict.fromkeys(("declare", "typeset", "local", "export", "readonly"), _h_declare),
    **dict.fromkeys(("read", "mapfile", "readarray", "unset"), _h_read),
    "printf": _h_printf,
    "getopts": _h_getopts,
    "wait": _h_wait,
    "test": _h_test,
    "[": _h_test,
    "hash": _h_hash,
    "shopt": _h_shopt,
    "set": _h_set,
}
