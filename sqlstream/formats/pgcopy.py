"""Bulk transfer between Arrow and Postgres through COPY.

Into Postgres: binary COPY when the caller names the target columns' types and every one has
an exact binary encoding (:mod:`sqlstream.formats.pgbinary`, about twice as fast as CSV for
numbers and timestamps); CSV otherwise. CSV keeps types exact too: pyarrow quotes every string
and leaves NULLs unquoted-empty, which is precisely how Postgres' CSV COPY tells an empty
string from NULL.
"""

from __future__ import annotations

import io

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from sqlstream.formats.encode import encode_csv
from sqlstream.formats.pgbinary import HEADER, TRAILER, binary_encodable, binary_rows

#: rows encoded per COPY chunk: bounds the memory of one encoded piece
COPY_CHUNK_ROWS = 100_000


def copy_in(
    cur: psycopg.Cursor,
    target: sql.Composable,
    table: pa.Table,
    pg_types: list[str] | None = None,
) -> int:
    """COPY ``table`` into ``target`` (a table name, optionally with a column list).

    ``pg_types``, the Postgres types of the target columns in ``table``'s order, allows binary
    COPY; give it only where the target's types are known to be exactly these.
    """
    if table.num_rows == 0:
        return 0
    table = table.combine_chunks()
    # A queued writer sends from a thread of its own while the next chunk is encoded
    # (Nexmark q17, alternating: 3.07 -> 3.25 M events/s, medians of 9).
    if pg_types is not None and binary_encodable(table.schema, pg_types):
        statement = sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(target)
        with cur.copy(statement, writer=QueuedLibpqWriter(cur)) as copy:
            copy.write(HEADER)
            for offset in range(0, table.num_rows, COPY_CHUNK_ROWS):
                copy.write(binary_rows(table.slice(offset, COPY_CHUNK_ROWS), pg_types))
            copy.write(TRAILER)
        return table.num_rows
    statement = sql.SQL("COPY {} FROM STDIN (FORMAT csv)").format(target)
    with cur.copy(statement, writer=QueuedLibpqWriter(cur)) as copy:
        for offset in range(0, table.num_rows, COPY_CHUNK_ROWS):
            copy.write(encode_csv(table.slice(offset, COPY_CHUNK_ROWS), header=False))
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
