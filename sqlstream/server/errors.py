"""Any exception a statement raises, as the error a Postgres client expects.

sqlstream's own errors carry their SQLSTATE. DuckDB's exceptions (an ad-hoc query that fails
at run time) are mapped by class to the nearest Postgres SQLSTATE; anything else is an
internal error (XX000) whose message still reaches the client, and the session stays usable.

>>> import duckdb
>>> e = from_exception(duckdb.ConversionException("Conversion Error: bad"))
>>> e.sqlstate, e.message
('22P02', 'Conversion Error: bad')
"""

from __future__ import annotations

import psycopg

from sqlstream.errors import SqlStreamError

_DUCKDB_STATES = {
    "ParserException": "42601",
    "BinderException": "42703",
    "CatalogException": "42P01",
    "ConversionException": "22P02",
    "OutOfRangeException": "22003",
    "InvalidInputException": "22023",
    "ConstraintException": "23000",
    "NotImplementedException": "0A000",
    "OutOfMemoryException": "53200",
    "InterruptException": "57014",
    "PermissionException": "42501",
    "TypeMismatchException": "42804",
}


class QueryCanceled(SqlStreamError):
    sqlstate = "57014"


def from_exception(e: BaseException) -> SqlStreamError:
    """``e`` as a SqlStreamError (itself when it already is one)."""
    if isinstance(e, SqlStreamError):
        return e
    name = type(e).__name__
    message = str(e).strip() or name
    if type(e).__module__.startswith("duckdb") or name in _DUCKDB_STATES:
        state = _DUCKDB_STATES.get(name, "XX000")
        if "division by zero" in message.lower():
            state = "22012"
        # DuckDB appends the statement with a caret: the first line is the message.
        return SqlStreamError(message.splitlines()[0], sqlstate=state)
    if isinstance(e, psycopg.OperationalError):
        return SqlStreamError(f"catalog database unavailable: {message}", sqlstate="08006")
    if isinstance(e, psycopg.Error) and e.sqlstate:
        return SqlStreamError(message.splitlines()[0], sqlstate=e.sqlstate)
    return SqlStreamError(f"internal error: {name}: {message.splitlines()[0]}", sqlstate="XX000")
