"""Weak mode: options that turn a read-only program into one that writes or reaches further.

An allowlisted program is allowed for what it usually does: `curl URL` prints a page, `ip addr`
shows addresses, `date` prints the time.  Some of their options do something else: `curl -o`
overwrites a file, `curl file:///proc/1/environ` reads a local secret, `ip link set` and
`date -s` change the machine.  `WEAK_EFFECTS` reads those programs' options and refuses such
calls with rule ``writes-files``, ``local-access`` or ``changes-system``.  Each reader is
strict where it is unsure: an option it does not know is taken as a flag, so its argument is
still checked as a URL or an operand.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from agentmesh.node.permissions.commands import Call
from agentmesh.node.permissions.errors import Refusal, show

_WEB_SCHEMES: Final = frozenset({"http", "https", "ftp", "ftps", "ws", "wss"})
_SCHEME: Final = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.-]*):")


def _refuse(call: Call, rule: str, what: str, why: str) -> Refusal:
    return Refusal(
        call.text, rule, f"`{call.name} {show(what, 40)}` {why}, which weak mode does not allow"
    )


def _writes(call: Call, what: str) -> Refusal:
    return _refuse(call, "writes-files", what, "writes files")


def _local(call: Call, what: str) -> Refusal:
    return _refuse(call, "local-access", what, "reads local files or sockets")


def _changes(call: Call, what: str) -> Refusal:
    return _refuse(call, "changes-system", what, "changes the system")


def _check_url(call: Call, url: str, *, globbing: bool) -> None:
    """A URL must be a web URL (or have no scheme); `file:`, `dict:`, `gopher:`... are refused,
    and so are curl's URL patterns (`{file,http}://...`) unless globbing is off."""
    match = _SCHEME.match(url)
    if match is not None and "//" in url[match.end() : match.end() + 2]:
        if match.group(1).casefold() not in _WEB_SCHEMES:
            raise _local(call, url)
    elif match is not None and match.group(1).casefold() == "file":
        raise _local(call, url)
    if globbing and any(c in url for c in "{}[]"):
        raise _refuse(
            call, "local-access", url, "expands a URL pattern whose scheme cannot be checked"
        )


@dataclass(frozen=True, slots=True)
class _Downloader:
    """A downloader's options: which write files, which read local files, which take a value
    that may name a local file (`-d @FILE`), and which short letters take an argument."""

    writes_long: tuple[str, ...]
    writes_short: str
    local_long: tuple[str, ...]
    local_short: str
    valued_long: dict[str, Callable[[str], str | None]]  # option -> rule its value breaks
    valued_short: dict[str, str]  # letter -> long name in valued_long
    with_arg: str  # short letters that take an argument (the rest of the cluster or next word)
    long_with_arg: tuple[str, ...]  # other long options whose next word is not a URL
    url_options: tuple[str, ...] = ()


_LOCAL: Final = "local-access"
_WRITES: Final = "writes-files"


def _at_file(value: str) -> str | None:
    return _LOCAL if value.startswith("@") else None


def _any_at(value: str) -> str | None:
    return _LOCAL if "@" in value else None


def _form_file(value: str) -> str | None:
    return _LOCAL if "=@" in value or "=<" in value else None


def _cookie_file(value: str) -> str | None:
    return _LOCAL if "=" not in value else None  # without `=` the value names a cookie file


def _write_out_file(value: str) -> str | None:
    if "%output{" in value:  # `-w '%output{FILE}...'` writes the rest to FILE
        return _WRITES
    return _at_file(value)


_CURL: Final = _Downloader(
    writes_long=(
        "output", "remote-name", "remote-name-all", "output-dir", "create-dirs", "dump-header",
        "cookie-jar", "trace", "trace-ascii", "trace-config", "stderr", "libcurl", "etag-save",
        "hsts", "alt-svc", "remote-header-name", "ssl-sessions",
    ),
    writes_short="oOcDJ",
    local_long=(
        "config", "upload-file", "netrc-file", "proto-default", "unix-socket",
        "abstract-unix-socket", "etag-compare",
    ),
    local_short="KT",
    valued_long={
        "data": _at_file, "data-ascii": _at_file, "data-binary": _at_file,
        "data-urlencode": _any_at, "json": _at_file, "form": _form_file,
        "header": _at_file, "proxy-header": _at_file, "cookie": _cookie_file,
        "write-out": _write_out_file, "variable": _any_at, "url-query": _any_at,
    },
    valued_short={"d": "data", "F": "form", "H": "header", "b": "cookie", "w": "write-out"},
    with_arg="AbcCdDeEFHKmoPQrtTuUwxXyYz",
    long_with_arg=(
        "user-agent", "continue-at", "referer", "cert", "max-time", "ftp-port", "quote", "range",
        "telnet-option", "user", "proxy-user", "proxy", "request", "speed-time", "speed-limit",
        "time-cond", "connect-timeout", "retry", "retry-delay", "retry-max-time", "max-redirs",
        "max-filesize", "limit-rate", "resolve", "connect-to", "interface", "dns-servers",
        "cacert", "capath", "key", "key-type", "cert-type", "ciphers", "oauth2-bearer",
        "aws-sigv4", "preproxy", "noproxy", "proto", "proto-redir", "compressed-ssh",
    ),
    url_options=("url",),
)  # fmt: skip


