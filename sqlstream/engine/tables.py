"""TABLEs: relations written with INSERT, UPDATE and DELETE, durable in Postgres.

A table lives in three places:

- ``sqlstream_tables."<name>"`` in the catalog database: its current rows (the primary key,
  or a hidden ``_row_id`` when it has none, as in Postgres duplicate rows are allowed then);
- ``sqlstream_tables."<name>__log"``: its change log (``seq``, ``__weight``, the columns);
- a DuckDB table with the current rows, which ``SELECT`` and new views read.

A statement's changes are computed in DuckDB, then written to both Postgres tables in one
transaction — the statement is acknowledged only once that commits — and then applied to
DuckDB. Views read a table like a source: a :class:`TableLogSource` follows the log from an
offset (``seq``) that checkpoints store, so a view recovered from a checkpoint replays
exactly the changes it had not yet seen. The log is trimmed at checkpoints below the
smallest offset still needed.
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
import psycopg
import pyarrow as pa
from psycopg import sql
from sqlglot import exp

from sqlstream.connectors.base import WEIGHT, ConnectorContext, Format, Source, SourceBatch
from sqlstream.errors import (
    DataException,
    FeatureNotSupported,
    SqlStreamError,
    UndefinedColumn,
    UndefinedTable,
)
from sqlstream.formats.pgcopy import copy_in, copy_out
from sqlstream.state.table import qi
from sqlstream.types import Schema, arrow_schema, duckdb_type

PG_SCHEMA = "sqlstream_tables"
ROW_ID = "_row_id"


class UniqueViolation(SqlStreamError):
    sqlstate = "23505"


class NotNullViolation(SqlStreamError):
    sqlstate = "23502"


def duckdb_error(e: duckdb.Error) -> SqlStreamError:
    """A DuckDB error as the SQLSTATE a Postgres client expects."""
    text = str(e).split("\n")[0]
    if isinstance(e, duckdb.CatalogException):
        return UndefinedTable(text)
    if isinstance(e, duckdb.BinderException):
        return UndefinedColumn(text)
    if isinstance(e, duckdb.ConversionException | duckdb.InvalidInputException):
        return DataException(text, sqlstate="22P02")
    if isinstance(e, duckdb.ParserException):
        return SqlStreamError(text, sqlstate="42601")
    return SqlStreamError(text)


class Table:
    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        conn: psycopg.Connection,
        name: str,
        schema: Schema,
        primary_key: list[str],
    ) -> None:
        self.con = con
        self.conn = conn
        self.name = name
        self.schema = schema
        self.primary_key = primary_key
        self.key = primary_key or [ROW_ID]
        self.duck = qi(f"tbl_{name}")
        self.pg = sql.Identifier(PG_SCHEMA, name)
        self.pg_log = sql.Identifier(PG_SCHEMA, f"{name}__log")
        self._next_id = 0
        unknown = [k for k in primary_key if k not in self.names]
        if unknown:
            raise UndefinedColumn(f'column "{unknown[0]}" named in key does not exist')

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.schema]

    @property
    def stored(self) -> list[tuple[str, str]]:
        """(name, DuckDB type) of the stored columns, hidden row id first when there is one."""
        cols = [(c.name, duckdb_type(c.type)) for c in self.schema]
        return cols if self.primary_key else [(ROW_ID, "BIGINT"), *cols]

    # -- life cycle -----------------------------------------------------------------------

    def create_duck(self) -> None:
        cols = ", ".join(f"{qi(n)} {t}" for n, t in self.stored)
        self.con.execute(f"CREATE OR REPLACE TABLE {self.duck} ({cols})")
        self.con.execute(
            f"CREATE OR REPLACE VIEW {qi(self.name)} AS "
            f"SELECT {', '.join(qi(n) for n in self.names)} FROM {self.duck}"
        )

    def create(self, cur: psycopg.Cursor) -> None:
        from sqlstream.types import from_duckdb

        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(PG_SCHEMA)))
        cols = [
            sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(from_duckdb(t)))
            for n, t in self.stored
        ]
        pk = sql.SQL(", ").join(sql.Identifier(k) for k in self.key)
        cur.execute(
            sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY ({}))").format(
                self.pg, sql.SQL(", ").join(cols), pk
            )
        )
        log_cols = [
            sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.type)) for c in self.schema
        ]
        cur.execute(
            sql.SQL("CREATE TABLE {} (seq bigserial PRIMARY KEY, {} smallint NOT NULL, {})").format(
                self.pg_log, sql.Identifier(WEIGHT), sql.SQL(", ").join(log_cols)
            )
        )
        self.create_duck()

    def load(self) -> None:
        """The current rows from Postgres into DuckDB (start-up)."""
        self.create_duck()
        fields = [] if self.primary_key else [pa.field(ROW_ID, pa.int64())]
        schema = pa.schema(fields + list(arrow_schema(self.schema)))
        cols = sql.SQL(", ").join(sql.Identifier(n) for n, _ in self.stored)
        rows = copy_out(self.conn, sql.SQL("SELECT {} FROM {}").format(cols, self.pg), schema)
        if rows.num_rows:
            self.con.register("__load", rows)
            self.con.execute(f"INSERT INTO {self.duck} SELECT * FROM __load")
            self.con.unregister("__load")
        if not self.primary_key:
            top = self.con.sql(f"SELECT max({ROW_ID}) FROM {self.duck}").fetchall()[0][0]
            self._next_id = (top or 0) + 1

    def drop(self, cur: psycopg.Cursor) -> None:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}, {}").format(self.pg, self.pg_log))
        self.con.execute(f"DROP VIEW IF EXISTS {qi(self.name)}")
        self.con.execute(f"DROP TABLE IF EXISTS {self.duck}")

    def last_seq(self) -> int:
        row = self.conn.execute(sql.SQL("SELECT max(seq) FROM {}").format(self.pg_log)).fetchone()
        # After a trim the log may be empty: the sequence still knows where it is.
        seq = row[0] if row else None
        if seq is None:
            seq = self.conn.execute(
                "SELECT last_value FROM pg_sequences WHERE schemaname = %s AND sequencename = %s",
                [PG_SCHEMA, f"{self.name}__log_seq_seq"],
            ).fetchone()
            seq = seq[0] if seq else None
        return int(seq or 0)

    def snapshot(self) -> pa.Table:
        """The current rows, as inserts (a new view's starting point)."""
        cols = ", ".join(qi(n) for n in self.names)
        return self.con.sql(f"SELECT {cols}, 1::BIGINT AS {WEIGHT} FROM {self.duck}").to_arrow_table()

    # -- statements -----------------------------------------------------------------------

    def _sql(self, query: str) -> pa.Table:
        try:
            return self.con.sql(query).to_arrow_table()
        except duckdb.Error as e:
            raise duckdb_error(e) from e

    def insert(self, stmt: exp.Insert) -> int:
        target = stmt.this
        columns = (
            [c.name for c in target.expressions] if isinstance(target, exp.Schema) else self.names
        )
        for c in columns:
            if c not in self.names:
                raise UndefinedColumn(f'column "{c}" of relation "{self.name}" does not exist')
        if stmt.args.get("conflict") or stmt.args.get("returning"):
            raise FeatureNotSupported("INSERT ... ON CONFLICT / RETURNING is not supported yet")
        source = stmt.expression.sql("duckdb")
        given = {c: i for i, c in enumerate(columns)}
        width = len(columns)
        probe = self._sql(f"SELECT * FROM ({source}) LIMIT 0")
        if probe.num_columns != width:
            raise SqlStreamError(
                f"INSERT has {probe.num_columns} expressions but {width} target columns",
                sqlstate="42601",
            )
        src_names = probe.column_names
        exprs = [
            f"CAST(s.{qi(src_names[given[c.name]])} AS {duckdb_type(c.type)}) AS {qi(c.name)}"
            if c.name in given
            else f"NULL::{duckdb_type(c.type)} AS {qi(c.name)}"
            for c in self.schema
        ]
        rows = self._sql(f"SELECT {', '.join(exprs)} FROM ({source}) AS s")
        return self._apply(inserts=rows, deletes=None)

    def _where(self, stmt: exp.Expression) -> str:
        where = stmt.args.get("where")
        return f" WHERE {where.this.sql('duckdb')}" if where is not None else ""

    def _alias(self, stmt: exp.Expression) -> str:
        table = stmt.this
        return qi(table.alias_or_name if isinstance(table, exp.Table) else self.name)

    def delete(self, stmt: exp.Delete) -> int:
        old = self._sql(
            f"SELECT * FROM {self.duck} AS {self._alias(stmt)}{self._where(stmt)}"
        )
        return self._apply(inserts=None, deletes=old)

    def update(self, stmt: exp.Update) -> int:
        sets: dict[str, str] = {}
        for e in stmt.expressions:
            col = e.this.name
            if col not in self.names:
                raise UndefinedColumn(f'column "{col}" of relation "{self.name}" does not exist')
            sets[col] = e.expression.sql("duckdb")
        alias = self._alias(stmt)
        where = self._where(stmt)
        old = self._sql(f"SELECT * FROM {self.duck} AS {alias}{where}")
        exprs = [
            f"CAST({sets[n]} AS {t}) AS {qi(n)}" if n in sets else f"{alias}.{qi(n)}"
            for n, t in self.stored
        ]
        new = self._sql(f"SELECT {', '.join(exprs)} FROM {self.duck} AS {alias}{where}")
        return self._apply(inserts=new, deletes=old)

    # -- applying changes -----------------------------------------------------------------

    def _check(self, inserts: pa.Table, deletes: pa.Table | None) -> None:
        for k in self.primary_key:
            if inserts.column(k).null_count:
                raise NotNullViolation(
                    f'null value in column "{k}" of relation "{self.name}" violates not-null '
                    "constraint"
                )
        if not self.primary_key:
            return
        keys = ", ".join(qi(k) for k in self.primary_key)
        self.con.register("__ins", inserts)
        self.con.register("__del", deletes if deletes is not None else inserts.slice(0, 0))
        try:
            dup = self.con.sql(
                f"SELECT {keys} FROM (SELECT {keys} FROM __ins UNION ALL "
                f"SELECT {keys} FROM {self.duck} t ANTI JOIN __del d USING ({keys})) "
                f"GROUP BY ALL HAVING count(*) > 1 LIMIT 1"
            ).fetchall()
        finally:
            self.con.unregister("__ins")
            self.con.unregister("__del")
        if dup:
            shown = ", ".join(str(v) for v in dup[0])
            raise UniqueViolation(
                f'duplicate key value violates unique constraint "{self.name}_pkey": '
                f"Key ({', '.join(self.primary_key)})=({shown}) already exists."
            )

    def _apply(self, inserts: pa.Table | None, deletes: pa.Table | None) -> int:
        if inserts is not None and not self.primary_key and ROW_ID not in inserts.column_names:
            ids = pa.array(np.arange(self._next_id, self._next_id + inserts.num_rows, dtype=np.int64))
            self._next_id += inserts.num_rows
            inserts = inserts.add_column(0, ROW_ID, ids)
        if inserts is not None:
            self._check(inserts, deletes)
        names = self.names
        count = (inserts.num_rows if inserts is not None else deletes.num_rows)  # type: ignore[union-attr]
        log = []
        if deletes is not None and deletes.num_rows:
            log.append(_weighted(deletes.select(names), -1))
        if inserts is not None and inserts.num_rows:
            log.append(_weighted(inserts.select(names), 1))
        if not log:
            return 0
        # Durable first: the statement is acknowledged only once this commits.
        with self.conn.transaction(), self.conn.cursor() as cur:
            if deletes is not None and deletes.num_rows:
                tmp = sql.Identifier(f"_del_{self.name}")
                keys = deletes.select(self.key)
                cur.execute(
                    sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} LIMIT 0").format(
                        tmp, sql.SQL(", ").join(sql.Identifier(k) for k in self.key), self.pg
                    )
                )
                copy_in(cur, tmp, keys)
                match = sql.SQL(" AND ").join(
                    sql.SQL("t.{0} = d.{0}").format(sql.Identifier(k)) for k in self.key
                )
                cur.execute(sql.SQL("DELETE FROM {} t USING {} d WHERE {}").format(self.pg, tmp, match))
            if inserts is not None and inserts.num_rows:
                cols = sql.SQL(", ").join(sql.Identifier(n) for n, _ in self.stored)
                copy_in(cur, sql.SQL("{} ({})").format(self.pg, cols), inserts.select([n for n, _ in self.stored]))
            log_cols = sql.SQL(", ").join(sql.Identifier(n) for n in [WEIGHT, *names])
            copy_in(cur, sql.SQL("{} ({})").format(self.pg_log, log_cols), pa.concat_tables(log))
        if deletes is not None and deletes.num_rows:
            self.con.register("__del", deletes.select(self.key))
            match = " AND ".join(f"t.{qi(k)} = d.{qi(k)}" for k in self.key)
            self.con.execute(f"DELETE FROM {self.duck} t USING __del d WHERE {match}")
            self.con.unregister("__del")
        if inserts is not None and inserts.num_rows:
            self.con.register("__ins", inserts.select([n for n, _ in self.stored]))
            self.con.execute(f"INSERT INTO {self.duck} SELECT * FROM __ins")
            self.con.unregister("__ins")
        return count

    def trim_log(self, cur: psycopg.Cursor, below: int | None) -> None:
        """Drop log entries every reader has checkpointed past (all of them, with no readers)."""
        if below is None:
            cur.execute(sql.SQL("DELETE FROM {}").format(self.pg_log))
        else:
            cur.execute(sql.SQL("DELETE FROM {} WHERE seq <= %s").format(self.pg_log), [below])


