"""Time expressions of fixed length: a column plus or minus intervals that always add the
same number of microseconds, so that SQL can compare epoch numbers instead of computing
timestamps row by row.

>>> epoch_us_sql('s."ts"', "ts", "timestamp", "INTERVAL '10' SECOND - -INTERVAL '10' SECOND")
'(epoch_us(s."ts") + 20000000)'
>>> epoch_us_sql('s."ts"', "ts", "timestamp", "INTERVAL '5' SECOND - INTERVAL '5' SECOND")
'epoch_us(s."ts")'
>>> epoch_us_sql('s."ts"', "ts", "timestamp", "INTERVAL '1' MONTH")
'epoch_us(s."ts" + INTERVAL \\'1\\' MONTH)'
"""

from __future__ import annotations

import duckdb
import sqlglot
from sqlglot import exp

from sqlstream.state.table import qi


def fixed_offset_us(
    con: duckdb.DuckDBPyConnection, expr: exp.Expression, column: str, column_type: str
) -> int | None:
    """The fixed microseconds an expression over a time column adds to it, or None.

    Only a plain ``TIMESTAMP`` column plus or minus intervals of fixed length qualifies (not
    months, whose length varies, nor a zone-dependent ``TIMESTAMPTZ``).

    >>> con = duckdb.connect()
    >>> e = sqlglot.parse_one("ts - INTERVAL '5 seconds'", read="postgres")
    >>> fixed_offset_us(con, e, "ts", "timestamp")
    -5000000
    >>> fixed_offset_us(con, sqlglot.parse_one("ts + INTERVAL '1 month'"), "ts", "timestamp")
    >>> fixed_offset_us(con, sqlglot.parse_one("ts - INTERVAL '1 month'"), "ts", "timestamp")
    >>> fixed_offset_us(con, sqlglot.parse_one("ts - v * INTERVAL '1 s'"), "ts", "timestamp")
    >>> fixed_offset_us(con, sqlglot.parse_one("ts - INTERVAL '4 years'"), "ts", "timestamp")
    >>> fixed_offset_us(con, sqlglot.parse_one("ts + INTERVAL '2 days'"), "ts", "timestamp")
    172800000000
    """
    if column_type.lower() != "timestamp":
        return None
    allowed = (exp.Column, exp.Identifier, exp.Interval, exp.Literal, exp.Var, exp.Add,
               exp.Sub, exp.Neg, exp.Paren)  # fmt: skip
    if any(not isinstance(n, allowed) for n in expr.walk()):
        return None
    if any(c.name != column for c in expr.find_all(exp.Column)):
        return None
    for interval in expr.find_all(exp.Interval):
        # Months vary in length, and months that cancel out still move a date by a day or
        # two at a month's end (2024-01-31 + 1 month - 1 month is 2024-01-29): no interval
        # with a month in it is fixed, whatever the probes below find (four years always
        # hold one leap day there, but not across 2100).
        try:
            ((months,),) = con.sql(
                f"SELECT datepart('year', i) * 12 + datepart('month', i) "
                f"FROM (SELECT {interval.sql('duckdb')} AS i)"
            ).fetchall()
        except duckdb.Error:
            return None
        if months:
            return None
    sql = expr.sql("duckdb")
    offsets = set()
    # A length that depends on the date otherwise differs between these probes.
    for probe in ("2000-03-15 00:00:00", "2001-02-15 00:00:00", "2031-06-15 12:00:00"):
        try:
            (offsets_row,) = con.sql(
                f"SELECT epoch_us({sql}) - epoch_us({qi(column)}) "
                f"FROM (SELECT TIMESTAMP '{probe}' AS {qi(column)})"
            ).fetchall()
        except duckdb.Error:
            return None
        offsets.add(offsets_row[0])
    return int(offsets.pop()) if len(offsets) == 1 else None


def epoch_us_sql(column_sql: str, column: str, column_type: str, shift: str | None) -> str:
    """DuckDB SQL for the epoch microseconds of ``column_sql`` (the column ``column`` of type
    ``column_type``, e.g. ``s."ts"``) plus ``shift`` (intervals, as DuckDB SQL): the column's
    epoch plus a number when the shift has a fixed length, else the timestamp arithmetic.
    Expiring a join side then costs no interval arithmetic per row: Nexmark q7's bid side,
    26 against 8 ms per 920 k bids."""
    if shift is None:
        return f"epoch_us({column_sql})"
    us = fixed_offset_us(
        duckdb.connect(), sqlglot.parse_one(f"{qi(column)} + {shift}", read="duckdb"),
        column, column_type,
    )  # fmt: skip
    if us is None:
        return f"epoch_us({column_sql} + {shift})"
    return f"(epoch_us({column_sql}) + {us})" if us else f"epoch_us({column_sql})"
