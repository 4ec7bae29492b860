"""The environment a node gives the processes it starts, and what it lets out of them.

A task's environment is built, not inherited: a few variables a program needs (PATH, HOME,
a locale, TMPDIR), taken from the node's own only where they say where things are, never
anything else the node has (its token, database password, cloud credentials). The scrubber
then replaces the secrets a node knows in everything a task prints.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Taken from the node's environment when set: where programs are, and how to show text.
INHERITED = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


def task_environment(
    home: Path, *, tmpdir: Path | None = None, source: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The whole environment of a task whose home (and working directory) is `home`."""
    source = os.environ if source is None else source
    env = {name: source[name] for name in INHERITED if source.get(name)}
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("LANG", "C.UTF-8")
    env["HOME"] = str(home)
    env["TMPDIR"] = str(tmpdir) if tmpdir is not None else "/tmp"  # noqa: S108 - the sandbox's own
    env["TERM"] = "dumb"
    return env


class Scrubber:
    """Replaces known secret values in text before it leaves the node."""

    def __init__(self, *secrets: str) -> None:
        self._secrets = [secret for secret in secrets if len(secret) >= 4]

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text
