"""Knowledge search benchmark: HNSW against exact search, and the hybrid search, at 100,000 rows.

One run on this machine, embedded PostgreSQL 16 with pgvector, the schema of the migrations,
for each of two shapes of synthetic vectors (below):
- 100,000 `custom_knowledge` rows (80 % shared, the rest private to one of 10 users), each
  with its 768-dimension embedding in `vector_knowledge`, generated and loaded with COPY; the
  HNSW index (the migrations': vector_cosine_ops, m 16, ef_construction 128) is built after
  the load, and its build time is printed;
- HNSW search (ORDER BY embedding <=> q LIMIT 10, through the index) p50/p99 and recall@10
  against exact k-nearest-neighbour search (the same order on a sequential scan) in the same
  run, whose latency is printed beside it, at several `hnsw.ef_search` values (agentmesh's
  is `knowledge.EF_SEARCH`);
- on the first shape, the hybrid search of `KnowledgeStore.search` (the nearest visible rows
  through the index and the best by full-text rank, fused), k = 10, as one of the users,
  with the query's vector given (no API request is measured), and its two queries alone.

The vectors are synthetic (no embedding model runs here): "topic mixtures", each fact a
weighted mix of a few concepts of a topic, whose neighbourhoods are continuous as those of
text embeddings are; and "tight clusters" of 10 near-identical facts, a hard shape for a
graph index. Uniformly random vectors would be a third, unlike any embedding model's.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agentmesh.db import embedded  # noqa: E402
from agentmesh.db.connect import create_pool, ensure_database  # noqa: E402
from agentmesh.db.migrate import migrate  # noqa: E402
from agentmesh.memory import knowledge  # noqa: E402
from agentmesh.memory.embedding import DIMENSIONS, EmbeddingUnavailable, Purpose  # noqa: E402
from agentmesh.memory.knowledge import KnowledgeStore  # noqa: E402

ROWS = 100_000
USERS = [f"user{n}" for n in range(10)]
SHARED_FRACTION = 0.8
FILLER_WORDS = 2000
QUERIES = 200
EF_SEARCHES = (40, 100, knowledge.EF_SEARCH)
K = 10
SEED = 20261202

NEAREST = (
    "SELECT (metadata->>'knowledge_id')::int FROM vector_knowledge"
    " ORDER BY embedding <=> $1 LIMIT 10"
)
# The same order on a sequential scan: an expression the index cannot serve (a setting such
# as enable_indexscan would not reach a prepared statement's cached plan).
EXACT_NEAREST = (
    "SELECT (metadata->>'knowledge_id')::int FROM vector_knowledge"
    " ORDER BY (embedding <=> $1) + 0 LIMIT 10"
)
# The migrations' index (0011), built again after the load.
INDEX_PARAMETERS = "m = 16, ef_construction = 128"
INDEX = (
    "CREATE INDEX vector_knowledge_embedding_idx"
    f" ON vector_knowledge USING hnsw (embedding vector_cosine_ops) WITH ({INDEX_PARAMETERS})"
)


def random_direction(rng: random.Random) -> list[float]:
    return [rng.random() - 0.5 for _ in range(DIMENSIONS)]


def unit(values: Sequence[float]) -> list[float]:
    norm = sum(v * v for v in values) ** 0.5
    return [v / norm for v in values]


@dataclass(frozen=True)
class Fact:
    """A synthetic fact: its unit vector, and the words that carry its meaning."""

    vector: list[float]
    words: str


class TopicCorpus:
    """Facts as mixtures of concepts, like a topic model: 100 topics of 20 concepts each;
    a fact is 3 concepts of one topic and 1 of any, randomly weighted, and a direction of its
    own (weight 0.35). Facts sharing concepts are near: neighbourhoods are continuous."""

    name = "topic mixtures"
    CONCEPTS_PER_TOPIC = 20

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.concepts = [unit(random_direction(rng)) for _ in range(100 * 20)]

    def _draw(self) -> tuple[list[float], list[int]]:
        rng = self.rng
        first = rng.randrange(100) * self.CONCEPTS_PER_TOPIC
        chosen = [*rng.sample(range(first, first + self.CONCEPTS_PER_TOPIC), 3)]
        chosen.append(rng.randrange(len(self.concepts)))
        w = [rng.uniform(0.5, 1.0) for _ in chosen]
        a, b, c, d = (self.concepts[n] for n in chosen)
        r, own = rng.random, 0.35 * (12 / DIMENSIONS) ** 0.5  # a unit-length share, weighted
        return unit(
            [
                w[0] * p + w[1] * q + w[2] * s + w[3] * t + (r() - 0.5) * own
                for p, q, s, t in zip(a, b, c, d, strict=True)
            ]
        ), chosen

    def fact(self, index: int) -> Fact:
        vector, chosen = self._draw()
        return Fact(vector, " ".join(f"concept{n}" for n in chosen))

    def query(self) -> Fact:
        vector, chosen = self._draw()
        return Fact(vector, " ".join(f"concept{n}" for n in chosen[:2]))


class ClusterCorpus:
    """Tight clusters: 100 topics of 10 subjects of 10 groups of 10 facts; a vector is its
    topic's, subject's and group's directions and one of its own, weighted 1, 0.7, 0.5, 0.45.
    A query is a new point of a random group. A harder shape for a graph index."""

    name = "tight clusters"
    WEIGHTS = (1.0, 0.7, 0.5, 0.45)

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        topic_w, subject_w, group_w, _ = self.WEIGHTS
        topics = [random_direction(rng) for _ in range(100)]
        subjects = [random_direction(rng) for _ in range(100 * 10)]
        self.centres: list[list[float]] = []
        for subject_index, subject in enumerate(subjects):
            topic = topics[subject_index // 10]
            for _ in range(10):
                group = random_direction(rng)
                self.centres.append(
                    [
                        topic_w * a + subject_w * b + group_w * c
                        for a, b, c in zip(topic, subject, group, strict=True)
                    ]
                )

    def _point(self, group: int) -> Fact:
        r, own = self.rng.random, self.WEIGHTS[3]
        vector = unit([c + (r() - 0.5) * own for c in self.centres[group]])
        return Fact(vector, f"group{group}")

    def fact(self, index: int) -> Fact:
        return self._point(index // 10)

    def query(self) -> Fact:
        return self._point(self.rng.randrange(len(self.centres)))


Corpus = TopicCorpus | ClusterCorpus


def encode_vector(values: Sequence[float] | bytes) -> bytes:
    """pgvector's binary format: dimensions, a reserved int16, then the floats (bytes: that
    already, kept so for the load's 100,000 vectors)."""
    if isinstance(values, bytes):
        return values
    return struct.pack(f"!HH{len(values)}f", len(values), 0, *values)


