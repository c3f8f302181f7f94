"""The benchmarks' Markdown tables."""

from bench import report


def test_a_table_with_no_rows_is_its_header_alone() -> None:
    # A run with one server has no ratio rows; rendering it must not fail.
    assert report.table(["C", "x"], []).splitlines() == ["| C | x |", "|---|---|"]


def test_columns_are_as_wide_as_their_widest_cell() -> None:
    lines = report.table(["C"], [[1000]]).splitlines()
    assert lines[0] == "| C     |"
    assert lines[2] == "| 1,000 |"
