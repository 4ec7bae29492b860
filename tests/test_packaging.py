"""Every package under src/ is listed in pyproject.toml, so a wheel install has all of them."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_source_package_is_listed() -> None:
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    source = {
        ".".join(init.parent.relative_to(REPO / "src").parts)
        for init in (REPO / "src").rglob("__init__.py")
    }
    assert source <= listed, f"add to [tool.setuptools] packages: {sorted(source - listed)}"
    assert {"agentmesh.v1", "agentmesh.schema"} <= listed
