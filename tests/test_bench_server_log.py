"""bench/support/server_log.py reads what PostgreSQL did in the background from its log, so
that a benchmark can say what shared the machine with a phase it measured."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.support import server_log

# As PostgreSQL 16 writes them (log_autovacuum_min_duration = 0; its default prefix).
LOG = "\n".join(
    [
        "2026-12-06 14:37:55.443 UTC [9181] LOG:  checkpoint starting: time",
        "2026-12-06 14:38:02.880 UTC [9322] LOG:  automatic aggressive vacuum of table"
        ' "template1.pg_catalog.pg_class": index scans: 0',
        "\tpages: 0 removed, 14 remain, 14 scanned (100.00% of total)",
        "\tsystem usage: CPU: user: 0.00 s, system: 0.00 s, elapsed: 0.01 s",
        "2026-12-06 14:38:23.306 UTC [9325] LOG:  automatic vacuum of table"
        ' "agentmesh.public.task_events": index scans: 0',
        "\tpages: 0 removed, 1234 remain, 1234 scanned (100.00% of total)",
        "\ttuples: 100 removed, 50000 remain, 0 are dead but not yet removable",
        "\tsystem usage: CPU: user: 0.35 s, system: 0.02 s, elapsed: 2.50 s",
        "2026-12-06 14:38:23.741 UTC [9325] LOG:  automatic analyze of table"
        ' "agentmesh.public.tasks"',
        "\tavg read rate: 0.000 MB/s, avg write rate: 0.000 MB/s",
        "\tsystem usage: CPU: user: 0.40 s, system: 0.00 s, elapsed: 0.43 s",
        "2026-12-06 14:38:49.118 UTC [9181] LOG:  checkpoint complete: wrote 11636 buffers",
        "2026-12-06 14:39:55.000 UTC [9181] LOG:  checkpoint starting: time",
    ]
)


def at(clock: str) -> datetime:
    return datetime.fromisoformat(f"2026-12-06 {clock}").replace(tzinfo=UTC)


def work_between(tmp_path: Path, since: str, until: str) -> list[server_log.Work]:
    log = tmp_path / "log"
    log.write_text(LOG)
    return [w for w in server_log.read(log, "UTC") if w.overlaps(at(since), at(until))]


def test_a_vacuum_counts_from_its_start_not_from_its_log_line(tmp_path: Path) -> None:
    # The vacuum of task_events ran from 14:38:20.806 to 14:38:23.306 (2.5 s).
    found = work_between(tmp_path, "14:38:20", "14:38:21")
    assert [w.what for w in found] == ["checkpoint", "vacuum agentmesh.public.task_events"]
    assert found[1].began == at("14:38:23.306") - timedelta(seconds=2.5)
    assert [w.what for w in work_between(tmp_path, "14:38:10", "14:38:20")] == ["checkpoint"]


def test_a_checkpoint_counts_until_it_completes_or_while_it_runs(tmp_path: Path) -> None:
    assert work_between(tmp_path, "14:38:50", "14:39:50") == []
    (running,) = work_between(tmp_path, "14:40:00", "14:40:10")
    assert running.what == "checkpoint"
    assert running.ended is None


def test_the_description_names_this_databases_tables_and_counts_the_others(
    tmp_path: Path,
) -> None:
    found = work_between(tmp_path, "14:38:00", "14:38:30")
    assert server_log.describe(found, "agentmesh", at("14:38:00")) == (
        "a checkpoint (begun -5 s), vacuum task_events (2.5 s), analyze tasks (0.4 s),"
        " 1 vacuums or analyzes in other databases (0.0 s)"
    )
    assert server_log.describe([], "agentmesh", at("14:38:00")) == "nothing"


def test_a_vacuum_under_way_at_the_end_is_counted_once(tmp_path: Path) -> None:
    logged = work_between(tmp_path, "14:38:20", "14:38:21")
    seen_then = server_log.Work("vacuum agentmesh.public.task_events", at("14:38:21"), None)
    other = server_log.Work("vacuum postgres.2619", at("14:38:21"), None)
    merged = server_log.merge(logged, [seen_then, other])
    assert [w.what for w in merged] == [
        "checkpoint",
        "vacuum agentmesh.public.task_events",
        "vacuum postgres.2619",
    ]