def decode_vector(data: bytes) -> list[float]:
    dims = struct.unpack_from("!H", data)[0]
    return list(struct.unpack_from(f"!{dims}f", data, 4))


async def vector_codec(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "vector", schema="public", encoder=encode_vector, decoder=decode_vector, format="binary"
    )


class GivenEmbedder:
    """The hybrid search's queries come with their vectors: no API request is measured."""

    def __init__(self) -> None:
        self.vectors: dict[str, list[float]] = {}

    @property
    def model(self) -> str:
        return "synthetic"

    async def embed(self, text: str, *, user: str, purpose: Purpose) -> list[float]:
        if text not in self.vectors:
            raise EmbeddingUnavailable("not a benchmark query")
        return self.vectors[text]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


@dataclass(frozen=True)
class Figures:
    """One corpus's measurements."""

    loaded: float
    built: float
    index_mib: float
    index_used: bool
    exact_times: list[float]
    # ef_search -> (latencies, recall@10)
    by_ef: dict[int, tuple[list[float], float]]


def rows(corpus: Corpus, rng: random.Random) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """(custom_knowledge row, vector_knowledge row) for each fact."""
    for row_id in range(1, ROWS + 1):
        fact = corpus.fact(row_id - 1)
        user = rng.choice(USERS)
        label = f"fact {row_id}: {fact.words}"
        value = " ".join(f"w{rng.randrange(FILLER_WORDS)}" for _ in range(8))
        visibility = "shared" if rng.random() < SHARED_FRACTION else "private"
        yield (
            (row_id, label, value, [], visibility, user, "bench"),
            (user, f"{label}\n{value}", f'{{"knowledge_id": {row_id}}}', "bench",
             encode_vector(fact.vector)),
        )  # fmt: skip


