"""Error classes. Each carries the Postgres SQLSTATE a client would see.

>>> e = SqlSyntaxError("unexpected token", line=1, col=8, token="FROMM")
>>> str(e)
'unexpected token (line 1, column 8, near "FROMM")'
>>> e.sqlstate
'42601'
"""

from __future__ import annotations


class SqlStreamError(Exception):
    """Base class: a message, a SQLSTATE and, for SQL errors, where in the text."""

    sqlstate = "XX000"

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        line: int | None = None,
        col: int | None = None,
        token: str | None = None,
        position: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if sqlstate:
            self.sqlstate = sqlstate
        self.line = line
        self.col = col
        self.token = token
        # 1-based character offset into the statement text, as pgwire's ErrorResponse 'P'.
        self.position = position

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.col is not None:
            where.append(f"column {self.col}")
        if self.token:
            where.append(f'near "{self.token}"')
        return f"{self.message} ({', '.join(where)})" if where else self.message


class SqlSyntaxError(SqlStreamError):
    sqlstate = "42601"


class UndefinedTable(SqlStreamError):
    sqlstate = "42P01"


class UndefinedColumn(SqlStreamError):
    sqlstate = "42703"


class DuplicateObject(SqlStreamError):
    sqlstate = "42P07"


class DependentObjectsStillExist(SqlStreamError):
    sqlstate = "2BP01"


class FeatureNotSupported(SqlStreamError):
    sqlstate = "0A000"


class InvalidParameterValue(SqlStreamError):
    """A bad connector option or setting."""

    sqlstate = "22023"


class DatatypeMismatch(SqlStreamError):
    sqlstate = "42804"


class DataException(SqlStreamError):
    """A record that cannot be decoded (used when on_error = 'fail')."""

    sqlstate = "22000"


class ObjectChanged(SqlStreamError):
    """A job file redefines an object that already runs with another definition."""

    sqlstate = "42P07"


class ConnectorError(SqlStreamError):
    """An external system failed; retried where the design says so."""

    sqlstate = "58000"


class CatalogError(SqlStreamError):
    """The catalog database is unreachable or inconsistent."""

    sqlstate = "08006"
