"""Fixtures for the memory's tests: a pool on a fresh migrated database (both servers), and
an embedder whose vectors the test chooses."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence

import asyncpg
import pytest

from agentmesh.db.connect import create_pool
from agentmesh.memory.embedding import DIMENSIONS, EmbeddingUnavailable, Purpose


@pytest.fixture
async def pool(database_uri: str) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(database_uri, min_size=1, max_size=4)
    try:
        yield created
    finally:
        await created.close()


def direction(**weights: float) -> list[float]:
    """A unit vector from weights on named axes `e0` ... `e767`, e.g. direction(e0=0.9, e1=0.1)."""
    vector = [0.0] * DIMENSIONS
    for axis, weight in weights.items():
        vector[int(axis.removeprefix("e"))] = weight
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector]


def near(cosine: float, axis: int) -> list[float]:
    """A unit vector whose cosine similarity with e0 is `cosine` (the rest along `axis`)."""
    return direction(e0=cosine, **{f"e{axis}": math.sqrt(1 - cosine * cosine)})


class ChosenEmbedder:
    """An `Embedder` that answers the vector the test chose for each text; a text it does
    not know is refused (`EmbeddingUnavailable`), as are the texts in `failing`, and every
    text when `no_capacity` is set."""

    def __init__(self, vectors: Mapping[str, Sequence[float]]) -> None:
        self.vectors = dict(vectors)
        self.failing: set[str] = set()
        self.no_capacity = False
        self.asked: list[tuple[str, str, Purpose]] = []

    @property
    def model(self) -> str:
        return "chosen-by-the-test"

    async def embed(self, text: str, *, user: str, purpose: Purpose) -> list[float]:
        self.asked.append((text, user, purpose))
        if self.no_capacity:
            raise EmbeddingUnavailable("no API key has capacity", no_capacity=True)
        if text in self.failing or text not in self.vectors:
            raise EmbeddingUnavailable(f"cannot embed {text!r}")
        return list(self.vectors[text])