async def load(conn: asyncpg.Connection, corpus: Corpus, rng: random.Random) -> float:
    """Generate the rows and COPY them in, the HNSW index dropped; returns the seconds."""
    await conn.execute("TRUNCATE custom_knowledge, vector_knowledge RESTART IDENTITY")
    await conn.execute("DROP INDEX IF EXISTS vector_knowledge_embedding_idx")
    started = time.perf_counter()
    knowledge_rows, vector_rows = zip(*rows(corpus, rng), strict=True)
    await conn.copy_records_to_table(
        "custom_knowledge",
        records=knowledge_rows,
        columns=["id", "label", "value", "tags", "visibility", "user_name", "source"],
    )
    await conn.execute("SELECT setval('custom_knowledge_id_seq', $1)", ROWS)
    await conn.copy_records_to_table(
        "vector_knowledge",
        records=vector_rows,
        columns=["user_name", "content", "metadata", "source", "embedding"],
    )
    await conn.execute("ANALYZE custom_knowledge; ANALYZE vector_knowledge")
    return time.perf_counter() - started


async def nearest(
    conn: asyncpg.Connection, vector: list[float], *, exact: bool, ef_search: int = 40
) -> tuple[list[int], float]:
    """The 10 nearest rows' ids and the query's latency."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL hnsw.ef_search = {ef_search}")
        started = time.perf_counter()
        found = await conn.fetch(EXACT_NEAREST if exact else NEAREST, vector)
        elapsed = time.perf_counter() - started
    return [row[0] for row in found], elapsed


async def measure(conn: asyncpg.Connection, corpus: Corpus, queries: list[Fact]) -> Figures:
    loaded = await load(conn, corpus, corpus.rng)
    await conn.execute("SET maintenance_work_mem = '2GB'")
    await conn.execute("SET max_parallel_maintenance_workers = 1")
    started = time.perf_counter()
    await conn.execute(INDEX)
    built = time.perf_counter() - started
    index_mib = float(
        await conn.fetchval("SELECT pg_relation_size('vector_knowledge_embedding_idx') / 1048576.0")
    )
    vectors = [query.vector for query in queries]
    # Warm the caches, as a running scheduler's would be: a scan of the table, a search
    # for each query.
    await conn.execute("SELECT count(*) FROM vector_knowledge")
    for vector in vectors:
        await nearest(conn, vector, exact=False, ef_search=max(EF_SEARCHES))
    # Both the plain nearest-rows query and the hybrid search's go through the index; the
    # exact query does not.
    hybrid_sql = knowledge.VECTOR_SEARCH.format(
        pool=knowledge.EF_SEARCH, columns=knowledge.COLUMNS, visible=knowledge.VISIBLE
    )
    plans = [
        "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN {NEAREST}", vectors[0])),
        "\n".join(
            row[0] for row in await conn.fetch(f"EXPLAIN {hybrid_sql}", "user0", vectors[0], 40)
        ),
    ]
    index_used = all("vector_knowledge_embedding_idx" in plan for plan in plans)
    exact_plan = await conn.fetch(f"EXPLAIN {EXACT_NEAREST}", vectors[0])
    assert not any("vector_knowledge_embedding_idx" in row[0] for row in exact_plan)

    truth: list[list[int]] = []
    exact_times: list[float] = []
    for vector in vectors:
        ids, elapsed = await nearest(conn, vector, exact=True)
        truth.append(ids)
        exact_times.append(elapsed)
    by_ef: dict[int, tuple[list[float], float]] = {}
    for ef_search in EF_SEARCHES:
        times, found = [], 0
        for vector, expected in zip(vectors, truth, strict=True):
            ids, elapsed = await nearest(conn, vector, exact=False, ef_search=ef_search)
            times.append(elapsed)
            found += len(set(ids) & set(expected))
        by_ef[ef_search] = (times, found / (K * len(vectors)))
    return Figures(loaded, built, index_mib, index_used, exact_times, by_ef)


async def hybrid(dsn: str, queries: list[Fact], users: list[str], rng: random.Random) -> str:
    """`KnowledgeStore.search` for each query, and its two queries' parts alone."""
    embedder = GivenEmbedder()
    texts = []
    for query in queries:
        text = f"{query.words} w{rng.randrange(FILLER_WORDS)}"
        embedder.vectors[text] = query.vector
        texts.append(text)
    pool = await create_pool(dsn, min_size=1, max_size=2)
    store = KnowledgeStore(pool, embedder)
    vector_sql = knowledge.VECTOR_SEARCH.format(
        pool=knowledge.EF_SEARCH, columns=knowledge.COLUMNS, visible=knowledge.VISIBLE
    )
    candidates = max(K * knowledge.CANDIDATES_PER_HIT, knowledge.MIN_CANDIDATES)
    searches: list[float] = []
    by_text: list[float] = []
    by_vector: list[float] = []
    methods = set()
    # Three passes over the queries, so that no measure runs on pages another just read.
    try:
        for text, user in zip(texts, users, strict=True):
            started = time.perf_counter()
            result = await store.search(text, user, K)
            searches.append(time.perf_counter() - started)
            methods.add(result.method)
            assert all(h.row.visibility == "shared" or h.row.user == user for h in result.hits)
        async with pool.acquire() as conn:
            for text, user in zip(texts, users, strict=True):
                started = time.perf_counter()
                await conn.fetch(knowledge.KEYWORD_SEARCH, user, text, candidates)
                by_text.append(time.perf_counter() - started)
            for user, query in zip(users, queries, strict=True):
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL hnsw.ef_search = {knowledge.EF_SEARCH}")
                    started = time.perf_counter()
                    await conn.fetch(vector_sql, user, query.vector, candidates)
                    by_vector.append(time.perf_counter() - started)
    finally:
        await pool.close()
    return (
        f"  hybrid search (KnowledgeStore.search, k {K}, as one of {len(USERS)} users, method"
        f" {'/'.join(sorted(methods))}): p50 {ms(percentile(searches, 0.5))},"
        f" p99 {ms(percentile(searches, 0.99))}; its parts alone: full-text top {candidates}"
        f" p50 {ms(percentile(by_text, 0.5))}, p99 {ms(percentile(by_text, 0.99))};"
        f" HNSW top {candidates} visible p50 {ms(percentile(by_vector, 0.5))},"
        f" p99 {ms(percentile(by_vector, 0.99))}"
    )


