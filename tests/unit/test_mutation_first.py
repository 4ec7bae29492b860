"""`make mutate` runs a mutant's tests starting with those that reach the lines it changed."""

from __future__ import annotations

from tests.mutation.first import changed_lines, reaching


def test_a_changed_line_is_named_by_its_number_in_the_original() -> None:
    before = ["a = 1", "b = a < 2", "c = 3"]
    assert changed_lines(before, ["a = 1", "b = a <= 2", "c = 3"]) == {2}


def test_a_deleted_line_and_an_insertion_name_the_lines_around_them() -> None:
    before = ["a", "b", "c", "d"]
    assert changed_lines(before, ["a", "c", "d"]) == {2}
    assert changed_lines(before, ["a", "b", "x", "c", "d"]) == {2}


def test_an_unchanged_module_names_no_line() -> None:
    assert changed_lines(["a", "b"], ["a", "b"]) == set()


def test_the_tests_of_every_changed_line_come_once_in_the_order_given() -> None:
    reached = {"2": ["quick", "slow"], "3": ["slow", "other"], "9": ["never"]}
    assert reaching({3, 2}, reached) == ["quick", "slow", "other"]
    assert reaching({5}, reached) == []
