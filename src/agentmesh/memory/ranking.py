"""Merging the two rankings of a hybrid search: reciprocal rank fusion.

Each list ranks candidates by one measure (cosine similarity, full-text rank); a candidate
scores the sum of 1 / (RRF_K + its rank) over the lists it is in. Fusion by rank, not by
value, needs no calibration between the two measures, and a row found by both beats one
found by either alone. Equal scores go to the newer row (then the higher id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from agentmesh.memory.model import KnowledgeHit, KnowledgeRow

# The constant of Cormack, Clarke and Buettcher (SIGIR 2009), where fusion works best.
RRF_K = 60
_OLDEST = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Ranked:
    """A candidate from one list, best first, with that list's measure."""

    row: KnowledgeRow
    value: float


def fuse(by_vector: Sequence[Ranked], by_text: Sequence[Ranked], k: int) -> list[KnowledgeHit]:
    """The `k` best rows of both lists, by fused score, then recency."""
    scores: dict[int, float] = {}
    rows: dict[int, KnowledgeRow] = {}
    similarity: dict[int, float] = {}
    text_rank: dict[int, float] = {}
    for ranking, measure in ((by_vector, similarity), (by_text, text_rank)):
        for position, candidate in enumerate(ranking, start=1):
            row_id = candidate.row.id
            if row_id in measure:
                continue  # a list names each row once; a repeat adds nothing
            measure[row_id] = candidate.value
            scores[row_id] = scores.get(row_id, 0.0) + 1.0 / (RRF_K + position)
            # The text list knows whether a row is embedded as well as the vector list.
            rows[row_id] = rows.get(row_id, candidate.row)
    order = sorted(
        scores,
        key=lambda row_id: (
            -scores[row_id],
            -(rows[row_id].inserted_at or _OLDEST).timestamp(),
            -row_id,
        ),
    )
    return [
        KnowledgeHit(
            rows[row_id],
            score=scores[row_id],
            similarity=similarity.get(row_id, 0.0),
            text_rank=text_rank.get(row_id, 0.0),
        )
        for row_id in order[:k]
    ]
