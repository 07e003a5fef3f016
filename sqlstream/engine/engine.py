"""The engine: the graph of all objects of a catalog, run in epochs.

It executes statements (DDL takes effect at once and is recorded in the catalog), rebuilds
the graph from the catalog after a restart (recovery), and advances the graph: each epoch
polls every reader (those of one pipeline aligned in event time, see ``run_epoch``), pushes
the batches through the pipelines, lets windows close behind the watermarks, and every
``checkpoint_interval`` ends with a checkpoint (see :mod:`sqlstream.checkpoint.protocol`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import duckdb
import psycopg
import pyarrow as pa
import sqlglot
from sqlglot import exp

from sqlstream.checkpoint import protocol
from sqlstream.checkpoint.protocol import CheckpointStats, committed_sinks
from sqlstream.checkpoint.store import CatalogStore, ObjectRow
from sqlstream.checkpoint.store import connect as catalog_connect
from sqlstream.config import Settings
from sqlstream.connectors.base import WEIGHT, ConnectorContext, Format, Source
from sqlstream.connectors.registry import sink_class, source_class
from sqlstream.engine import alignment
from sqlstream.engine.build import operator_id
from sqlstream.engine.changes import with_weights
from sqlstream.engine.materialize import MaterializeOperator
from sqlstream.engine.pipeline import Pipeline, SinkRunner
from sqlstream.engine.reader import Reader
from sqlstream.engine.tables import Table, TableLogSource, duckdb_error
from sqlstream.errors import (
    DataException,
    DependentObjectsStillExist,
    DuplicateObject,
    FeatureNotSupported,
    InvalidParameterValue,
    ObjectChanged,
    SqlStreamError,
    UndefinedTable,
)
from sqlstream.plan.explain import explain_plan
from sqlstream.plan.intervals import fixed_offset_us
from sqlstream.plan.nodes import QueryPlan
from sqlstream.plan.planner import RelationInfo, plan_query
from sqlstream.sql import statements as st
from sqlstream.sql.binder import bind_query
from sqlstream.sql.dialect import SqlStream
from sqlstream.sql.parser import parse, parse_one
from sqlstream.state.append_log import AppendLog
from sqlstream.state.table import ROW_ID
from sqlstream.types import Column, Schema, from_duckdb

log = logging.getLogger("sqlstream")

#: names of the columns state tables and changelogs carry beside a query's own
HIDDEN_COLUMNS = frozenset({WEIGHT, ROW_ID, "__count", "__ord"})



@dataclass
class Result:
    """What a statement returns: a status tag and, for queries, columns and rows."""

    status: str
    columns: Schema | None = None
    rows: list[tuple] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


@dataclass
class SourceDef:
    name: str
    schema: Schema
    options: dict[str, str]
    format: Format | None
    watermark_column: str | None
    watermark_sql: str | None
    watermark_offset_us: int | None = None

    @property
    def on_error(self) -> str:
        return self.options.get("on_error", "dead_letter").lower()


def normalize_sql(text: str) -> str:
    """Definition text compared when a job file is run again: whitespace-insensitive."""
    return " ".join(text.replace(";", " ").split())


def _fingerprint(text: str) -> str:
    return hashlib.sha256(normalize_sql(text).encode()).hexdigest()[:16]


def _names_in(query: exp.Expression) -> set[str]:
    """Every name a bound query mentions: a source column not among them is never read.

    Deliberately coarse (any identifier counts, whatever it names), so that pruning can only
    keep too much; ``*`` is already expanded by the binder.
    """
    return {i.name for i in query.find_all(exp.Identifier)}


def _relations(plan: QueryPlan) -> list[str]:
    """The sources and views a plan reads, in order."""
    return list(dict.fromkeys(s.relation for s in plan.scans()))


class Engine:
    def __init__(
        self, settings: Settings, catalog_dsn: str, *, resets: frozenset[str] = frozenset()
    ) -> None:
        self.settings = settings
        #: objects whose stored state may be discarded when their plan no longer matches it
        self.resets = resets
        self.store = CatalogStore(catalog_dsn)
        self.catalog_dsn = catalog_dsn
        self.con = duckdb.connect()
        self.objects: dict[str, ObjectRow] = {}
        self.sources: dict[str, SourceDef] = {}
        self.pipelines: dict[str, Pipeline] = {}
        self.sinks: dict[str, SinkRunner] = {}
        self.tables: dict[str, Table] = {}
        self.session: dict[str, str] = {}
        self.last_epoch: int = 0
        #: the epoch of the last checkpoint handed to the committer
        self._sealed_epoch = 0
        self.last_checkpoint: CheckpointStats | None = None
        self.last_checkpoint_at = time.monotonic()
        self.rows_in = 0
        self.rows_out = 0
        self._rows_in_ckpt = 0
        self._rows_out_ckpt = 0
        self._frozen = False
        # The checkpoint in flight: its transaction runs on a connection and a thread of its
        # own while the engine goes on with the next epochs (checkpoint/protocol.py).
        self._committer: ThreadPoolExecutor | None = None
        self._commit_conn: psycopg.Connection | None = None
        self._in_flight: Future[CheckpointStats] | None = None
        #: what made a checkpoint's commit fail: the engine must be rebuilt from the last
        #: committed checkpoint (its state has moved past what Postgres holds)
        self.broken: BaseException | None = None
        self.align_max_lead_us = alignment.MAX_LEAD_US
        self.align_idle_s = alignment.IDLE_S
        # interrupt_query() comes from other threads; it may only ever stop an ad-hoc query.
        self._query_lock = threading.Lock()
        self._querying = False
        try:
            self._recover()
        except BaseException:
            self.close()  # releases the catalog lock for whoever tries next
            raise
        self.last_checkpoint_at = time.monotonic()  # intervals count from when it can run

    # -- recovery -------------------------------------------------------------------------

    def _recover(self) -> None:
        """Rebuild the graph from the catalog and resume from the last checkpoint."""
        self.last_epoch = self.store.last_epoch() or 0
        committed = committed_sinks(self.store.conn)
        for row in self.store.objects():
            self._instantiate(row, restoring=True)
            if row.name in self.sinks:
                self.sinks[row.name].committed_once = row.name in committed
                self._backfill_sink(row.name)

    def _instantiate(self, row: ObjectRow, *, restoring: bool) -> None:
        """Build the runtime parts of an object from its catalog row."""
        stmt = parse_one(row.sql)
        if isinstance(stmt, st.CreateSource):
            self.sources[row.name] = self._source_def(stmt)
        elif isinstance(stmt, st.CreateTable):
            table = self._table(stmt)
            table.load()
            self.tables[row.name] = table
        elif isinstance(stmt, st.CreateMaterializedView):
            p = self._pipeline(row.name, "materialized view", stmt.query, stmt.emit_on_window_close)
            self._start_pipeline(p, restoring)
        elif isinstance(stmt, st.CreateSink):
            self._create_sink_runtime(row.name, stmt, restoring)
        self.objects[row.name] = row

    def _start_pipeline(self, p: Pipeline, restoring: bool) -> None:
        if restoring and not self._state_matches(p):
            if p.name not in self.resets:
                raise ObjectChanged(
                    f'the stored state of "{p.name}" was made by a different plan (this version '
                    f"of sqlstream plans it differently); run with --reset {p.name} to discard "
                    "its state and compute it anew from its sources"
                )
            with self.store.conn.transaction(), self.store.conn.cursor() as cur:
                self.store.reset_state(cur, p.name)
                self._create_state(cur, p.name, p)
            restoring = False
        p.create()
        for u in p.upstream:
            u.subscribers.append(p)
        self.pipelines[p.name] = p
        if restoring:
            for t in p.state_tables:
                t.pg_load(self.store.conn)
            offsets = self.store.offsets(p.name)
            marks = self.store.watermarks(p.name)
            for r in p.readers:
                r.seek(offsets.get(r.source_name, {}), marks.get(r.source_name))
            p.restored()
            return
        for r in p.readers:
            r.seek({}, None)
        p.start_fresh()
        # A view over a table starts from its current rows, then follows its change log.
        for r in p.readers:
            if isinstance(r.source, TableLogSource):
                table = r.source.table
                r.seek({"0": table.last_seq()}, None)
                snapshot = table.snapshot()
                if snapshot.num_rows:
                    p.feed(table.name, snapshot)
        # A view over views starts from their current contents, then follows their changes.
        for u in p.upstream:
            if u.materialize is not None:
                rows = u.materialize.rows()
                if rows.num_rows:
                    p.feed(u.name, with_weights(rows) if u.plan.retracting else rows)

    def _state_matches(self, p: Pipeline) -> bool:
        stored = self.store.state_fingerprints(p.name)
        return all(stored.get(t.operator_id) == p.plan.fingerprint for t in p.state_tables)

    # -- statements -----------------------------------------------------------------------

    def execute_script(self, text: str, *, resets: frozenset[str] = frozenset()) -> list[Result]:
        return [self.execute(s, resets=resets) for s in parse(text)]

    def execute(self, stmt: st.Statement, *, resets: frozenset[str] = frozenset()) -> Result:
        handler: Callable[..., Result] | None = getattr(self, f"_do_{type(stmt).__name__}", None)
        if handler is None:
            raise FeatureNotSupported(f"{type(stmt).__name__} statements are not supported yet")
        creating = st.CreateSource | st.CreateTable | st.CreateMaterializedView | st.CreateSink
        if isinstance(stmt, creating | st.Drop):
            # The catalog changes (and state tables come and go) only between checkpoints.
            self.settle()
        if isinstance(stmt, creating):
            return self._create(stmt, handler, resets)
        return handler(stmt)

    def _create(self, stmt, handler, resets) -> Result:  # type: ignore[no-untyped-def]
        kind = {
            st.CreateSource: "SOURCE",
            st.CreateTable: "TABLE",
            st.CreateMaterializedView: "MATERIALIZED_VIEW",
            st.CreateSink: "SINK",
        }[type(stmt)]
        existing = self.objects.get(stmt.name)
        if existing is not None:
            if stmt.if_not_exists:
                return Result(f"CREATE_{kind}", notices=[f'"{stmt.name}" exists, skipping'])
            if existing.fingerprint == _fingerprint(stmt.text):
                # The same definition again (a job file run anew): resume it.
                return Result(f"CREATE_{kind}", notices=[f'resuming "{stmt.name}"'])
            if stmt.name in resets:
                self._drop_object(stmt.name, cascade=False)
            else:
                raise ObjectChanged(
                    f'"{stmt.name}" already exists with a different definition; drop it first, '
                    f"or run with --reset {stmt.name} to discard its state and start it anew"
                )
        return handler(stmt)

    def _source_def(self, stmt: st.CreateSource) -> SourceDef:
        wm_col = wm_sql = offset = None
        if stmt.watermark is not None:
            wm_col = stmt.watermark.column
            if wm_col not in {c.name for c in stmt.columns}:
                raise UndefinedTable(
                    f'WATERMARK FOR column "{wm_col}" does not exist', sqlstate="42703"
                )
            wm_sql = stmt.watermark.expr.sql("duckdb")
            wm_type = next(c.type for c in stmt.columns if c.name == wm_col)
            offset = fixed_offset_us(self.con, stmt.watermark.expr, wm_col, wm_type)
        return SourceDef(stmt.name, stmt.columns, stmt.options, stmt.format, wm_col, wm_sql, offset)

    def _connector(self, src: SourceDef) -> Source:
        connector = src.options.get("connector")
        if not connector:
            raise InvalidParameterValue(f'source "{src.name}" has no connector option')
        ctx = ConnectorContext(src.name, self.catalog_dsn, self.settings.data_dir)
        return source_class(connector)(ctx, src.schema, src.options, src.format)

    def _do_CreateSource(self, stmt: st.CreateSource) -> Result:
        src = self._source_def(stmt)
        if src.on_error not in ("dead_letter", "skip", "fail"):
            raise InvalidParameterValue("on_error must be 'dead_letter', 'skip' or 'fail'")
        self._connector(src).close()  # validates connector and options now, not later
        row = ObjectRow(stmt.name, "source", stmt.text, stmt.options, stmt.columns, _fingerprint(stmt.text))
        with self.store.conn.transaction(), self.store.conn.cursor() as cur:
            self.store.insert_object(row, cur)
        self.sources[stmt.name] = src
        self.objects[stmt.name] = row
        return Result("CREATE_SOURCE")

    def _relation(self, name: str) -> RelationInfo:
        if name in self.sources:
            s = self.sources[name]
            return RelationInfo(
                name, s.schema, "source", False, s.watermark_column, s.watermark_sql
            )
        if name in self.tables:
            return RelationInfo(name, self.tables[name].schema, "table", True)
        p = self.pipelines.get(name)
        if p is not None and p.kind == "materialized view":
            return RelationInfo(
                name, p.plan.schema, "view", p.plan.retracting, times=dict(p.plan.root.times)
            )
        raise UndefinedTable(f'relation "{name}" does not exist')

    def _resolve_schema(self, name: str) -> list[Column] | None:
        if name in self.sources:
            return self.sources[name].schema
        if name in self.tables:
            return self.tables[name].schema
        obj = self.objects.get(name)
        if obj is not None and obj.kind == "materialized view":
            return obj.schema
        return None

    def _pipeline(
        self, name: str, kind: str, query: exp.Query, eowc: bool
    ) -> Pipeline:
        bound = bind_query(query, self._resolve_schema)
        names = [c.name for c in bound.schema]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes and kind == "materialized view":
            raise DuplicateObject(
                f'column "{sorted(dupes)[0]}" specified more than once; give it an alias',
                sqlstate="42701",
            )
        hidden = [n for n in names if n.lower() in HIDDEN_COLUMNS]
        if hidden:
            raise DuplicateObject(
                f'column name "{hidden[0]}" is reserved for the columns sqlstream keeps beside '
                f"a query's own ({', '.join(sorted(HIDDEN_COLUMNS))}); give it another alias",
                sqlstate="42939",
            )
        plan = plan_query(name, bound.query, self._relation, emit_on_window_close=eowc)
        named = _names_in(bound.query)
        readers = []
        upstream = []
        for rel in dict.fromkeys(scan.relation for scan in plan.scans()):
            if rel in self.sources:
                src = self.sources[rel]
                reader = Reader(
                    name,
                    src.name,
                    self._connector(src),
                    src.watermark_column,
                    src.watermark_sql,
                    on_error=src.on_error,
                    watermark_offset_us=src.watermark_offset_us,
                )
                reader.source.use_columns(
                    {c.name for c in src.schema if c.name in named or c.name == src.watermark_column}
                )
                if self._frozen:
                    reader.source.freeze()
                readers.append(reader)
            elif rel in self.tables:
                table = self.tables[rel]
                ctx = ConnectorContext(rel, self.catalog_dsn, self.settings.data_dir)
                log = TableLogSource(ctx, table.schema, {}, None, table=table)
                if self._frozen:
                    log.freeze()
                readers.append(Reader(name, rel, log))
            else:
                upstream.append(self.pipelines[rel])
        p = Pipeline(name, kind, plan, self.con, readers, upstream=upstream)
        if kind == "materialized view":
            p.materialize = MaterializeOperator(
                self.con, operator_id(name, "mv", 0), name, plan.schema, retracting=plan.retracting
            )
        return p

    def _register_new(self, row: ObjectRow, p: Pipeline | None) -> None:
        with self.store.conn.transaction(), self.store.conn.cursor() as cur:
            self.store.insert_object(row, cur)
            if p is not None:
                self._create_state(cur, row.name, p)
        self.objects[row.name] = row

    def _create_state(self, cur: psycopg.Cursor, name: str, p: Pipeline) -> None:
        """Create and register the Postgres tables of ``p``'s operator state."""
        for kind, t in p.state_kinds():
            t.pg_create(cur)
            self.store.register_state(
                cur,
                t.operator_id,
                name,
                kind.removesuffix("Operator").lower(),
                [[n, ty] for n, ty in t.pg_columns()],
                p.plan.fingerprint,
            )

    def _do_CreateMaterializedView(self, stmt: st.CreateMaterializedView) -> Result:
        p = self._pipeline(stmt.name, "materialized view", stmt.query, stmt.emit_on_window_close)
        row = ObjectRow(
            stmt.name,
            "materialized view",
            stmt.text,
            {},
            p.plan.schema,
            _fingerprint(stmt.text),
            _relations(p.plan),
        )
        self._register_new(row, p)
        try:
            self._start_pipeline(p, restoring=False)
        except BaseException as e:
            # e.g. a cast that fails on a table's current rows: the statement fails whole
            self._undo_create(stmt.name, p)
            if isinstance(e, duckdb.Error):
                raise duckdb_error(e) from e
            raise
        return Result("CREATE_MATERIALIZED_VIEW")

    def _undo_create(self, name: str, p: Pipeline | None) -> None:
        """Remove every trace of a CREATE that failed after its object was registered: the
        catalog row and state tables, the pipeline and its readers, the DuckDB tables."""
        if p is not None:
            self.pipelines[name] = p
        self._drop_object(name, cascade=False)

    def _sink_query(self, stmt: st.CreateSink) -> tuple[exp.Query | None, str | None]:
        """(own query, attached view) of a sink."""
        if stmt.query is not None:
            return stmt.query, None
        name = stmt.from_name
        assert name is not None
        if name in self.sources:
            return sqlglot.parse_one(f'SELECT * FROM "{name}"', read=SqlStream), None
        if name in self.pipelines and self.pipelines[name].kind == "materialized view":
            return None, name
        raise UndefinedTable(f'relation "{name}" does not exist')

    def _create_sink_runtime(self, name: str, stmt: st.CreateSink, restoring: bool) -> Pipeline | None:
        query, attached = self._sink_query(stmt)
        options = {k.lower(): v for k, v in stmt.options.items()}
        connector = options.get("connector")
        if not connector:
            raise InvalidParameterValue(f'sink "{name}" has no connector option')
        cls = sink_class(connector)
        if attached:
            upstream = self.pipelines[attached]
            schema, retracting, pipeline = upstream.plan.schema, upstream.plan.retracting, None
        else:
            pipeline = self._pipeline(name, "sink", query, False)
            schema, retracting = pipeline.plan.schema, pipeline.plan.retracting
        ctx = ConnectorContext(name, self.catalog_dsn, self.settings.data_dir)
        sink = cls(ctx, schema, options, stmt.format)
        force = options.get("force_append_only", "false").lower() == "true"
        if retracting and not sink.accepts_retractions and not force:
            raise FeatureNotSupported(
                f'sink "{name}": the query produces updates and deletes, which this sink cannot '
                "take as configured; use type = 'upsert' with a primary_key, "
                "force_append_only = 'true', or EMIT ON WINDOW CLOSE"
            )
        sink.open()
        sink.recover(self.last_epoch or None)
        runner = SinkRunner(name, sink, force)
        self.sinks[name] = runner
        if attached:
            self.pipelines[attached].sinks.append(runner)
        elif pipeline is not None:
            pipeline.sinks.append(runner)
            try:
                self._start_pipeline(pipeline, restoring)
            except BaseException as e:
                if restoring:
                    raise
                self._discard_sink(name, pipeline)
                if isinstance(e, duckdb.Error):
                    raise duckdb_error(e) from e
                raise
        return pipeline

    def _backfill_sink(self, name: str) -> None:
        """A sink on a view starts with the view's current rows, once."""
        runner = self.sinks[name]
        if runner.committed_once:
            return
        for p in self.pipelines.values():
            if p.kind == "materialized view" and runner in p.sinks and p.materialize:
                rows = p.materialize.rows()
                if rows.num_rows:
                    runner.write(rows)

    def _do_CreateSink(self, stmt: st.CreateSink) -> Result:
        pipeline = self._create_sink_runtime(stmt.name, stmt, restoring=False)
        deps = _relations(pipeline.plan) if pipeline else [stmt.from_name or ""]
        schema = pipeline.plan.schema if pipeline else self.pipelines[deps[0]].plan.schema
        row = ObjectRow(stmt.name, "sink", stmt.text, stmt.options, schema, _fingerprint(stmt.text), deps)
        try:
            self._register_new(row, pipeline)
        except BaseException:
            self._discard_sink(stmt.name, pipeline)
            raise
        self._backfill_sink(stmt.name)
        return Result("CREATE_SINK")

    def _discard_sink(self, name: str, pipeline: Pipeline | None) -> None:
        """Undo a CREATE SINK that failed: the runner, and the sink's own pipeline if any."""
        self._forget_sink(name)
        if pipeline is not None:
            self._close_pipeline(pipeline)

    def _forget_sink(self, name: str) -> None:
        runner = self.sinks.pop(name, None)
        for p in self.pipelines.values():
            if runner in p.sinks:
                p.sinks.remove(runner)
        self.pipelines.pop(name, None)
        if runner:
            runner.sink.close()

    # -- drop -----------------------------------------------------------------------------

    def _dependents(self, name: str) -> list[str]:
        return [o.name for o in self.objects.values() if name in o.depends_on]

    def _drop_object(self, name: str, *, cascade: bool) -> None:
        for dep in self._dependents(name):
            if not cascade:
                raise DependentObjectsStillExist(
                    f'cannot drop "{name}" because "{dep}" depends on it (use DROP ... CASCADE)'
                )
            self._drop_object(dep, cascade=True)
        with self.store.conn.transaction(), self.store.conn.cursor() as cur:
            self.store.delete_object(cur, name)
            if name in self.tables:
                self.tables.pop(name).drop(cur)
        self.objects.pop(name, None)
        self.sources.pop(name, None)
        if name in self.sinks:
            self._forget_sink(name)
        p = self.pipelines.pop(name, None)
        if p:
            self._close_pipeline(p)

    def _close_pipeline(self, p: Pipeline) -> None:
        """Close a removed pipeline's readers and drop its DuckDB tables."""
        for r in p.readers:
            r.source.close()
        for u in p.upstream:
            if p in u.subscribers:  # not yet, when its start failed
                u.subscribers.remove(p)
        if p.materialize:
            p.materialize.drop()
        for t in p.state_tables:
            if isinstance(t, AppendLog):
                t.release()  # its held rows are registered with DuckDB, not in a table
            extra = (getattr(t, n, None) for n in ("dirty", "gone", "persisted"))
            for table in (t.table, *extra):
                if table:
                    self.con.execute(f"DROP TABLE IF EXISTS {table}")

    _KINDS = {
        "source": "source",
        "table": "table",
        "materialized view": "materialized view",
        "view": "materialized view",
        "sink": "sink",
    }

    def _do_Drop(self, stmt: st.Drop) -> Result:
        kind = self._KINDS[stmt.kind]
        notices = []
        for name in stmt.names:
            obj = self.objects.get(name)
            if obj is None or obj.kind != kind:
                if stmt.if_exists:
                    notices.append(f'{stmt.kind} "{name}" does not exist, skipping')
                    continue
                raise UndefinedTable(f'{stmt.kind} "{name}" does not exist')
            self._drop_object(name, cascade=stmt.cascade)
        return Result(f"DROP_{kind.upper().replace(' ', '_')}", notices=notices)

    # -- other statements -------------------------------------------------------------------

    def _do_Show(self, stmt: st.Show) -> Result:
        what = stmt.what
        kinds = {"sources": "source", "materialized views": "materialized view", "sinks": "sink",
                 "tables": "table"}
        if what in kinds:
            names = sorted(o.name for o in self.objects.values() if o.kind == kinds[what])
            return Result("SHOW", [Column("Name", "varchar")], [(n,) for n in names])
        if what == "jobs":
            rows = [
                (p.name, p.kind, sum(r.rows_read for r in p.readers), p.rows_out)
                for p in self.pipelines.values()
            ]
            cols = [Column("Name", "varchar"), Column("Kind", "varchar"),
                    Column("Rows in", "bigint"), Column("Rows out", "bigint")]
            return Result("SHOW", cols, rows)
        if what == "checkpoints":
            rows = self.store.conn.execute(
                "SELECT epoch, committed_at::timestamp(0)::text, duration_ms, rows_in, rows_out, "
                "state_rows, bytes FROM sqlstream.checkpoints ORDER BY epoch DESC LIMIT 20"
            ).fetchall()
            cols = [Column("epoch", "bigint"), Column("committed_at", "varchar"),
                    Column("duration_ms", "double precision"), Column("rows_in", "bigint"),
                    Column("rows_out", "bigint"), Column("state_rows", "bigint"),
                    Column("bytes", "bigint")]
            return Result("SHOW", cols, rows)
        if what == "all":
            return Result("SHOW", [Column("name", "varchar"), Column("setting", "varchar")],
                          sorted(self.session.items()))
        return Result("SHOW", [Column(what, "varchar")], [(self.session.get(what, ""),)])

    def _do_Describe(self, stmt: st.Describe) -> Result:
        obj = self.objects.get(stmt.name)
        if obj is None:
            raise UndefinedTable(f'relation "{stmt.name}" does not exist')
        cols = [Column("Name", "varchar"), Column("Type", "varchar")]
        return Result("DESCRIBE", cols, [(c.name, c.type) for c in obj.schema])

    def _do_Explain(self, stmt: st.Explain) -> Result:
        inner = stmt.statement
        if isinstance(inner, st.CreateMaterializedView):
            p = self._pipeline(inner.name, "materialized view", inner.query, inner.emit_on_window_close)
        elif isinstance(inner, st.CreateSink) and self._sink_query(inner)[0] is not None:
            p = self._pipeline(inner.name, "sink", self._sink_query(inner)[0], False)
        elif isinstance(inner, st.Query):
            p = self._pipeline("query", "materialized view", inner.query, False)
        else:
            raise FeatureNotSupported("EXPLAIN takes a query, CREATE MATERIALIZED VIEW or CREATE SINK")
        for r in p.readers:
            r.source.close()
        text = explain_plan(p.plan, "Materialize" if p.kind == "materialized view" else "Sink")
        return Result("EXPLAIN", [Column("QUERY PLAN", "varchar")], [(line,) for line in text.splitlines()])

    def _do_Flush(self, stmt: st.Flush) -> Result:
        self.run_epoch()
        self.checkpoint()
        return Result("FLUSH")

    def _do_SetVariable(self, stmt: st.SetVariable) -> Result:
        self.session[stmt.name.lower()] = stmt.value
        known = {"checkpoint_interval"}
        if stmt.name.lower() == "checkpoint_interval":
            from sqlstream.config import parse_duration

            self.settings.checkpoint_interval = parse_duration(stmt.value)
        notices = [] if stmt.name.lower() in known else [f'setting "{stmt.name}" is accepted but has no effect']
        return Result("SET", notices=notices)

    def _table(self, stmt: st.CreateTable) -> Table:
        if stmt.options.get("connector"):
            raise FeatureNotSupported(
                "tables fed by a connector (CDC, upsert streams) are not supported yet"
            )
        return Table(self.con, self.store.conn, stmt.name, stmt.columns, stmt.primary_key)

    def _do_CreateTable(self, stmt: st.CreateTable) -> Result:
        table = self._table(stmt)
        row = ObjectRow(stmt.name, "table", stmt.text, stmt.options, stmt.columns, _fingerprint(stmt.text))
        with self.store.conn.transaction(), self.store.conn.cursor() as cur:
            self.store.insert_object(row, cur)
            table.create(cur)
        self.tables[stmt.name] = table
        self.objects[stmt.name] = row
        return Result("CREATE_TABLE")

    def _dml_table(self, ast: exp.Expression) -> Table:
        target = ast.this.this if isinstance(ast.this, exp.Schema) else ast.this
        name = target.name
        if name not in self.tables:
            kind = self.objects[name].kind if name in self.objects else None
            if kind:
                raise FeatureNotSupported(f'cannot change {kind} "{name}": only tables take DML')
            raise UndefinedTable(f'relation "{name}" does not exist')
        return self.tables[name]

    def _do_Insert(self, stmt: st.Insert) -> Result:
        return Result(f"INSERT 0 {self._dml_table(stmt.ast).insert(stmt.ast)}")

    def _do_Update(self, stmt: st.Update) -> Result:
        return Result(f"UPDATE {self._dml_table(stmt.ast).update(stmt.ast)}")

    def _do_Delete(self, stmt: st.Delete) -> Result:
        return Result(f"DELETE {self._dml_table(stmt.ast).delete(stmt.ast)}")

    def _do_Transaction(self, stmt: st.Transaction) -> Result:
        return Result(stmt.action.upper())

    def _do_Query(self, stmt: st.Query) -> Result:
        bound = bind_query(stmt.query, self._queryable)
        with self._query_lock:
            self._querying = True
        try:
            rel = self.con.sql(bound.query.sql("duckdb"))
            types = [from_duckdb(str(t)) for t in rel.types]
            rows = rel.fetchall()
        except duckdb.InterruptException as e:
            raise SqlStreamError("canceling statement due to user request", sqlstate="57014") from e
        except duckdb.Error as e:  # a runtime error (a bad cast, ...) with its SQLSTATE
            raise duckdb_error(e) from e
        finally:
            with self._query_lock:
                self._querying = False
        cols = [Column(n, t) for n, t in zip(rel.columns, types, strict=True)]
        return Result(f"SELECT {len(rows)}", cols, rows)

    def interrupt_query(self) -> bool:
        """Cancel the ad-hoc SELECT running now, if one is (thread-safe; never an epoch)."""
        with self._query_lock:
            if self._querying:
                self.con.interrupt()
                return True
        return False

    def _queryable(self, name: str) -> list[Column] | None:
        if name in self.sources:
            raise FeatureNotSupported(
                f'cannot query source "{name}" directly: it stores nothing; create a '
                "materialized view over it"
            )
        return self._resolve_schema(name)

    def query(self, sql_text: str) -> pa.Table:
        """Run an ad-hoc SELECT over views (for tests and tools)."""
        stmt = parse_one(sql_text)
        if not isinstance(stmt, st.Query):
            raise FeatureNotSupported("query() takes a SELECT")
        bound = bind_query(stmt.query, self._queryable)
        return self.con.sql(bound.query.sql("duckdb")).to_arrow_table()

    # -- running --------------------------------------------------------------------------

    def freeze(self) -> None:
        """End every source's input at what is available now (``run --once``)."""
        self._frozen = True
        for p in self.pipelines.values():
            for r in p.readers:
                r.source.freeze()

    def readers(self) -> list[Reader]:
        return [r for p in self.pipelines.values() for r in p.readers]

    def run_epoch(self) -> int:
        """Poll every reader once and push what arrives; returns the rows read.

        The readers of one pipeline are aligned in event time (:mod:`.alignment`): none reads
        more than about ``align_max_lead_us`` past where the one that gets least far ends
        this epoch.
        """
        if self._in_flight is not None and self._in_flight.done():
            self.settle()  # its stats now, or its failure without waiting for the next one
        total = 0
        now = time.monotonic()
        full = self.settings.batch_rows
        for p in list(self.pipelines.values()):
            aligning = sum(r.watermark_column is not None for r in p.readers) > 1
            reach = alignment.reach(p.readers, full, self.align_idle_s, now) if aligning else {}
            # the reader furthest behind goes first: those after it are sized against where
            # it actually got to (its source may have had less than asked, or nothing)
            order = alignment.poll_order(p.readers) if aligning else range(len(p.readers))
            for i in order:
                r = p.readers[i]
                budget = (
                    alignment.poll_budget(r, i, reach, full, self.align_max_lead_us)
                    if aligning
                    else full
                )
                if budget == 0:
                    r.held_epochs += 1
                    continue
                data = r.poll(self.con, budget)
                if i in reach:
                    if alignment.moving(r):
                        reach[i] = r.watermark_us  # type: ignore[assignment]
                    else:
                        del reach[i]
                self._check_bad_records(r)
                if data is not None:
                    total += data.num_rows
                    p.feed(r.source_name, data)
            p.advance()
        self.rows_in += total
        return total

    def _check_bad_records(self, r: Reader) -> None:
        if not r.dead_letters:
            return
        if r.on_error == "fail":
            d = r.dead_letters[0]
            raise DataException(
                f'source "{r.source_name}": bad record at {d.offset}: {d.reason}'
            )
        if r.on_error == "skip":
            r.skipped += len(r.dead_letters)
            r.dead_letters.clear()

    def finished(self) -> bool:
        """True when every reader has read all it ever will (bounded or frozen sources)."""
        return all(r.source.finished() for r in self.readers())

    def checkpoint_due(self) -> bool:
        """Whether the loop should checkpoint now. An infinite interval means only when asked
        (FLUSH, stop, the end of a bounded run): the benchmarks' "no checkpoints" runs."""
        interval = self.settings.checkpoint_interval
        if math.isinf(interval):
            return False
        if self.last_checkpoint is None and self._in_flight is None and self.rows_in:
            # A process's first checkpoint comes with the first rows it reads, so that after
            # a (re)start output shows at once rather than an interval (and a state load) later.
            return True
        return time.monotonic() - self.last_checkpoint_at >= interval

    def checkpoint(self, *, wait: bool = True) -> CheckpointStats | None:
        """Seal a checkpoint and commit it; with ``wait=False`` the commit runs in the
        committer's thread while the caller goes on (its stats, or its failure, come with the
        next ``settle``).

        A checkpoint is sealed while the previous one may still be committing (sealing is
        engine-thread work, the commit touches only what was sealed), and is handed to the
        committer once that one has settled: commits run one at a time, in epoch order, and
        one that fails leaves the engine broken before the next is submitted (the engine
        recovers from the last committed checkpoint, so the sealed one is simply dropped).
        Nexmark q17 at 2 M events waited 30-90 ms for the previous commit before sealing
        its last checkpoint (40-60 ms of sealing), which now overlap."""
        if self.broken is not None:
            raise self.broken
        if self._committer is None:
            self._committer = ThreadPoolExecutor(1, thread_name_prefix="sqlstream-checkpoint")
        # The interval runs from one checkpoint's start to the next, so a slow commit does
        # not stretch the period (and the latency bound) by its own duration.
        started = time.monotonic()
        epoch = max(self.last_epoch, self._sealed_epoch) + 1
        for p in self.pipelines.values():
            p.before_checkpoint()
        rows_out = sum(p.rows_out for p in self.pipelines.values())
        sealed = protocol.seal(
            epoch,
            state_tables=[t for p in self.pipelines.values() for t in p.state_tables],
            readers=self.readers(),
            sinks=list(self.sinks.values()),
            rows_in=self.rows_in - self._rows_in_ckpt,
            rows_out=rows_out - self._rows_out_ckpt,
            in_transaction=self._table_log_trims(),
        )
        self._rows_in_ckpt = self.rows_in
        self._rows_out_ckpt = rows_out
        self.last_checkpoint_at = started
        self.settle()
        self._sealed_epoch = epoch
        self._in_flight = self._committer.submit(self._commit, sealed)
        return self.settle() if wait else None

    def _commit(self, sealed: protocol.Sealed) -> CheckpointStats:
        """The committer's work. Its connection is opened here, on first use, so the engine
        does not wait for it (4-5 ms, a twentieth of a 2 M-event run of Nexmark q2); if that
        fails, the commit fails like any other (see ``checkpoint``)."""
        if self._commit_conn is None:
            self._commit_conn = catalog_connect(self.catalog_dsn)
        return protocol.commit(self.store, self._commit_conn, sealed)

    def settle(self) -> CheckpointStats | None:
        """Wait for the checkpoint in flight to commit; raises what made it fail (the engine
        must then recover from the last committed checkpoint, so every later call raises it
        again). Returns its stats."""
        if self.broken is not None:
            raise self.broken
        job, self._in_flight = self._in_flight, None
        if job is None:
            return None
        try:
            stats = job.result()
        except BaseException as e:
            self.broken = e
            raise
        self.last_epoch = stats.epoch
        self.last_checkpoint = stats
        return stats

    def metrics(self) -> dict[str, object]:
        """A snapshot of the counters the server exports (Prometheus) and SHOW JOBS prints."""
        ckpt = self.last_checkpoint
        return {
            "rows_in": self.rows_in,
            "epoch": self.last_epoch,
            "checkpoint_duration_ms": ckpt.duration_ms if ckpt else None,
            "checkpoint_age_s": time.monotonic() - self.last_checkpoint_at,
            "readers": [
                {
                    "object": r.consumer,
                    "source": r.source_name,
                    "rows": r.rows_read,
                    "late_rows": r.late_rows,
                    "skipped_rows": r.skipped,
                    "watermark_us": r.watermark_us,
                    "held_epochs": r.held_epochs,
                }
                for r in self.readers()
            ],
            "pipelines": [
                {
                    "object": p.name,
                    "kind": p.kind,
                    "rows_out": p.rows_out,
                    "state_rows": {t.operator_id: t.row_count() for t in p.state_tables},
                }
                for p in self.pipelines.values()
            ],
            "sinks": [
                {"sink": s.name, "rows": s.rows_total, "pending": s.rows_pending}
                for s in self.sinks.values()
            ],
        }

    def _table_log_trims(self) -> Callable[[psycopg.Cursor], None] | None:
        """Trimming, in the checkpoint transaction, the table log entries every reader has
        checkpointed past (positions taken now: the commit runs while readers go on)."""
        below: dict[Table, int | None] = {}
        for name, table in self.tables.items():
            offsets = [
                int(r.offsets.get("0", 0)) for r in self.readers() if r.source_name == name
            ]
            below[table] = min(offsets) if offsets else None
        if not below:
            return None

        def trim(cur: psycopg.Cursor) -> None:
            for table, seq in below.items():
                table.trim_log(cur, seq)

        return trim

    def close(self) -> None:
        if self._in_flight is not None:
            try:
                self.settle()
            except Exception as e:  # noqa: BLE001 - the last committed checkpoint stays valid
                log.warning("the last checkpoint did not commit: %s", e)
        if self._committer is not None:
            self._committer.shutdown()
        if self._commit_conn is not None:
            self._commit_conn.close()
        for p in self.pipelines.values():
            for r in p.readers:
                r.source.close()
        for s in self.sinks.values():
            s.sink.close()
        self.store.close()
        self.con.close()

