"""One client connection after authentication: the simple and the extended query protocol.

A session owns its connection parameters, its transaction status, and its prepared
statements and portals. Statements are routed (:mod:`sqlstream.server.routing`) to the
session itself, to introspection, or to the engine thread (:mod:`sqlstream.server.host`);
the session awaits the engine's answer without blocking the event loop.

Transactions: sqlstream's statements take effect at once (there is no rollback of DDL), but
the protocol's transaction status is kept as Postgres keeps it -- ``T`` after ``BEGIN``,
``E`` after an error inside a block (further statements are refused with 25P02 until
``ROLLBACK``) -- because drivers track it and rely on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlglot
from sqlglot import exp

from sqlstream.errors import SqlStreamError
from sqlstream.server import protocol as pq
from sqlstream.server.errors import QueryCanceled, from_exception
from sqlstream.server.introspection import SessionContext
from sqlstream.server.outcome import Outcome, from_engine
from sqlstream.server.params import bind_text, infer_types, null_literals, param_count
from sqlstream.server.routing import Route, route
from sqlstream.server.session_params import SessionParams
from sqlstream.server.sqltext import split_statements, substitute
from sqlstream.server.values import describe_param_type, encode, type_modifier, type_oid, type_size
from sqlstream.sql import statements as st
from sqlstream.sql.parser import parse
from sqlstream.types import Column

if TYPE_CHECKING:
    from sqlstream.server.pgwire import PgWireServer

log = logging.getLogger("sqlstream.server")

_FLUSH_BYTES = 256 * 1024  # write out buffered messages beyond this much
_UNDESCRIBED = object()


@dataclass
class Prepared:
    """A parsed statement (``Parse``): its text with ``$n`` kept, and what it describes to."""

    text: str
    route: Route
    param_oids: list[int]
    #: the row description computed by Describe (None = no rows); _UNDESCRIBED until then
    columns: Any = _UNDESCRIBED


@dataclass
class Portal:
    """A bound statement (``Bind``), run by ``Execute``, possibly in several chunks."""

    prepared: Prepared
    text: str
    result_formats: list[int]
    outcome: Outcome | None = None
    empty: bool = False
    described: bool = False
    sent: int = 0


class Session:
    def __init__(
        self,
        server: PgWireServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        user: str,
        database: str,
        params: SessionParams,
        pid: int,
        secret: int,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.user = user
        self.database = database
        self.params = params
        self.pid = pid
        self.secret = secret
        self.status = "I"
        self.statements: dict[str, Prepared] = {}
        self.portals: dict[str, Portal] = {}
        self._out: list[bytes] = []
        self._out_size = 0
        self._skip_to_sync = False
        self._cancel = asyncio.Event()
        self._busy = False

    # -- output ------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)

    async def flush(self) -> None:
        if self._out:
            self.writer.write(b"".join(self._out))
            self._out.clear()
            self._out_size = 0
        await self.writer.drain()

    async def _maybe_flush(self) -> None:
        if self._out_size >= _FLUSH_BYTES:
            await self.flush()

    def send_error(self, e: SqlStreamError, *, offset: int | None = 0) -> None:
        self.server.stats.errors += 1
        position = e.position + offset if (e.position and offset is not None) else None
        self.send(pq.error_response(e.sqlstate, e.message, position=position))
        if self.status == "T":
            self.status = "E"

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve messages until the client terminates or the connection breaks."""
        for name, value in self.params.reported():
            self.send(pq.parameter_status(name, value))
        self.send(pq.backend_key_data(self.pid, self.secret))
        self.send(pq.ready_for_query(self.status))
        await self.flush()
        handlers: dict[int, Callable[[pq.Payload], Any]] = {
            ord("Q"): self._simple_query,
            ord("P"): self._parse,
            ord("B"): self._bind,
            ord("D"): self._describe,
            ord("E"): self._execute,
            ord("C"): self._close,
            ord("S"): self._sync,
            ord("H"): self._flush_message,
        }
        while True:
            kind, body = await pq.read_message(self.reader, self.server.config.max_message_bytes)
            if kind == ord("X"):
                return
            if kind in (ord("d"), ord("c"), ord("f")):
                continue  # COPY data outside COPY: Postgres ignores it too
            handler = handlers.get(kind)
            if handler is None:  # 'p' (password) after authentication
                raise pq.ProtocolError(f"unexpected message type \"{chr(kind)}\"")
            if self._skip_to_sync and kind != ord("S"):
                if kind == ord("H"):
                    await self.flush()
                continue  # after an error, the extended protocol discards until Sync
            failed = False
            try:
                await handler(body)
            except pq.ProtocolError:
                raise
            except SqlStreamError as e:
                self.send_error(e)
                failed = True
            except Exception as e:  # noqa: BLE001 - a bug answers one statement, not the server
                log.exception("error answering a %s message", chr(kind))
                self.send_error(from_exception(e))
                failed = True
            if failed:
                self._skip_to_sync = kind != ord("Q")
                if kind == ord("Q"):
                    self.send(pq.ready_for_query(self.status))
            if failed or kind in (ord("Q"), ord("S"), ord("H")):
                await self.flush()
            else:
                await self._maybe_flush()

    def cancel(self) -> None:
        """A CancelRequest for this session: stop the running statement if it can be."""
        if self._busy:
            self._cancel.set()

    # -- simple query -------------------------------------------------------------------------

    async def _simple_query(self, body: pq.Payload) -> None:
        text = body.cstring()
        pieces = split_statements(text)
        if not pieces:
            self.send(pq.empty_query())
        for piece in pieces:
            try:
                r = route(piece.text)
                outcome = await self._run(r, piece.text)
            except SqlStreamError as e:
                self.send_error(e, offset=piece.start)
                break
            except Exception as e:  # noqa: BLE001
                log.exception("error running %r", piece.text[:200])
                self.send_error(from_exception(e))
                break
            self.server.stats.queries += 1
            if outcome is None:
                self.send(pq.empty_query())
                continue
            for notice in outcome.notices:
                self.send(pq.notice_response(notice))
            if outcome.columns is not None:
                self.send(_row_description(outcome.columns, [0]))
                await self._send_rows(outcome.columns, outcome.rows, [0])
            self.send(pq.command_complete(outcome.tag))
        self.send(pq.ready_for_query(self.status))

    # -- running one statement ------------------------------------------------------------------

    def _check_transaction(self, r: Route) -> None:
        if self.status == "E" and not (r.kind == "txn" and r.action in ("commit", "rollback", "rollback_to")):
            raise SqlStreamError(
                "current transaction is aborted, commands ignored until end of transaction block",
                sqlstate="25P02",
            )

    async def _run(self, r: Route, text: str) -> Outcome | None:
        """Run a routed statement (parameters already bound into ``text``)."""
        self._check_transaction(r)
        if r.kind == "empty":
            return None
        if r.kind == "txn":
            return self._transaction(r.action)
        if r.kind == "set":
            shown = self.params.set(r.action, r.value)
            if shown:
                self.send(pq.parameter_status(*shown))
            return Outcome("SET")
        if r.kind == "reset":
            if r.action == "all":
                for name in list(self.params.values):
                    if (shown := self.params.reset(name)) is not None:
                        self.send(pq.parameter_status(*shown))
            elif self.params.known(r.action):
                if (shown := self.params.reset(r.action)) is not None:
                    self.send(pq.parameter_status(*shown))
            return Outcome("RESET")
        if r.kind == "show":
            return Outcome("SHOW", [Column(r.action, "text")], [(self.params.show(r.action),)])
        if r.kind == "noop":
            return Outcome(r.action)
        if r.kind == "discard":
            self.statements.clear()
            self.portals.clear()
            return Outcome(r.action)
        if r.kind == "deallocate":
            if r.action in ("ALL", ""):
                self.statements.clear()
            else:
                name = text.split()[-1].strip(";").strip('"')
                if self.statements.pop(name, None) is None and self.statements.pop(name.lower(), None) is None:
                    raise SqlStreamError(f'prepared statement "{name}" does not exist', sqlstate="26000")
            return Outcome("DEALLOCATE ALL" if r.action == "ALL" else "DEALLOCATE")
        if r.kind == "system":
            return await self._cancellable(
                asyncio.ensure_future(self.server.introspection.run(text, self.context())), True
            )
        return await self._engine_statement(r, text)

    def _transaction(self, action: str) -> Outcome:
        tag = {"begin": "BEGIN", "start": "START TRANSACTION", "commit": "COMMIT",
               "rollback": "ROLLBACK", "savepoint": "SAVEPOINT", "release": "RELEASE",
               "rollback_to": "ROLLBACK"}[action]
        if action in ("begin", "start"):
            if self.status != "I":
                self.send(pq.notice_response("there is already a transaction in progress",
                                             severity="WARNING", sqlstate="25001"))
            self.status = "T" if self.status == "I" else self.status
        elif action in ("commit", "rollback"):
            if self.status == "I":
                self.send(pq.notice_response("there is no transaction in progress",
                                             severity="WARNING", sqlstate="25P01"))
            if self.status == "E":
                tag = "ROLLBACK"
            self.status = "I"
        else:
            if self.status == "I":
                raise SqlStreamError(f"{tag} can only be used in transaction blocks", sqlstate="25P01")
            if action == "rollback_to":
                self.status = "T"
        return Outcome(tag)

    async def _engine_statement(self, r: Route, text: str) -> Outcome:
        # Parsed anew for each run: the engine may annotate the statement's AST in place,
        # and a prepared statement runs many times.
        statements = parse(text)
        if len(statements) != 1:
            raise SqlStreamError("cannot insert multiple commands into a prepared statement",
                                 sqlstate="42601")
        stmt = statements[0]
        result = await self._on_engine(lambda engine: engine.execute(stmt), r.read_only)
        return from_engine(result)

    async def _on_engine(self, fn: Callable[[Any], Any], read_only: bool) -> Any:
        future = self.server.host.submit(fn)
        return await self._cancellable(asyncio.wrap_future(future), read_only, future)

    async def _cancellable(
        self, awaitable: asyncio.Future[Any], read_only: bool, job: cf.Future[Any] | None = None
    ) -> Any:
        """Await a statement; a CancelRequest ends the wait when the statement has not
        started (it is dropped) or changes nothing (its result is dropped). A statement with
        effects (DDL) runs to its end: it cannot be half-done."""
        self._busy = True
        self._cancel.clear()
        try:
            while True:
                waiter = asyncio.ensure_future(self._cancel.wait())
                try:
                    done, _ = await asyncio.wait({awaitable, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if awaitable in done:
                    try:
                        return awaitable.result()
                    except SqlStreamError:
                        raise
                    except Exception as e:  # DuckDB's own errors, a lost catalog, ...
                        raise from_exception(e) from e
                self._cancel.clear()
                dropped = job.cancel() if job is not None else False
                if not dropped and read_only and job is not None:
                    self.server.host.interrupt(job)
                if dropped or read_only:
                    awaitable.add_done_callback(_consume)
                    raise QueryCanceled("canceling statement due to user request")
        finally:
            self._busy = False

    def context(self) -> SessionContext:
        return SessionContext(self.user, self.database, self.pid,
                              {**self.params.values, **self.params.fixed()})

    async def _send_rows(self, columns: Sequence[Column], rows: Sequence[Sequence[Any]],
                         formats: Sequence[int]) -> None:
        fmts = _formats(formats, len(columns))
        types = [c.type for c in columns]
        zone = self.params.timezone
        for row in rows:
            try:
                values = [encode(v, t, f, zone) for v, t, f in zip(row, types, fmts, strict=True)]
            except (TypeError, ValueError, OverflowError, ArithmeticError) as e:
                raise SqlStreamError(f"cannot send a value: {e}", sqlstate="22000") from None
            self.send(pq.data_row(values))
            if self._out_size >= _FLUSH_BYTES:
                await self.flush()

    # -- extended query -------------------------------------------------------------------------

    async def _parse(self, body: pq.Payload) -> None:
        name = body.cstring()
        text = body.cstring()
        count = body.int16()
        oids = [body.uint32() for _ in range(max(count, 0))]
        body.done()
        if name and name in self.statements:
            raise SqlStreamError(f'prepared statement "{name}" already exists', sqlstate="42P05")
        pieces = split_statements(text)
        if len(pieces) > 1:
            raise SqlStreamError("cannot insert multiple commands into a prepared statement",
                                 sqlstate="42601")
        one = pieces[0].text if pieces else ""
        r = route(one)
        n = param_count(one, oids)
        oids = oids + [0] * (n - len(oids))
        if any(o in (0, 705) for o in oids):
            oids = await self._infer(one, r, oids)
        self.statements[name] = Prepared(one, r, [describe_param_type(o) for o in oids])
        self.send(pq.parse_complete())

    async def _infer(self, text: str, r: Route, oids: list[int]) -> list[int]:
        """Types of the parameters the client left untyped, from how the query uses them."""
        if r.kind == "engine" and isinstance(r.statement, st.Query):
            tree: exp.Expression | None = r.statement.query
        elif r.kind == "system":
            try:
                tree = sqlglot.parse_one(text, read="postgres")
            except sqlglot.errors.ParseError:
                tree = None
        else:
            tree = None
        if tree is None:
            return oids
        schemas: dict[str, list[Column]] = {}
        if r.kind == "engine" and tree.find(exp.Table) is not None:
            schemas = await self.server.introspection.call(
                lambda i: {o.name: o.columns for o in i.objects()}
            )
        return infer_types(tree, schemas, oids)

    async def _bind(self, body: pq.Payload) -> None:
        portal_name = body.cstring()
        stmt_name = body.cstring()
        formats = [body.int16() for _ in range(max(body.int16(), 0))]
        values: list[bytes | None] = []
        for _ in range(max(body.int16(), 0)):
            size = body.int32()
            values.append(None if size < 0 else body.bytes(size))
        result_formats = [body.int16() for _ in range(max(body.int16(), 0))]
        body.done()
        prepared = self.statements.get(stmt_name)
        if prepared is None:
            raise SqlStreamError(f'prepared statement "{stmt_name}" does not exist', sqlstate="26000")
        if portal_name and portal_name in self.portals:
            raise SqlStreamError(f'portal "{portal_name}" already exists', sqlstate="42P03")
        self._check_transaction(prepared.route)
        if any(f not in (0, 1) for f in formats + result_formats):
            raise pq.ProtocolError("invalid format code")
        text = bind_text(prepared.text, values, formats, prepared.param_oids)
        self.portals[portal_name] = Portal(prepared, text, result_formats)
        self.send(pq.bind_complete())

    async def _describe(self, body: pq.Payload) -> None:
        what = body.byte()
        name = body.cstring()
        body.done()
        if what == ord("S"):
            prepared = self.statements.get(name)
            if prepared is None:
                raise SqlStreamError(f'prepared statement "{name}" does not exist', sqlstate="26000")
            columns = await self._describe_statement(prepared)
            self.send(pq.parameter_description(prepared.param_oids))
            self.send(_row_description(columns, [0]) if columns is not None else pq.no_data())
        elif what == ord("P"):
            portal = self.portals.get(name)
            if portal is None:
                raise SqlStreamError(f'portal "{name}" does not exist', sqlstate="34000")
            columns = None
            if portal.prepared.route.read_only and portal.prepared.route.kind != "empty":
                # Running it now is harmless and gives the exact row description.
                await self._materialize(portal)
                columns = portal.outcome.columns if portal.outcome else None
            portal.described = True
            self.send(_row_description(columns, portal.result_formats) if columns is not None else pq.no_data())
        else:
            raise pq.ProtocolError(f"invalid DESCRIBE message subtype {what}")

    async def _describe_statement(self, prepared: Prepared) -> list[Column] | None:
        """Columns of a statement before it is bound: typed NULLs stand in for parameters,
        and a query is run with LIMIT 0 (its columns without its rows)."""
        if prepared.columns is not _UNDESCRIBED:
            return prepared.columns
        r = prepared.route
        columns: list[Column] | None = None
        text = substitute(prepared.text, null_literals(prepared.param_oids))
        if r.kind == "show":
            columns = [Column(r.action, "text")]
        elif r.kind == "system":
            columns = (await self.server.introspection.run(text, self.context())).columns
        elif r.kind == "engine" and r.read_only:
            columns = await self._engine_columns(text)
        prepared.columns = columns
        return columns

    async def _engine_columns(self, text: str) -> list[Column] | None:
        stmt = parse(text)[0]
        if isinstance(stmt, st.Query):
            zero = st.Query(query=_limit_zero(stmt.query), text=stmt.text, line=stmt.line)
            try:
                result = await self._on_engine(lambda engine: engine.execute(zero), True)
                return list(result.columns) if result.columns is not None else None
            except SqlStreamError:
                if isinstance(stmt.query, exp.Select):
                    raise  # LIMIT 0 changed nothing else: the query itself is wrong
                # a set operation wrapped in a subquery the engine refused: run it as it is
        result = await self._on_engine(lambda engine: engine.execute(stmt), True)
        return list(result.columns) if result.columns is not None else None

    async def _materialize(self, portal: Portal) -> None:
        if portal.outcome is not None or portal.empty:
            return
        r = portal.prepared.route
        bound = portal.text != portal.prepared.text
        try:
            if r.kind == "engine" and bound:
                r = route(portal.text)  # the bound text parses into its own statement
            outcome = await self._run(r, portal.text)
        except SqlStreamError as e:
            if bound:
                e.position = None  # a position in the bound text would mislead
            raise
        if outcome is None:
            portal.empty = True
        else:
            portal.outcome = outcome
            for notice in outcome.notices:
                self.send(pq.notice_response(notice))

    async def _execute(self, body: pq.Payload) -> None:
        name = body.cstring()
        max_rows = body.int32()
        body.done()
        portal = self.portals.get(name)
        if portal is None:
            raise SqlStreamError(f'portal "{name}" does not exist', sqlstate="34000")
        await self._materialize(portal)
        self.server.stats.queries += 1
        if portal.empty:
            self.send(pq.empty_query())
            return
        outcome = portal.outcome
        assert outcome is not None
        if outcome.columns is None:
            self.send(pq.command_complete(outcome.tag))
            return
        columns = outcome.columns
        described = portal.prepared.columns
        if not portal.described and isinstance(described, list) and len(described) == len(columns):
            columns = described  # the client decodes with the statement's description
        end = len(outcome.rows) if max_rows <= 0 else min(len(outcome.rows), portal.sent + max_rows)
        await self._send_rows(columns, outcome.rows[portal.sent : end], portal.result_formats)
        sent_now = end - portal.sent
        portal.sent = end
        if end < len(outcome.rows):
            self.send(pq.portal_suspended())
        elif outcome.tag.startswith("SELECT"):
            self.send(pq.command_complete(f"SELECT {sent_now}"))
        else:
            self.send(pq.command_complete(outcome.tag))

    async def _close(self, body: pq.Payload) -> None:
        what = body.byte()
        name = body.cstring()
        body.done()
        if what == ord("S"):
            self.statements.pop(name, None)
        elif what == ord("P"):
            self.portals.pop(name, None)
        else:
            raise pq.ProtocolError(f"invalid CLOSE message subtype {what}")
        self.send(pq.close_complete())

    async def _sync(self, body: pq.Payload) -> None:
        body.done()
        self._skip_to_sync = False
        if self.status == "I":
            self.portals.clear()  # portals end with their (implicit) transaction
        self.send(pq.ready_for_query(self.status))

    async def _flush_message(self, body: pq.Payload) -> None:
        body.done()


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned statement's result so nothing logs it as never retrieved."""
    if not future.cancelled():
        future.exception()


def _formats(formats: Sequence[int], n: int) -> list[int]:
    if not formats:
        return [0] * n
    if len(formats) == 1:
        return [formats[0]] * n
    if len(formats) != n:
        raise pq.ProtocolError(f"bind message has {len(formats)} result formats but query has {n} columns")
    return list(formats)


def _row_description(columns: Sequence[Column], formats: Sequence[int]) -> bytes:
    fmts = _formats(formats, len(columns))
    return pq.row_description(
        (c.name, type_oid(c.type), type_size(c.type), type_modifier(c.type), f)
        for c, f in zip(columns, fmts, strict=True)
    )


def _limit_zero(query: exp.Query) -> exp.Query:
    """The query with LIMIT 0: its columns, none of its rows."""
    if isinstance(query, exp.Select):
        return query.limit(0, copy=True)
    return exp.select("*").from_(query.copy().subquery("_described")).limit(0)

