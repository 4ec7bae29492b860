"""What a node hands the processes it starts, and what it lets out of them.

A task's environment is built, not inherited: nothing the node has (its token, a database
password, cloud credentials) reaches it; the scrubber replaces the secrets a node knows (the
task's API key, the mesh token) in everything a task prints.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agentmesh.node.environment import DEFAULT_PATH, Scrubber, task_environment

SECRET_NAMES = [
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "AGENTMESH_TOKEN",
    "AGENTMESH_NODE_TOKEN",
    "POSTGRES_PASSWORD",
    "PGPASSWORD",
    "AWS_SECRET_ACCESS_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "DATABASE_URL",
    "SSH_AUTH_SOCK",
    "KUBECONFIG",
]
HOME = Path("/work/task-1")


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_a_task_never_gets_what_the_node_has(name: str) -> None:
    env = task_environment(HOME, source={"PATH": "/opt/bin", name: "s3cret-value"})

    assert name not in env
    assert "s3cret-value" not in env.values()


def test_a_task_gets_exactly_the_variables_a_program_needs() -> None:
    source = {"PATH": "/opt/bin", "LANG": "de_DE.UTF-8", "TZ": "Europe/Berlin", "USER": "u"}

    env = task_environment(HOME, source=source)

    assert env == {
        "PATH": "/opt/bin",
        "LANG": "de_DE.UTF-8",
        "TZ": "Europe/Berlin",
        "HOME": str(HOME),
        "TMPDIR": "/tmp",
        "TERM": "dumb",
    }


def test_a_task_always_has_a_path_a_locale_and_its_own_home() -> None:
    env = task_environment(HOME, source={"HOME": "/root", "TERM": "xterm"})

    assert env == {
        "PATH": DEFAULT_PATH,
        "LANG": "C.UTF-8",
        "HOME": str(HOME),
        "TMPDIR": "/tmp",
        "TERM": "dumb",
    }


def test_a_gemini_run_gets_its_own_tmpdir() -> None:
    env = task_environment(HOME, tmpdir=HOME / "tmp", source={})

    assert env["TMPDIR"] == str(HOME / "tmp")


def test_an_empty_variable_is_not_inherited() -> None:
    assert task_environment(HOME, source={"PATH": "", "LANG": ""})["PATH"] == DEFAULT_PATH


def test_the_node_environment_is_the_default_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    monkeypatch.setenv("AGENTMESH_TOKEN", "mesh-token-123")

    env = task_environment(HOME)

    assert env["TZ"] == "Asia/Tokyo"
    assert "mesh-token-123" not in env.values()


# ----------------------------------------------------------------------------- the scrubber

KEY = "AIzaSyD-example-key-0123456789abcdef"


def test_every_occurrence_of_a_secret_becomes_stars() -> None:
    scrub = Scrubber(KEY)

    assert scrub(f"key={KEY}\nagain {KEY}{KEY}") == "key=***\nagain ******"


def test_every_secret_is_scrubbed() -> None:
    scrub = Scrubber(KEY, "mesh-token-xyz")

    assert scrub(f"{KEY} and mesh-token-xyz") == "*** and ***"


def test_text_without_secrets_is_unchanged() -> None:
    text = "AIzaSy is a prefix, not the key"

    assert Scrubber(KEY)(text) == text


def test_a_four_character_secret_is_scrubbed() -> None:
    assert Scrubber("abcd")("xabcdx") == "x***x"


@pytest.mark.parametrize("secret", ["", "a", "abc"])
def test_empty_and_very_short_values_are_not_treated_as_secrets(secret: str) -> None:
    # An empty "secret" would match between every character; three characters match
    # ordinary words. Neither is a credential.
    text = "abc def abcabc"

    assert Scrubber(secret, KEY)(text) == text


def test_a_scrubber_without_secrets_changes_nothing() -> None:
    assert Scrubber()("anything at all") == "anything at all"
