"""CSV series as people keep them: headers, dates, several columns, gaps, stray text."""

from __future__ import annotations

import numpy as np
import pytest

from models.data.csvseries import parse_csv


def test_a_header_a_date_column_and_two_value_columns() -> None:
    text = "date,sales,visits\n2024-01-01,10,100\n2024-01-02,12.5,90\n2024-01-03,11,95\n"
    s = parse_csv(text)
    np.testing.assert_array_equal(s.values, [[10, 100], [12.5, 90], [11, 95]])
    assert s.columns == ["sales", "visits"] and s.dropped == ["date"] and s.filled == 0


def test_no_header_and_a_single_column() -> None:
    s = parse_csv("1\n2\n3.5\n")
    assert s.values.shape == (3, 1) and s.columns == ["column 1"]


def test_semicolons_and_picking_columns_by_name() -> None:
    s = parse_csv("t;a;b\n1;2;3\n2;4;6\n", columns=["b"])
    np.testing.assert_array_equal(s.values, [[3], [6]])
    with pytest.raises(ValueError, match="no column named 'c'"):
        parse_csv("t;a;b\n1;2;3\n", columns=["c"])


def test_a_missing_value_is_refused_with_its_row_and_column() -> None:
    text = "date,y\nd1,1\nd2,\nd3,3\n"
    with pytest.raises(ValueError, match=r"row 3, column 'y' is missing a value.*--fill linear"):
        parse_csv(text, "my.csv")
    with pytest.raises(ValueError, match="row 3, column 'y'"):
        parse_csv("date,y\nd1,1\nd2,NA\nd3,3\n", "my.csv")


def test_gaps_filled_linearly_or_with_the_previous_value() -> None:
    text = "y\nNaN\n1\n\n\n4\nNA\n"
    lin = parse_csv(text, fill="linear")
    np.testing.assert_allclose(lin.values[:, 0], [1, 1, 2, 3, 4, 4])
    prev = parse_csv(text, fill="previous")
    np.testing.assert_allclose(prev.values[:, 0], [1, 1, 1, 1, 4, 4])
    assert lin.filled == prev.filled == 4


def test_stray_text_in_a_value_column_names_the_cell() -> None:
    text = "y\n" + "\n".join(str(i) for i in range(10)) + "\noops\n"
    with pytest.raises(ValueError, match=r"row 12, column 'y': 'oops' is not a finite number"):
        parse_csv(text)


def test_no_numbers_at_all_is_refused() -> None:
    with pytest.raises(ValueError, match="no column holds numbers"):
        parse_csv("a,b\nx,y\n")
