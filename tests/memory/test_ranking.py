"""Reciprocal rank fusion alone (no database): a row found by both rankings beats a row
found by one, equal scores go to the newer row, then the higher id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agentmesh.memory.model import KnowledgeRow
from agentmesh.memory.ranking import RRF_K, Ranked, fuse

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def row(row_id: int, minutes_ago: int | None = None) -> KnowledgeRow:
    when = None if minutes_ago is None else NOW - timedelta(minutes=minutes_ago)
    return KnowledgeRow(id=row_id, label=f"r{row_id}", value="", inserted_at=when)


def test_found_by_both_beats_found_by_one() -> None:
    a, b, c = row(1, 1), row(2, 5), row(3, 5)  # a and b tie: a is newer
    hits = fuse([Ranked(a, 0.9), Ranked(c, 0.5)], [Ranked(b, 0.3), Ranked(c, 0.1)], 3)

    assert [hit.row.id for hit in hits] == [3, 1, 2]
    both, vector_only, text_only = hits
    assert both.score == 1 / (RRF_K + 2) + 1 / (RRF_K + 2)
    assert (both.similarity, both.text_rank) == (0.5, 0.1)
    assert (vector_only.similarity, vector_only.text_rank) == (0.9, 0.0)
    assert (text_only.similarity, text_only.text_rank) == (0.0, 0.3)


def test_ties_go_to_the_newer_row_then_the_higher_id() -> None:
    older, newer, undated, same_time = row(1, 60), row(2, 1), row(3), row(4, 60)
    hits = fuse([Ranked(older, 0.9), Ranked(undated, 0.5)], [Ranked(newer, 0.2)], 10)
    assert [hit.row.id for hit in hits] == [2, 1, 3]
    hits = fuse([Ranked(older, 0.9)], [Ranked(same_time, 0.2)], 10)
    assert [hit.row.id for hit in hits] == [4, 1]


def test_k_bounds_the_hits_and_a_repeat_counts_once() -> None:
    rows = [row(n, n) for n in range(1, 6)]
    hits = fuse([Ranked(r, 1.0 - r.id / 10) for r in rows], [Ranked(rows[0], 1.0)] * 2, 2)
    assert [hit.row.id for hit in hits] == [1, 2]
    assert hits[0].score == 2 / (RRF_K + 1)
