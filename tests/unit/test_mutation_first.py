"""`make mutate` runs a mutant's tests: those that ran the lines it changed, or all of them."""

from __future__ import annotations

from tests.mutation.first import (
    changed_lines,
    selected,
    statement_lines,
    time_limit,
    within_budget,
)


def test_a_changed_line_is_named_by_its_number_in_the_original() -> None:
    before = ["a = 1", "b = a < 2", "c = 3"]
    assert changed_lines(before, ["a = 1", "b = a <= 2", "c = 3"]) == {2}


def test_a_deleted_line_and_an_insertion_name_the_lines_around_them() -> None:
    before = ["a", "b", "c", "d"]
    assert changed_lines(before, ["a", "c", "d"]) == {2}
    assert changed_lines(before, ["a", "b", "x", "c", "d"]) == {2}


def test_an_unchanged_module_names_no_line() -> None:
    assert changed_lines(["a", "b"], ["a", "b"]) == set()


REACHED = {"2": ["quick", "slow"], "3": ["slow", "other"], "4": ["", "quick"]}
SOURCE = "a = 1\nb = f(\n    a,\n    2)\nc = 3\n"
STARTS = {2: 2, 3: 2, 4: 2}


def test_the_tests_that_ran_every_changed_line_run_alone_each_once() -> None:
    assert selected({3, 2}, REACHED, {}) == ["quick", "slow", "other"]


def test_a_line_run_outside_the_tests_runs_every_test() -> None:
    assert selected({2, 4}, REACHED, {}) is None  # at import (a default value, a constant)


def test_a_line_no_test_ran_runs_no_test() -> None:
    assert selected({9}, REACHED, {}) == []


def test_a_line_inside_a_longer_statement_ran_if_its_statement_did() -> None:
    assert statement_lines(SOURCE) == {1: 1, 2: 2, 3: 2, 4: 2, 5: 5}
    assert selected({3}, {"2": ["quick"]}, statement_lines(SOURCE)) == ["quick"]
    assert selected({4}, {"2": ["quick"], "4": ["slow"]}, statement_lines(SOURCE)) == ["slow"]


def test_an_inner_statement_is_its_own() -> None:
    source = "def f():\n    x = 1\n    return x\n"
    assert statement_lines(source) == {1: 1, 2: 2, 3: 3}


def test_a_mutant_s_tests_may_take_three_times_as_long_as_unmutated_and_30_s() -> None:
    seconds = {"quick": 1.0, "slow": 10.0, "other": 4.0}
    assert time_limit(["quick", "other"], seconds) == 30.0 + 3 * 5.0
    assert time_limit(None, seconds) == 30.0 + 3 * 15.0


# a and b run the same lines; c one more; d four more, at three times the price.
RUNS = {
    "1": ["a", "b", "c", "d"],
    "2": ["a", "b"],
    "3": ["c"],
    "4": ["d"],
    "5": ["d"],
    "6": ["d"],
    "7": ["d"],
}
PRICES = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 3.0}


def test_a_budget_goes_to_the_tests_that_run_the_most_of_the_module_between_them() -> None:
    # a (2 lines a second), then d (4 new lines in 3 s), then c (1 new): b adds nothing.
    assert within_budget(["a", "b", "c", "d"], PRICES, 5.0, RUNS) == ["a", "c", "d"]
    assert within_budget(["a", "b", "c", "d"], PRICES, 4.0, RUNS) == ["a", "d"]
    assert within_budget(["b", "c"], PRICES, 1.0, RUNS) == ["b"]  # equals: the first
    assert within_budget(["d"], PRICES, 1.0, RUNS) == ["d"]  # at least one, over budget


def test_with_nothing_known_of_what_they_run_the_quickest_fit() -> None:
    seconds = {"slow": 10.0, "quick": 1.0, "other": 4.0}
    assert within_budget(["slow", "quick", "other"], seconds, 5.0) == ["quick", "other"]
    assert within_budget(None, seconds, 5.0) == ["quick", "other"]


def test_no_budget_keeps_every_test() -> None:
    seconds = {"slow": 10.0, "quick": 1.0}
    assert within_budget(["slow", "quick"], seconds, 0.0) == ["slow", "quick"]
    assert within_budget(None, seconds, 0.0) is None


def test_with_inside_first_a_line_run_inside_tests_is_theirs_alone() -> None:
    # "4" ran in "quick" and outside any test (code a test left running past its end).
    assert selected({4}, REACHED, {}, inside_first=True) == ["quick"]
    assert selected({2, 4}, REACHED, {}, inside_first=True) == ["quick", "slow"]
    assert selected({7}, {"7": [""]}, {}, inside_first=True) is None  # at import only


def test_every_test_within_a_budget_puts_those_that_run_the_module_first() -> None:
    seconds = {"unrelated": 0.5, "quick": 1.0, "slow": 10.0, "other": 4.0}
    assert within_budget(None, seconds, 5.0, REACHED) == ["quick", "other"]
