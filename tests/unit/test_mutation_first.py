"""`make mutate` runs a mutant's tests: those that ran the lines it changed, or all of them."""

from __future__ import annotations

from tests.mutation.first import changed_lines, selected, time_limit


def test_a_changed_line_is_named_by_its_number_in_the_original() -> None:
    before = ["a = 1", "b = a < 2", "c = 3"]
    assert changed_lines(before, ["a = 1", "b = a <= 2", "c = 3"]) == {2}


def test_a_deleted_line_and_an_insertion_name_the_lines_around_them() -> None:
    before = ["a", "b", "c", "d"]
    assert changed_lines(before, ["a", "c", "d"]) == {2}
    assert changed_lines(before, ["a", "b", "x", "c", "d"]) == {2}


def test_an_unchanged_module_names_no_line() -> None:
    assert changed_lines(["a", "b"], ["a", "b"]) == set()


REACHED = {"2": ["quick", "slow"], "3": ["slow", "other"], "4": ["", "quick"], "5": []}


def test_the_tests_that_ran_every_changed_line_run_alone_each_once() -> None:
    assert selected({3, 2}, REACHED) == ["quick", "slow", "other"]


def test_a_line_run_at_import_or_never_seen_running_runs_every_test() -> None:
    assert selected({2, 4}, REACHED) is None  # a default value, a constant: every test
    assert selected({5}, REACHED) is None
    assert selected({9}, REACHED) is None  # not a line that runs, or never ran
    assert selected(set(), REACHED) is None


def test_a_mutant_s_tests_may_take_three_times_as_long_as_unmutated_and_30_s() -> None:
    seconds = {"quick": 1.0, "slow": 10.0, "other": 4.0}
    assert time_limit(["quick", "other"], seconds) == 30.0 + 3 * 5.0
    assert time_limit(None, seconds) == 30.0 + 3 * 15.0
