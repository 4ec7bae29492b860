"""What a node hands the processes it starts, and what it lets out of them.

Children get the node's environment minus every credential; the scrubber replaces the
secrets a node knows (the task's API key, the mesh token) in everything a task prints.
"""

from __future__ import annotations

import pytest

from agentmesh.node.environment import Scrubber, child_environment

SECRET_NAMES = [
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "AGENTMESH_TOKEN",
    "AGENTMESH_NODE_TOKEN",
    "POSTGRES_PASSWORD",
    "PGPASSWORD",
    "MYSQL_ROOT_PASSWD",
    "AWS_SECRET_ACCESS_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "github_token",
    "Api_Key",
    "DATABASE_URL",
]
PLAIN = {"HOME": "/home/u", "TERM": "xterm", "USER": "u", "DATABASE_URL_FILE": "/run/db"}


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_a_child_never_gets_a_credential(name: str) -> None:
    env = child_environment({**PLAIN, name: "s3cret-value"})

    assert name not in env
    assert "s3cret-value" not in env.values()


def test_a_child_keeps_everything_else() -> None:
    source = {**PLAIN, "PATH": "/opt/bin", "LANG": "de_DE.UTF-8", "GEMINI_API_KEY": "k" * 39}

    env = child_environment(source)

    assert env == {**PLAIN, "PATH": "/opt/bin", "LANG": "de_DE.UTF-8"}
    assert source["GEMINI_API_KEY"] == "k" * 39  # the node's own environment is untouched


def test_a_child_always_has_a_path_and_a_locale() -> None:
    env = child_environment({"HOME": "/root"})

    assert env == {"HOME": "/root", "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def test_the_node_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTMESH_TEST_MARKER", "here")
    monkeypatch.setenv("AGENTMESH_TOKEN", "mesh-token-123")

    env = child_environment()

    assert env["AGENTMESH_TEST_MARKER"] == "here"
    assert "AGENTMESH_TOKEN" not in env


def test_an_empty_source_is_not_the_node_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTMESH_TEST_MARKER", "here")

    assert child_environment({}) == {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


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
