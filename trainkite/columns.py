"""How a table's columns are found, one rule for training's query result and for `predict --input`: names compare
ignoring case, as SQL compares them (DuckDB, Athena), and a CSV header line splits at the delimiters DuckDB's sniffer
finds. Plain standard library: the contracts' floor."""

from __future__ import annotations

import csv
from collections.abc import Iterator

# The delimiters DuckDB's sniffer finds in a CSV, in the order a header line is tried.
DELIMITERS = (",", ";", "\t", "|")


def same_name(names: list[str], wanted: str) -> list[str]:
    """The names that are `wanted` to SQL: equal ignoring letter case."""
    return [n for n in names if n.lower() == wanted.lower()]


def header_splits(line: str, delimiters: tuple[str, ...] = DELIMITERS) -> Iterator[tuple[str, list[str]]]:
    """(delimiter, fields) of a header line split as a standard CSV line (quoted fields kept whole) at each
    delimiter in turn."""
    for delim in delimiters:
        yield delim, next(csv.reader([line], delimiter=delim), [])