def _curl(call: Call) -> None:
    _check_downloader(call, _CURL, globbing=True)


_WGET: Final = _Downloader(
    writes_long=(
        "output-file", "append-output", "directory-prefix", "force-directories", "save-cookies",
        "recursive", "mirror", "page-requisites", "background", "warc-file", "rejected-log",
        "hsts-file", "convert-links", "backup-converted", "timestamping", "continue",
    ),
    writes_short="oaPxrmpbkKNc",
    local_long=("input-file", "load-cookies", "post-file", "body-file", "config"),
    local_short="i",
    valued_long={},
    valued_short={},
    with_arg="oaiBetOTwQPlARDXIUn",
    long_with_arg=(
        "tries", "timeout", "wait", "quota", "level", "accept", "reject", "domains",
        "exclude-directories", "include-directories", "user-agent", "base", "header",
        "user", "password", "method", "body-data", "post-data", "limit-rate", "referer",
    ),
)  # fmt: skip


def _wget(call: Call) -> None:
    """wget saves what it downloads unless told to print it (`-O -`) or only to look
    (`--spider`)."""
    _check_downloader(call, _WGET, globbing=False)
    values = [call.require_static(w) for w in call.args]
    to_stdout = "--spider" in values
    for k, value in enumerate(values):
        short = value.startswith("-") and not value.startswith("--")
        if short and "O" in value:
            document = value[value.index("O") + 1 :] or "".join(values[k + 1 : k + 2])
        elif value.startswith("--output-doc"):
            document = value.partition("=")[2] or "".join(values[k + 1 : k + 2])
        else:
            continue
        if document != "-":
            raise _writes(call, value)
        to_stdout = True
    if not to_stdout and any(not v.startswith("-") for v in values):
        raise _writes(call, "URL")


def _check_downloader(call: Call, spec: _Downloader, *, globbing: bool) -> None:
    args = [call.require_static(w) for w in call.args]
    globoff = not globbing or any(a in ("-g", "--globoff") for a in args)
    i = 0
    while i < len(args):
        value = args[i]
        i += 1
        if value.startswith("--") and len(value) > 2:
            name, eq, attached = value[2:].partition("=")
            if name.startswith("no-"):
                continue

            def known(options: tuple[str, ...] | list[str], name: str = name) -> list[str]:
                return [o for o in options if o.startswith(name)]  # any unambiguous prefix

            if known(spec.writes_long):
                raise _writes(call, value)
            if known(spec.local_long):
                raise _local(call, value)
            valued = known(list(spec.valued_long))
            takes = valued or known(spec.url_options) or known(spec.long_with_arg)
            if takes and not eq:
                attached = args[i] if i < len(args) else ""
                i += 1
            for option in valued:
                _refuse_value(call, spec.valued_long[option](attached), f"{value} {attached}")
            if known(spec.url_options):
                _check_url(call, attached, globbing=not globoff)
            continue
        if value.startswith("-") and len(value) > 1:
            for j, letter in enumerate(value[1:], start=2):
                if letter in spec.writes_short:
                    raise _writes(call, value)
                if letter in spec.local_short:
                    raise _local(call, value)
                if letter in spec.with_arg:
                    attached = value[j:]
                    if not attached:
                        attached = args[i] if i < len(args) else ""
                        i += 1
                    long = spec.valued_short.get(letter)
                    if long is not None:
                        rule = spec.valued_long[long](attached)
                        _refuse_value(call, rule, f"-{letter} {attached}")
                    break
            continue
        _check_url(call, value, globbing=not globoff)


def _refuse_value(call: Call, rule: str | None, what: str) -> None:
    if rule == _WRITES:
        raise _writes(call, what)
    if rule == _LOCAL:
        raise _local(call, what)


def _refuse_all(call: Call) -> None:
    """Downloaders that always save files (`aria2c`, `axel`)."""
    raise _writes(call, "URL")


_HTTPIE_ITEM_FILE: Final = re.compile(r"^[^=:@]*(?::=@|=@|@)")


