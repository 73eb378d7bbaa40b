"""Reading a time series from a CSV file the way people keep them.

* **Header**: the first row is a header when any of its cells is not a number.
* **Columns**: a column whose cells are mostly numbers is a value column (the series has
  one dimension per value column, in file order); any other column — a date, a timestamp,
  a name — is ignored, and reported in ``dropped``. Rows are taken in file order: a date
  column is not parsed, sorted or checked for gaps. ``columns`` picks value columns by
  header name instead.
* **Missing values** (an empty cell, ``NA``, ``NaN``, ``null``, ``None``, ``?``, and a blank
  line inside a one-column file; elsewhere blank lines are skipped): refused by
  default with the row and column named; ``fill="linear"`` interpolates between the
  neighbouring values of the column (the nearest value at either end), ``fill="previous"``
  repeats the last value seen (the first one for a leading gap).
* A stray word in a value column is an error that names its row and column.
* The delimiter is a comma, or a semicolon or tab when the first line has those and no comma.

Row numbers in messages are the file's line numbers (1 = the first line, header included).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MISSING = {"", "na", "nan", "null", "none", "?", "n/a"}
FILLS = ("none", "linear", "previous")


@dataclass
class CsvSeries:
    """A (T, D) float64 series and what was made of the file's columns."""

    values: np.ndarray
    columns: list[str]  # the value columns' names (header names, or "column N")
    dropped: list[str] = field(default_factory=list)  # columns ignored (dates, text)
    filled: int = 0  # missing cells filled (0 with fill="none")


def _number(cell: str) -> float | None:
    try:
        v = float(cell)
    except ValueError:
        return None
    return v


def _delimiter(first_line: str) -> str:
    if "," in first_line:
        return ","
    if ";" in first_line:
        return ";"
    return "\t" if "\t" in first_line else ","


def _fill(col: np.ndarray, how: str) -> np.ndarray:
    ok = ~np.isnan(col)
    idx = np.arange(len(col))
    if how == "linear":
        return np.interp(idx, idx[ok], col[ok])
    last = np.maximum.accumulate(np.where(ok, idx, -1))  # index of the last value seen
    first = int(idx[ok][0])
    return col[np.where(last >= 0, last, first)]


def _table(text: str, name: str) -> tuple[list[str], list[int], list[list[str]]]:
    """(column names, each data row's line number, the data cells padded to the widest row)."""
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"{name}: the file is empty")
    rows = [[c.strip() for c in r] for r in csv.reader(io.StringIO(text), delimiter=_delimiter(lines[0]))]
    filled = [i for i, r in enumerate(rows) if any(r)]
    if not filled:
        raise ValueError(f"{name}: the file holds no rows")
    single = max(len(r) for r in rows) == 1  # a blank line inside a one-column file is a gap
    span = range(filled[0], filled[-1] + 1)
    numbered = [(i + 1, rows[i] or [""]) for i in span if single or any(rows[i])]
    first = numbered[0][1]
    has_header = any(c.lower() not in MISSING and _number(c) is None for c in first)
    width = max(len(r) for _, r in numbered)
    header = first + [""] * (width - len(first)) if has_header else [""] * width
    body = numbered[1:] if has_header else numbered
    if not body:
        raise ValueError(f"{name}: a header and no data rows")
    cells = [[(r[j] if j < len(r) else "") for j in range(width)] for _, r in body]
    return [h or f"column {j + 1}" for j, h in enumerate(header)], [n for n, _ in body], cells


def _value_columns(
    names: list[str], cells: list[list[str]], columns: list[str] | None, name: str
) -> list[int]:
    numeric = []
    for j in range(len(names)):
        present = [row[j] for row in cells if row[j].lower() not in MISSING]
        parsed = sum(_number(c) is not None for c in present)
        numeric.append(bool(present) and parsed * 2 > len(present))
    if not columns:
        keep = [j for j in range(len(names)) if numeric[j]]
        if not keep:
            raise ValueError(f"{name}: no column holds numbers")
        return keep
    unknown = [c for c in columns if c not in names]
    if unknown:
        raise ValueError(f"{name}: no column named {', '.join(map(repr, unknown))}; the columns are {names}")
    keep = [names.index(c) for c in columns]
    bad = [names[j] for j in keep if not numeric[j]]
    if bad:
        raise ValueError(f"{name}: column {bad[0]!r} does not hold numbers")
    return keep


def parse_csv(
    text: str, name: str = "<csv>", columns: list[str] | None = None, fill: str = "none"
) -> CsvSeries:
    """Parse CSV text; ValueError with the row and column of what is wrong."""
    assert fill in FILLS, f"fill must be one of {FILLS}"
    names, line_of, cells = _table(text, name)
    keep = _value_columns(names, cells, columns, name)
    out = np.empty((len(cells), len(keep)))
    for i, row in enumerate(cells):
        for k, j in enumerate(keep):
            where = f"{name}: row {line_of[i]}, column {names[j]!r}"
            if row[j].lower() in MISSING:
                if fill == "none":
                    raise ValueError(
                        f"{where} is missing a value; fill or drop it, or pass --fill linear "
                        "(interpolate) or --fill previous (repeat the last value)"
                    )
                out[i, k] = np.nan
                continue
            v = _number(row[j])
            if v is None or not np.isfinite(v):
                raise ValueError(f"{where}: {row[j]!r} is not a finite number")
            out[i, k] = v
    filled = int(np.isnan(out).sum())
    for k in range(out.shape[1]):
        if np.isnan(out[:, k]).all():
            raise ValueError(f"{name}: column {names[keep[k]]!r} has no values")
        if filled:
            out[:, k] = _fill(out[:, k], fill)
    dropped = [names[j] for j in range(len(names)) if j not in keep and any(row[j] for row in cells)]
    return CsvSeries(out, [names[j] for j in keep], dropped, filled)


def read_csv(path: Path, columns: list[str] | None = None, fill: str = "none") -> CsvSeries:
    """``parse_csv`` of a file (``-`` is not read here; callers pass stdin's text to parse_csv)."""
    return parse_csv(Path(path).read_text(encoding="utf-8-sig"), str(path), columns, fill)