def _weighted(rows: pa.Table, weight: int) -> pa.Table:
    return rows.add_column(0, WEIGHT, pa.repeat(pa.scalar(weight, pa.int16()), rows.num_rows))


class TableLogSource(Source):
    """Follows a table's change log; the offset is the last ``seq`` read."""

    def __init__(
        self,
        ctx: ConnectorContext,
        schema: Schema,
        options: dict[str, str],
        fmt: Format | None,
        *,
        table: Table,
    ) -> None:
        super().__init__(ctx, schema, {}, fmt)
        self.table = table
        self.offset = 0
        self.end: int | None = None

    def freeze(self) -> None:
        self.end = self.table.last_seq()

    def finished(self) -> bool:
        """Only a frozen table (``--once``) ends: otherwise more DML may always come."""
        return self.end is not None and self.offset >= self.end

    def partitions(self) -> list[str]:
        return ["0"]

    def seek(self, offsets: dict[str, Any]) -> None:
        self.offset = int(offsets.get("0", 0))

    def poll(self, max_rows: int) -> SourceBatch | None:
        names = [c.name for c in self.schema]
        cols = sql.SQL(", ").join(sql.Identifier(n) for n in ["seq", WEIGHT, *names])
        schema = pa.schema(
            [pa.field("seq", pa.int64()), pa.field(WEIGHT, pa.int64()), *arrow_schema(self.schema)]
        )
        rows = copy_out(
            self.table.conn,
            sql.SQL("SELECT {} FROM {} WHERE seq > {} ORDER BY seq LIMIT {}").format(
                cols, self.table.pg_log, sql.Literal(self.offset), sql.Literal(max_rows)
            ),
            schema,
        )
        if rows.num_rows == 0:
            return None
        self.offset = int(rows.column("seq")[-1].as_py())
        return SourceBatch(rows.drop_columns(["seq"]).select([*names, WEIGHT]), {"0": self.offset})