def _httpie(call: Call) -> None:
    """HTTPie and xh: `-d`/`--download`, `-o`/`--output` and `--session` write files; request
    items `field@FILE`, `field=@FILE`, `field:=@FILE` read them."""
    for word in call.args:
        value = call.require_static(word)
        if value.startswith("--"):
            name = value[2:].partition("=")[0]
            if name and any(o.startswith(name) for o in ("download", "output", "session")):
                raise _writes(call, value)
        elif value.startswith("-") and len(value) > 1:
            if "d" in value or "o" in value:
                raise _writes(call, value)
        elif _HTTPIE_ITEM_FILE.match(value):
            raise _local(call, value)
        else:
            _check_url(call, value, globbing=False)


_IP_CHANGES: Final = (
    "add", "append", "change", "chg", "del", "delete", "deleteall", "flush", "replace",
    "prepend", "set", "save", "restore", "attach", "test", "update", "allocspi",
)  # fmt: skip
_IP_EXEC: Final = frozenset({"e", "ex", "exe", "exec"})


def _ip(call: Call) -> None:
    """`ip OBJECT [show|list|get ...]` only: ip accepts any prefix of a command (`ip l s` is
    `ip link set`), so a word that may be a changing command is refused.  What `ip netns exec`
    runs is checked as a program of its own."""
    words = [call.require_static(w) for w in call.args]
    operands = [w for w in words if not w.startswith("-")]
    for value in operands[1:]:
        if value in _IP_EXEC:
            return
        if any(verb.startswith(value) for verb in _IP_CHANGES):
            raise _changes(call, value)


def _date(call: Call) -> None:
    """`date -s STRING`, `date --set=STRING` and `date MMDDhhmm` set the clock."""
    args = call.args
    i = 0
    while i < len(args):
        value = call.require_static(args[i])
        i += 1
        if value.startswith("--"):
            name = value[2:].partition("=")[0]
            if name and "set".startswith(name):
                raise _changes(call, value)
            if name and any(o.startswith(name) for o in ("date", "file", "reference")):
                i += 0 if "=" in value else 1
        elif value.startswith("-") and len(value) > 1:
            for j, letter in enumerate(value[1:], start=2):
                if letter == "s":
                    raise _changes(call, value)
                if letter in "dfr":
                    i += 0 if value[j:] else 1
                    break
                if letter == "I":
                    break
        elif not value.startswith("+"):
            raise _changes(call, value)


def _hostname(call: Call) -> None:
    for word in call.args:
        value = call.require_static(word)
        if (
            not value.startswith("-")
            or value in ("-F", "-b")
            or value.startswith(("--file", "--boot", "--fi", "--b"))
        ):
            raise _changes(call, value)


def _sort(call: Call) -> None:
    for word in call.args:
        value = call.require_static(word)
        if value == "--":
            return
        if value.startswith("--o") and "--output".startswith(value.partition("=")[0]):
            raise _writes(call, value)
        if value[:1] == "-" and value[1:2] != "-":
            for letter in value[1:]:
                if letter == "o":
                    raise _writes(call, value)
                if letter in "kStT":  # take an argument: the rest is not options
                    break


def _options_refused(
    letters: str, longs: tuple[str, ...], refusal: Callable[[Call, str], Refusal]
) -> Callable[[Call], None]:
    def check(call: Call) -> None:
        for word in call.args:
            value = call.require_static(word)
            if value.startswith("--"):
                name = value[2:].partition("=")[0]
                if name and any(option.startswith(name) for option in longs):
                    raise refusal(call, value)
            elif value[:1] == "-" and any(c in letters for c in value[1:]):
                raise refusal(call, value)

    return check


def _sysctl(call: Call) -> None:
    _options_refused("wpf", ("write", "load", "system"), _changes)(call)
    for word in call.args:
        if "=" in word.value and not word.value.startswith("-"):
            raise _changes(call, word.value)


WEAK_EFFECTS: Final[dict[str, Callable[[Call], None]]] = {
    "curl": _curl,
    "wget": _wget,
    "wget2": _wget,
    "aria2c": _refuse_all,
    "axel": _refuse_all,
    "http": _httpie,
    "https": _httpie,
    "xh": _httpie,
    "xhs": _httpie,
    "ip": _ip,
    "date": _date,
    "hostname": _hostname,
    "sort": _sort,
    "sysctl": _sysctl,
    "dmesg": _options_refused(
        "cCnDE", ("clear", "read-clear", "console-level", "console-off", "console-on"), _changes
    ),
    "tcpdump": _options_refused("wW", (), _writes),
}
"""Program (folded basename) -> a check that refuses its writing or far-reaching calls."""


def check_weak_effects(call: Call) -> None:
    """Weak mode: refuse `call` if its options make it write files, read local files through a
    URL, or change the system."""
    check = WEAK_EFFECTS.get(call.base)
    if check is not None:
        check(call)
