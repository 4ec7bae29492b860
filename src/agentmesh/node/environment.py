"""The environment a node gives the processes it starts: its own, minus every secret."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

# Names that carry credentials: the mesh token, database passwords, any API key.
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)|^DATABASE_URL$", re.I)


def child_environment(source: Mapping[str, str] | None = None) -> dict[str, str]:
    source = os.environ if source is None else source
    env = {name: value for name, value in source.items() if not _SECRET_NAME.search(name)}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
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
