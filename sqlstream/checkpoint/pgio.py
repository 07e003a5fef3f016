"""Bulk transfer between Arrow and Postgres through COPY in CSV.

CSV is the fastest path measured here (FACTS: ~0.76 s per million narrow rows) and keeps
types exact: pyarrow quotes every string and leaves NULLs unquoted-empty, which is precisely
how Postgres' CSV COPY tells an empty string from NULL.
"""

from __future__ import annotations

import io

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql


def _csv_ready(table: pa.Table) -> pa.Table:
    # Postgres CSV cannot take pyarrow's binary rendering; send bytea as hex escapes.
    cols = []
    for field, col in zip(table.schema, table.columns, strict=True):
        if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            col = pa.array(
                [None if v is None else "\\x" + v.hex() for v in col.to_pylist()], pa.string()
            )
        cols.append(col)
    return pa.table(cols, names=table.column_names)


def copy_in(cur: psycopg.Cursor, target: sql.Composable, table: pa.Table) -> int:
    """COPY ``table`` into ``target`` (a table name, optionally with a column list)."""
    if table.num_rows == 0:
        return 0
    buf = io.BytesIO()
    pacsv.write_csv(
        _csv_ready(table), buf, write_options=pacsv.WriteOptions(include_header=False)
    )
    stmt = sql.SQL("COPY {} FROM STDIN (FORMAT csv)").format(target)
    with cur.copy(stmt) as copy:
        copy.write(buf.getvalue())
    return table.num_rows


def copy_out(conn: psycopg.Connection, query: sql.Composable, schema: pa.Schema) -> pa.Table:
    """Run ``query`` through COPY TO and read the rows as Arrow with ``schema``."""
    buf = io.BytesIO()
    with conn.cursor() as cur:
        with cur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(query)) as copy:
            for chunk in copy:
                buf.write(chunk)
    if buf.tell() == 0:
        return schema.empty_table()
    buf.seek(0)
    return pacsv.read_csv(
        buf,
        read_options=pacsv.ReadOptions(column_names=schema.names),
        # a one-column row that is NULL is an empty line, which is still a row
        parse_options=pacsv.ParseOptions(ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(
            column_types=schema,
            true_values=["t"],
            false_values=["f"],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
