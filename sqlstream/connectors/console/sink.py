"""The console sink: prints every batch of changes to stdout as it arrives, for debugging.

Each batch is a small psql-like table; the first column, ``op``, is ``+`` for an insert and
``-`` for a retraction (an update shows as ``-`` old row, ``+`` new row). Values print as
Postgres prints them (``t``/``f``, ``2024-01-01 00:00:00``), NULL as an empty cell, and
numbers are right-aligned.

Output is immediate (before the checkpoint), so a crash and replay prints rows again: the
sink is at-least-once.

>>> import pyarrow as pa
>>> from pathlib import Path
>>> from sqlstream.types import Column
>>> ctx = ConnectorContext("s", "", Path("."))
>>> sink = ConsoleSink(ctx, [Column("id", "bigint"), Column("name", "varchar")], {}, None)
>>> sink.write(pa.table({"id": [1, 22], "name": ["a", None], "__weight": [1, -1]}))
op | id | name
---+----+-----
+  |  1 | a
-  | 22 |
<BLANKLINE>
"""

from __future__ import annotations

import sys

import pyarrow as pa

from sqlstream.connectors.base import WEIGHT, ConnectorContext, Format, Sink
from sqlstream.connectors.options import OptionSpec
from sqlstream.errors import InvalidParameterValue
from sqlstream.formats.encode import pg_text
from sqlstream.types import Schema

_NUMERIC = ("smallint", "integer", "bigint", "real", "double precision", "numeric")


class ConsoleSink(Sink):
    """Prints changes to stdout; at-least-once; takes retractions."""

    options_spec = [
        OptionSpec(
            "max_rows",
            default="100",
            description="rows printed per batch, the rest counted ('0' = all)",
        ),
        OptionSpec("prefix", default="", description="text printed before each batch"),
    ]
    exactly_once = False
    accepts_retractions = True

    def __init__(
        self, ctx: ConnectorContext, schema: Schema, options: dict[str, str], fmt: Format | None
    ) -> None:
        super().__init__(ctx, schema, options, fmt)
        try:
            self.max_rows = int(self.options["max_rows"])
        except ValueError:
            self.max_rows = -1
        if self.max_rows < 0:
            raise InvalidParameterValue(f"sink {ctx.name}: max_rows must be an integer >= 0")
        self.prefix = self.options["prefix"]
        self.rows_written = 0

    def write(self, changes: pa.Table) -> None:
        if changes.num_rows == 0:
            return
        self.rows_written += changes.num_rows
        shown = changes
        if self.max_rows and changes.num_rows > self.max_rows:
            shown = changes.slice(0, self.max_rows)
        lines = self.render(shown)
        if shown.num_rows < changes.num_rows:
            lines.append(f"({changes.num_rows - shown.num_rows} more rows not shown)")
        if self.prefix:
            lines.insert(0, self.prefix)
        # sys.stdout looked up each time, so redirection (and pytest's capture) applies.
        sys.stdout.write("\n".join(lines) + "\n\n")
        sys.stdout.flush()

    def render(self, changes: pa.Table) -> list[str]:
        """The aligned lines (header, rule, rows) of one batch."""
        names = [c.name for c in self.schema if c.name in changes.column_names]
        if WEIGHT in changes.column_names:
            ops = ["+" if w is None or w > 0 else "-" for w in changes[WEIGHT].to_pylist()]
        else:
            ops = ["+"] * changes.num_rows
        text = pg_text(changes.select(names)) if names else changes.select([])
        columns = [["op", *ops]]
        numeric = [False]
        types = {c.name: c.type for c in self.schema}
        for name in names:
            values = ["" if v is None else v for v in text[name].to_pylist()]
            columns.append([name, *values])
            numeric.append(types[name].startswith(_NUMERIC))
        widths = [max(len(v) for v in col) for col in columns]
        lines = []
        for i in range(len(columns[0])):
            cells = []
            for col, width, right in zip(columns, widths, numeric, strict=True):
                value = col[i]
                # psql centres headers; right-aligns numbers and left-aligns everything else
                if i == 0:
                    cells.append(value.center(width))
                else:
                    cells.append(value.rjust(width) if right else value.ljust(width))
            lines.append(" | ".join(cells).rstrip())
            if i == 0:
                lines.append("-+-".join("-" * w for w in widths))
        return lines
