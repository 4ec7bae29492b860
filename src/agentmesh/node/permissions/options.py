"""Reading a wrapper's options from a table (`Opts`), the way getopt would."""

from __future__ import annotations

from dataclasses import dataclass

from agentmesh.node.permissions.commands import Call
from agentmesh.node.permissions.errors import Refusal, show


@dataclass(frozen=True, slots=True)
class Opts:
    """A wrapper's option syntax: short letters and long names, and which take an argument."""

    flags: str = ""
    with_arg: str = ""
    optional_arg: str = ""
    refused: str = ""
    long_flags: tuple[str, ...] = ()
    long_with_arg: tuple[str, ...] = ()
    long_optional: tuple[str, ...] = ()
    long_refused: tuple[str, ...] = ()
    numeric: bool = False  # accepts `-N` (nice)

    def long_names(self) -> tuple[str, ...]:
        return self.long_flags + self.long_with_arg + self.long_optional + self.long_refused


def unknown_option(call: Call, option: str) -> Refusal:
    return Refusal(
        call.text,
        "dynamic-command",
        f"`{show(option, 40)}` is not an option of `{call.name}` that this check knows, so "
        "it cannot be determined what it runs",
    )


def refused_option(call: Call, option: str) -> Refusal:
    return Refusal(call.text, "unsupported", f"`{call.name} {show(option, 40)}` is not supported")


def parse_options(call: Call, spec: Opts) -> tuple[int, list[tuple[str, str]]]:
    """Skip `call.args` options per `spec`; return (index of first operand, options found)."""
    args = call.args
    found: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        value = call.require_static(args[i])
        if value == "--":
            return i + 1, found
        if not value.startswith("-") or value == "-":
            return i, found
        if value.startswith("--"):
            name, eq, arg = value[2:].partition("=")
            matches = [n for n in spec.long_names() if n.startswith(name)] if name else []
            full = name if name in matches else (matches[0] if len(matches) == 1 else "")
            if not full:
                raise unknown_option(call, value)
            if full in spec.long_refused:
                raise refused_option(call, value)
            if full in spec.long_flags and eq:
                raise unknown_option(call, value)
            if full in spec.long_with_arg and not eq:
                i += 1
                if i >= len(args):
                    raise unknown_option(call, value)
                arg = call.require_static(args[i])
            found.append(("--" + full, arg))
            i += 1
            continue
        if spec.numeric and value[1:].isdigit():
            found.append(("-n", value[1:]))
            i += 1
            continue
        j = 1
        while j < len(value):
            ch = value[j]
            if ch in spec.refused:
                raise refused_option(call, "-" + ch)
            if ch in spec.with_arg:
                arg = value[j + 1 :]
                if not arg:
                    i += 1
                    if i >= len(args):
                        raise unknown_option(call, value)
                    arg = call.require_static(args[i])
                found.append(("-" + ch, arg))
                break
            if ch in spec.optional_arg:
                found.append(("-" + ch, value[j + 1 :]))
                break
            if ch not in spec.flags:
                raise unknown_option(call, value)
            found.append(("-" + ch, ""))
            j += 1
        i += 1
    return i, found