def report(corpus: Corpus, figures: Figures) -> list[str]:
    exact = figures.exact_times
    lines = [
        f"  {corpus.name}: {ROWS:,} rows generated and loaded with COPY in {figures.loaded:.1f} s;"
        f" HNSW index built in {figures.built:.1f} s ({figures.index_mib:.0f} MiB); the index"
        f" serves the nearest-rows and the hybrid search's queries:"
        f" {'yes' if figures.index_used else 'NO'}",
        f"    exact k-NN (sequential scan), {QUERIES} queries: p50 {ms(percentile(exact, 0.5))},"
        f" p99 {ms(percentile(exact, 0.99))}",
    ]
    for ef_search, (times, recall) in figures.by_ef.items():
        mark = "  (agentmesh's)" if ef_search == knowledge.EF_SEARCH else ""
        lines.append(
            f"    HNSW ef_search {ef_search:>3}: p50 {ms(percentile(times, 0.5))},"
            f" p99 {ms(percentile(times, 0.99))}, recall@10 {recall:.3f};"
            f" p50 {percentile(exact, 0.5) / percentile(times, 0.5):.0f}x exact's{mark}"
        )
    return lines


async def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="agentmesh-bench-memory-"))
    data = work / "data"
    server = embedded.start(data)
    try:
        await ensure_database(server, "agentmesh")
        await run(embedded.uri_for(server, "agentmesh"))
    finally:
        embedded.stop(data)
        shutil.rmtree(work, ignore_errors=True)


async def run(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, server_settings={"timezone": "UTC"})
    await migrate(conn)
    await vector_codec(conn)
    migrated = await conn.fetchval(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'vector_knowledge_embedding_idx'"
    )
    assert "ef_construction='128'" in migrated, f"not the migrations' index: {migrated}"
    rng = random.Random(SEED)
    load_before = os.getloadavg()[0]
    lines = []
    hybrid_line = ""
    for corpus_type in (TopicCorpus, ClusterCorpus):
        corpus = corpus_type(random.Random(rng.random()))
        queries = [corpus.query() for _ in range(QUERIES)]
        figures = await measure(conn, corpus, queries)
        lines += report(corpus, figures)
        if isinstance(corpus, TopicCorpus):
            users = [rng.choice(USERS) for _ in queries]
            hybrid_line = await hybrid(dsn, queries, users, rng)
            lines.append(hybrid_line)
    await conn.close()

    print("Knowledge search benchmark (one run, this machine, embedded PostgreSQL 16, pgvector)")
    print(
        f"  {ROWS:,} knowledge rows with {DIMENSIONS}-dimension vectors, two shapes of synthetic"
        f" vectors; HNSW {INDEX_PARAMETERS} (the migrations'), built after the load with"
        " maintenance_work_mem 2GB and 1 parallel worker"
    )
    for line in lines:
        print(line)
    print(
        f"  load average (1 min) on {os.cpu_count()} cores: {load_before:.1f} before,"
        f" {os.getloadavg()[0]:.1f} after (other work on the machine slows every figure)"
    )
    print("  aim: recall@10 >= 0.95 with p99 <= 20 ms")


if __name__ == "__main__":
    asyncio.run(main())
