"""Printing results on a terminal, psql-style.

>>> print_table(["a", "bb"], [(1, "x"), (None, "yy")])
 a | bb
---+----
 1 | x
   | yy
(2 rows)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click


def format_value(v: Any) -> str:
    """A value as Postgres prints it in text format."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "t" if v else "f"
    if isinstance(v, datetime):
        return v.isoformat(sep=" ")
    return str(v)


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[format_value(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    click.echo(" " + " | ".join(c.center(w) if len(columns) > 1 else c.ljust(w)
                                for c, w in zip(columns, widths, strict=True)).rstrip())
    click.echo("-" + "-+-".join("-" * w for w in widths) + "-")
    for r in cells:
        click.echo(" " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    click.echo(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")


def print_result(result: Any) -> None:
    """A statement's result: its notices, and its rows when it has any."""
    for n in result.notices:
        click.echo(f"NOTICE:  {n}", err=True)
    if result.columns is not None:
        print_table([c.name for c in result.columns], result.rows)
