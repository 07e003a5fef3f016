"""Grouping keys kept in a cheaper form than the query writes them.

``GROUP BY to_char(ts, 'YYYY-MM-DD')`` groups by a string that DuckDB formats once per input
row: in Nexmark q17's partial aggregate, 27 of 49 ms per 920 k bids. That string is a
one-to-one function of ``date_trunc('day', ts)``, so the aggregate groups by the truncated
timestamp instead, and formats it once per group when it projects its state (60 k groups in
that batch). The groups are the same, as formatting the truncated value can neither split a
group nor merge two.

It is one-to-one when the format's fields are exactly those down to one unit — year; year
and month; year, month and day; and so on to the second — as every field but the year is
zero-padded to two digits, so the year is what is left between the fixed parts. Only for a
``timestamp`` or ``date`` argument (a ``timestamptz`` truncates and formats in the session's
time zone, which a stored key must not depend on).

>>> import sqlglot
>>> key = sqlglot.parse_one("to_char(ts, 'YYYY-MM-DD')", read="postgres")
>>> stored, fmt = truncated_time_key(key, lambda e: "TIMESTAMP")
>>> stored.sql("duckdb"), fmt
("DATE_TRUNC('DAY', ts)", '%Y-%m-%d')
>>> truncated_time_key(sqlglot.parse_one("to_char(ts, 'YYYY-DD')", read="postgres"),
...                    lambda e: "TIMESTAMP") is None
True
"""

from __future__ import annotations

import re
from collections.abc import Callable

from sqlglot import exp

# the fields down to each unit, finest last
_UNITS = [("year", "%Y"), ("month", "%m"), ("day", "%d"), ("hour", "%H"), ("minute", "%M"), ("second", "%S")]  # fmt: skip
_TYPES = {"TIMESTAMP", "DATE"}


def truncated_time_key(
    key: exp.Expression, type_of: Callable[[exp.Expression], str]
) -> tuple[exp.Expression, str] | None:
    """(the expression to group by, the format that gives the key's value from it) for a
    ``to_char``/``strftime`` key one-to-one with a truncation of its argument; else None.
    ``type_of`` gives the DuckDB type of an expression over the aggregate's input."""
    if not isinstance(key, exp.TimeToStr) or not isinstance(key.args.get("format"), exp.Literal):
        return None
    fmt = key.args["format"].this
    fields = re.findall(r"%.", fmt)
    down_to = _UNITS[: len(fields)]
    if not fields or sorted(fields) != sorted(f for _, f in down_to):
        return None  # also for '%%', another field, or a field twice
    unit = down_to[-1][0]
    if type_of(key.this) not in _TYPES:
        return None
    return exp.TimestampTrunc(this=key.this.copy(), unit=exp.var(unit.upper())), fmt


def format_key(column: exp.Expression, fmt: str) -> exp.Expression:
    """The key's value from its stored (truncated) form."""
    return exp.TimeToStr(this=column, format=exp.Literal.string(fmt))
