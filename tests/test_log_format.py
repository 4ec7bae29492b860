"""Log lines: a message, then its fields as key=value; no secret, wherever it was passed."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from agentmesh import log_format

TOKEN = "mesh-token-5f1d9c2a"
API_KEY = "AIzaSy-log-test-key-77aa"


@pytest.fixture
def lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger that writes through the agentmesh formatter into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(log_format.FieldsFormatter(log_format.FORMAT))
    logger = logging.getLogger(f"agentmesh.test.{id(buffer)}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, buffer
    finally:
        logger.removeHandler(handler)


def test_fields_follow_the_message_as_key_value(
    lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = lines
    logger.warning(
        "attempt lost",
        extra={"task_id": "t-1", "attempt": 2, "agent": "alpha-1", "reason": "lost it"},
    )
    line = buffer.getvalue().rstrip("\n")
    assert line.endswith(': attempt lost task_id=t-1 attempt=2 agent=alpha-1 reason="lost it"')


def test_a_traceback_comes_after_the_fields(lines: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = lines
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("attempt failed", extra={"task_id": "t-2"})
    first, *rest = buffer.getvalue().splitlines()
    assert first.endswith("attempt failed task_id=t-2")
    assert rest[0] == "Traceback (most recent call last):"


def test_no_secret_reaches_a_line(lines: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = lines
    log_format.redact(TOKEN, API_KEY)
    logger.info("token is %s", TOKEN)
    logger.info(f"key {API_KEY} in an f-string")
    logger.info("fields", extra={"note": f"Bearer {TOKEN}", "key": API_KEY})
    logger.info("named", extra={"password": "hunter2-not-registered", "api_key": "zzz-unseen"})
    try:
        raise ValueError(f"bad key {API_KEY}")
    except ValueError:
        logger.exception("failed")

    text = buffer.getvalue()
    for secret in (TOKEN, API_KEY, "hunter2-not-registered", "zzz-unseen"):
        assert secret not in text
    assert "password=***" in text
    assert 'note="Bearer ***"' in text


def test_a_secret_of_four_characters_is_masked_and_a_shorter_one_is_not(
    lines: tuple[logging.Logger, io.StringIO],
) -> None:
    # Shorter values would mask ordinary words; nothing given is ever a problem.
    logger, buffer = lines
    log_format.redact("q7Zx", "k9j", None, "")
    logger.info("q7Zx k9j the end")
    assert buffer.getvalue().rstrip("\n").endswith(": *** k9j the end")


def test_a_secret_inside_a_longer_one_leaves_nothing_of_the_longer(
    lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = lines
    log_format.redact("Wq8v", "Wq8vTail-of-the-longer")
    logger.info("key Wq8vTail-of-the-longer here")
    text = buffer.getvalue()
    assert "Tail-of-the-longer" not in text
    assert text.rstrip("\n").endswith(": key *** here")


def test_a_field_keeps_its_characters_when_quoted(
    lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, buffer = lines
    logger.info("named", extra={"host": "café de nuit", "note": "naïve"})
    assert buffer.getvalue().rstrip("\n").endswith(': named host="café de nuit" note=naïve')
