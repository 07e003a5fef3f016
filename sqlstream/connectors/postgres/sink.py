"""The Postgres sink: exactly-once delivery of a changelog into a Postgres table.

Two ways to reach exactly-once, chosen by whether ``dsn`` is given:

* **No ``dsn``** — the table is in the catalog database. ``pre_commit`` writes the epoch's rows
  inside the checkpoint transaction itself, so they commit (or vanish) atomically with the
  checkpoint. Nothing is left to do in ``commit`` or ``recover``.
* **``dsn`` given** — another database or server: two-phase commit. ``pre_commit`` writes on
  the sink's own connection and ``PREPARE TRANSACTION 'sqlstream:<sink>:<table>:<epoch>'``;
  ``commit`` is ``COMMIT PREPARED``, ``abort`` is ``ROLLBACK PREPARED``, and ``recover`` commits
  this sink's prepared epochs ``<= committed`` and rolls back the rest. The target needs
  ``max_prepared_transactions > 0``.

``type = 'append-only'`` bulk-loads with ``COPY``; ``type = 'upsert'`` consolidates the
epoch's changes per primary key (in DuckDB), stages the result with COPY and applies it with
one ``DELETE ... USING`` and one ``INSERT ... ON CONFLICT DO UPDATE``. COPY is binary where the
target's columns have exactly the types the rows are encoded for (read from the table when the
sink opens; Postgres parses binary about twice as fast as CSV), CSV otherwise.

>>> sink = PostgresSink(ctx, schema, {"table": "hot_items", "type": "upsert",
...                                   "primary_key": "auction,window_start"}, None)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import re

import duckdb
import numpy as np
import psycopg
import pyarrow as pa
from psycopg import pq, sql

from sqlstream.connectors.base import WEIGHT, ConnectorContext, Format, Sink, normalize_changes
from sqlstream.connectors.options import OptionSpec
from sqlstream.errors import ConnectorError, InvalidParameterValue
from sqlstream.formats.pgcopy import copy_in
from sqlstream.types import Schema

log = logging.getLogger(__name__)

#: name of the flag column in the upsert staging table (true = upsert, false = delete)
_OP = "__sqlstream_upsert"
# Prepared transaction ids are at most 200 bytes (Postgres' GIDSIZE).
_GID_MAX = 200

_TYPE_RE = re.compile(r"^[a-z][a-z ]*(\(\d+(,\d+)?\))?(\[\])*$")
_NAME_PART_RE = re.compile(r'"((?:[^"]|"")+)"|([^".\s]+)')


def parse_table_name(text: str) -> tuple[str, ...]:
    """``[schema.]table`` as Postgres reads it: unquoted parts are lower-cased.

    >>> parse_table_name('analytics.Hot_Items'), parse_table_name('"My.Table"')
    (('analytics', 'hot_items'), ('My.Table',))
    """
    parts: list[str] = []
    pos = 0
    text = text.strip()
    while True:
        m = _NAME_PART_RE.match(text, pos)
        if m is None:
            raise InvalidParameterValue(f"invalid table name '{text}'")
        parts.append(m.group(1).replace('""', '"') if m.group(1) else m.group(2).lower())
        pos = m.end()
        if pos == len(text):
            break
        if text[pos] != ".":
            raise InvalidParameterValue(f"invalid table name '{text}'")
        pos += 1
    if len(parts) > 2:
        raise InvalidParameterValue(f"table name '{text}' must be [schema.]table")
    return tuple(parts)


def pg_type(type_: str) -> sql.SQL:
    """The column type for DDL; canonical names are Postgres names, checked to be only that."""
    if not _TYPE_RE.match(type_):
        raise InvalidParameterValue(f"cannot create a Postgres column of type '{type_}'")
    return sql.SQL(type_)


#: ``format_type`` spellings of the types binary COPY encodes under a shorter name
_FORMAT_TYPE_NAMES = {
    "character varying": "varchar",
    "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz",
    "time without time zone": "time",
}


def copy_type(formatted: str) -> str:
    """The name binary COPY knows a column's type by, from Postgres' ``format_type``
    (others, e.g. ``character varying(20)``, pass through and are sent as CSV). Not
    ``types.normalize_type``: it maps several Postgres types to one name (``varchar(3)``,
    ``char(5)`` and ``text`` all become ``varchar``), so it cannot say which of them take
    exactly the binary field the sink would send; this keeps anything it does not know.

    >>> copy_type("timestamp without time zone"), copy_type("numeric(10,2)")
    ('timestamp', 'numeric(10,2)')
    """
    return _FORMAT_TYPE_NAMES.get(formatted, formatted)


def _duck_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PostgresSink(Sink):
    """Writes a changelog into a Postgres table, exactly once (see the module docstring)."""

    options_spec = [
        OptionSpec(
            "dsn",
            secret=True,
            description="libpq connection string of the target; omitted = the catalog database",
        ),
        OptionSpec("table", required=True, description="[schema.]table, created if missing"),
        OptionSpec("type", default="append-only", choices=("append-only", "upsert")),
        OptionSpec("primary_key", description="comma-separated key columns (upsert)"),
    ]

    def __init__(
        self, ctx: ConnectorContext, schema: Schema, options: dict[str, str], fmt: Format | None
    ) -> None:
        super().__init__(ctx, schema, options, fmt)
        self.table_name = parse_table_name(self.options["table"])
        self.upsert = self.options["type"].lower() == "upsert"
        self.accepts_retractions = self.upsert
        self.dsn: str | None = self.options.get("dsn") or None
        columns = [c.name for c in schema]
        self.keys = [k.strip() for k in self.options.get("primary_key", "").split(",") if k.strip()]
        if self.upsert and not self.keys:
            raise InvalidParameterValue(f"sink {ctx.name}: type = 'upsert' needs primary_key")
        if self.keys and not self.upsert:
            raise InvalidParameterValue(
                f"sink {ctx.name}: primary_key applies only to type = 'upsert'"
            )
        unknown = [k for k in self.keys if k not in columns]
        if unknown:
            raise InvalidParameterValue(
                f"sink {ctx.name}: primary_key column(s) {', '.join(unknown)} not in the sink's "
                f"columns ({', '.join(columns)})"
            )
        if _OP in columns:
            raise InvalidParameterValue(f"sink {ctx.name}: column name {_OP} is reserved")
        for c in schema:
            pg_type(c.type)  # refuse an unusable type at CREATE SINK, not at the first epoch
        self._target = sql.Identifier(*self.table_name)
        digest = hashlib.sha1(f"{ctx.name}\0{'.'.join(self.table_name)}".encode()).hexdigest()
        self._stage_name = f"_sqlstream_stage_{digest[:16]}"
        prefix = f"sqlstream:{ctx.name}:{'.'.join(self.table_name)}:"
        # The gid must be unique on the whole target server and name this sink and epoch.
        self._gid_prefix = prefix if len(prefix) <= _GID_MAX - 20 else f"sqlstream:{digest}:"
        self._buffer: list[pa.Table] = []
        self._pending: dict[int, list[pa.Table]] = {}
        self._prepared: dict[int, str] = {}
        # gid -> COMMIT/ROLLBACK PREPARED that failed (target unreachable): retried before the
        # next prepare, because a lingering prepared transaction holds its row locks
        self._unfinished: dict[str, str] = {}
        self._conn: psycopg.Connection | None = None
        #: the target's column types for binary COPY (None until open has read them: CSV)
        self._copy_types: list[str] | None = None
        self._duck: duckdb.DuckDBPyConnection | None = None

    # -- connections -------------------------------------------------------------------

    def _connect(self, dsn: str) -> psycopg.Connection:
        try:
            return psycopg.connect(dsn, autocommit=True)
        except psycopg.Error as e:
            raise ConnectorError(f"sink {self.ctx.name}: cannot connect to Postgres: {e}") from e

    def _own_conn(self) -> psycopg.Connection:
        """The two-phase path's connection, reconnecting after a failure."""
        assert self.dsn is not None
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self._connect(self.dsn)
        return self._conn

    # -- protocol ----------------------------------------------------------------------

    def open(self) -> None:
        """Check the target, create the table if missing, check its columns and key."""
        conn = self._connect(self.dsn or self.ctx.catalog_dsn)
        try:
            if self.dsn is not None:
                self._check_two_phase(conn)
            self._create_table(conn)
            self._check_table(conn)
        except psycopg.Error as e:
            conn.close()
            raise ConnectorError(f"sink {self.ctx.name}: {e}") from e
        except BaseException:
            conn.close()
            raise
        if self.dsn is not None:
            self._conn = conn
        else:
            conn.close()

    def _check_two_phase(self, conn: psycopg.Connection) -> None:
        row = conn.execute("SHOW max_prepared_transactions").fetchone()
        if row is None or int(row[0]) <= 0:
            raise ConnectorError(
                f"sink {self.ctx.name}: the target Postgres has max_prepared_transactions = 0; "
                "exactly-once delivery to another database uses prepared transactions. Set "
                "max_prepared_transactions (e.g. 64) in its postgresql.conf and restart it, or "
                "omit dsn to write into the catalog database"
            )

    def _column_defs(self) -> list[sql.Composable]:
        return [
            sql.SQL("{} {}").format(sql.Identifier(c.name), pg_type(c.type)) for c in self.schema
        ]

    def _create_table(self, conn: psycopg.Connection) -> None:
        defs = self._column_defs()
        if self.upsert:
            defs.append(sql.SQL("PRIMARY KEY ({})").format(self._idents(self.keys)))
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                self._target, sql.SQL(", ").join(defs)
            )
        )

    def _check_table(self, conn: psycopg.Connection) -> None:
        """An existing table must have our columns and, for upsert, a unique key on ours."""
        regclass = self._target.as_string(conn)
        have = dict(
            conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                (regclass,),
            ).fetchall()
        )
        missing = [c.name for c in self.schema if c.name not in have]
        if missing:
            raise ConnectorError(
                f"sink {self.ctx.name}: table {'.'.join(self.table_name)} has no column(s) "
                f"{', '.join(missing)}"
            )
        self._copy_types = [copy_type(have[c.name]) for c in self.schema]
        if not self.upsert:
            return
        unique = conn.execute(
            "SELECT array_agg(a.attname::text) FROM pg_index i"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
            " WHERE i.indrelid = %s::regclass AND i.indisunique AND i.indpred IS NULL"
            " GROUP BY i.indexrelid",
            (regclass,),
        ).fetchall()
        if not any(set(r[0]) == set(self.keys) for r in unique):
            raise ConnectorError(
                f"sink {self.ctx.name}: upsert needs a primary key or unique index on "
                f"({', '.join(self.keys)}) in table {'.'.join(self.table_name)}"
            )

    def recover(self, committed_epoch: int | None) -> None:
        """Two-phase path: resolve this sink's prepared epochs left by a crash."""
        self._buffer.clear()
        self._pending.clear()
        self._prepared.clear()
        if self.dsn is None:
            return  # rows were written inside checkpoint transactions: nothing in doubt
        conn = self._own_conn()
        for epoch, gid in self._prepared_on_server(conn):
            if committed_epoch is not None and epoch <= committed_epoch:
                log.info("sink %s: committing prepared epoch %d", self.ctx.name, epoch)
                self._finish(conn, "COMMIT PREPARED", gid)
            else:
                log.info("sink %s: rolling back prepared epoch %d", self.ctx.name, epoch)
                self._finish(conn, "ROLLBACK PREPARED", gid)
        self._unfinished.clear()

    def _prepared_on_server(self, conn: psycopg.Connection) -> list[tuple[int, str]]:
        rows = conn.execute(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
            " AND starts_with(gid, %s)",
            (self._gid_prefix,),
        ).fetchall()
        out = []
        for (gid,) in rows:
            suffix = gid[len(self._gid_prefix) :]
            if suffix.isdigit():
                out.append((int(suffix), gid))
        return sorted(out)

    def write(self, changes: pa.Table) -> None:
        if changes.num_rows:
            self._buffer.append(normalize_changes(changes, self.schema, weighted=self.upsert))

    def seal(self, epoch: int) -> None:
        self._pending[epoch], self._buffer = self._buffer, []

    def pre_commit(self, epoch: int, txn: psycopg.Connection) -> None:
        tables = self._pending.get(epoch, [])
        if self.dsn is not None:
            self._finish_unfinished()
        if not tables:
            return
        rows = pa.concat_tables(tables)
        if self.dsn is None:
            with txn.cursor() as cur:
                self._apply(cur, rows, two_phase=False)
        else:
            self._prepare(epoch, rows)

    def _finish_unfinished(self) -> None:
        conn = self._own_conn()
        for gid, verb in sorted(self._unfinished.items()):
            self._finish(conn, verb, gid)
            del self._unfinished[gid]

    def _prepare(self, epoch: int, rows: pa.Table) -> None:
        conn = self._own_conn()
        gid = f"{self._gid_prefix}{epoch}"
        try:
            conn.execute("BEGIN")
            with conn.cursor() as cur:
                self._apply(cur, rows, two_phase=True)
            conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
        except BaseException as e:
            # Leave the connection idle for the next epoch (the server forgets the work).
            if not conn.broken and conn.info.transaction_status != pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
            if isinstance(e, psycopg.Error):
                raise ConnectorError(f"sink {self.ctx.name}: epoch {epoch}: {e}") from e
            raise
        self._prepared[epoch] = gid

    def commit(self, epoch: int) -> None:
        self._pending.pop(epoch, None)
        gid = self._prepared.pop(epoch, None)
        if gid is None:
            return
        self._finish_or_remember("COMMIT PREPARED", gid)

    def abort(self, epoch: int) -> None:
        """Roll the epoch back; its rows go back into the buffer for the next checkpoint.

        The engine retries a failed checkpoint with the changes it already handed over (it
        does not replay them), so they must not be lost. An engine that rewinds instead builds
        new sink objects.
        """
        self._buffer[:0] = self._pending.pop(epoch, [])
        gid = self._prepared.pop(epoch, None)
        if gid is not None:
            self._finish_or_remember("ROLLBACK PREPARED", gid)

    def _finish_or_remember(self, verb: str, gid: str) -> None:
        try:
            self._finish(self._own_conn(), verb, gid)
        except ConnectorError:
            # Retried before the next prepare (or by recover() after a restart).
            self._unfinished[gid] = verb
            raise

    def _finish(self, conn: psycopg.Connection, verb: str, gid: str) -> None:
        try:
            conn.execute(sql.SQL(verb + " {}").format(sql.Literal(gid)))
        except psycopg.errors.UndefinedObject:
            pass  # already finished (an earlier attempt succeeded but its reply was lost)
        except psycopg.Error as e:
            raise ConnectorError(f"sink {self.ctx.name}: {verb} {gid!r} failed: {e}") from e

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._duck is not None:
            self._duck.close()
            self._duck = None

    # -- writing -----------------------------------------------------------------------

    def _idents(self, names: list[str]) -> sql.Composed:
        return sql.SQL(", ").join(sql.Identifier(n) for n in names)

    def _apply(self, cur: psycopg.Cursor, rows: pa.Table, *, two_phase: bool) -> None:
        if self.upsert:
            self._upsert(cur, self._consolidate(rows), two_phase=two_phase)
            return
        names = [c.name for c in self.schema]
        copy_in(
            cur, sql.SQL("{} ({})").format(self._target, self._idents(names)), rows,
            self._copy_types,
        )  # fmt: skip

    def _consolidate(self, rows: pa.Table) -> pa.Table:
        """The epoch's net effect per key: the row to upsert, or the row whose key to delete.

        Changes are summed per whole row first (a Z-set), so the order of ``-old`` and
        ``+new`` inside the epoch does not matter; a key keeps the row with positive net
        weight (the latest, should there be several) and is deleted when it only has negative
        ones. Rows that cancel out do nothing.
        """
        if self._duck is None:
            self._duck = duckdb.connect()
        pos = "__sqlstream_pos"
        rows = rows.append_column(pos, pa.array(np.arange(rows.num_rows, dtype=np.int64)))
        cols = ", ".join(_duck_ident(c.name) for c in self.schema)
        keys = ", ".join(_duck_ident(k) for k in self.keys)
        weight = _duck_ident(WEIGHT)
        query = f"""
            WITH net AS (
                SELECT {cols}, sum({weight}) AS __sqlstream_w, max({pos}) AS {pos}
                FROM _changes GROUP BY {cols}
            ), ranked AS (
                SELECT *, row_number() OVER (
                    PARTITION BY {keys} ORDER BY __sqlstream_w > 0 DESC, {pos} DESC
                ) AS __sqlstream_rn
                FROM net WHERE __sqlstream_w <> 0
            )
            SELECT {cols}, __sqlstream_w > 0 AS {_OP} FROM ranked WHERE __sqlstream_rn = 1
        """
        self._duck.register("_changes", rows)
        try:
            return self._duck.sql(query).to_arrow_table()
        finally:
            self._duck.unregister("_changes")

    def _upsert(self, cur: psycopg.Cursor, net: pa.Table, *, two_phase: bool) -> None:
        if net.num_rows == 0:
            return
        names = [c.name for c in self.schema]
        defs = [*self._column_defs(), sql.SQL("{} boolean").format(sql.Identifier(_OP))]
        if two_phase:
            # PREPARE TRANSACTION refuses transactions that touched temporary tables, so the
            # stage is a regular table created and dropped inside the same transaction:
            # no other session ever sees it.
            schema = self.table_name[:-1]
            stage = sql.Identifier(*schema, self._stage_name)
            cur.execute(
                sql.SQL("CREATE UNLOGGED TABLE {} ({})").format(stage, sql.SQL(", ").join(defs))
            )
        else:
            stage = sql.Identifier("pg_temp", self._stage_name)
            cur.execute(
                sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
                    sql.Identifier(self._stage_name), sql.SQL(", ").join(defs)
                )
            )
        # the stage has exactly the schema's types, as created above
        stage_types = [*(c.type for c in self.schema), "boolean"]
        copy_in(cur, sql.SQL("{} ({})").format(stage, self._idents([*names, _OP])), net, stage_types)
        key_match = sql.SQL(" AND ").join(
            sql.SQL("t.{k} = s.{k}").format(k=sql.Identifier(k)) for k in self.keys
        )
        cur.execute(
            sql.SQL("DELETE FROM {t} AS t USING {s} AS s WHERE NOT s.{op} AND {match}").format(
                t=self._target, s=stage, op=sql.Identifier(_OP), match=key_match
            )
        )
        others = [n for n in names if n not in self.keys]
        if others:
            action = sql.SQL("DO UPDATE SET {}").format(
                sql.SQL(", ").join(
                    sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(n)) for n in others
                )
            )
        else:
            action = sql.SQL("DO NOTHING")
        cur.execute(
            sql.SQL(
                "INSERT INTO {t} ({cols}) SELECT {cols} FROM {s} WHERE {op} ON CONFLICT ({keys}) {action}"
            ).format(
                t=self._target,
                cols=self._idents(names),
                s=stage,
                op=sql.Identifier(_OP),
                keys=self._idents(self.keys),
                action=action,
            )
        )
        if two_phase:
            cur.execute(sql.SQL("DROP TABLE {}").format(stage))
