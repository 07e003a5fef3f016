"""What a statement produces on the wire: a command tag and, for queries, columns and rows.

>>> command_tag("CREATE_MATERIALIZED_VIEW", 0), command_tag("INSERT 3", 0), command_tag("SHOW", 2)
('CREATE MATERIALIZED VIEW', 'INSERT 0 3', 'SHOW')
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlstream.types import Column


@dataclass
class Outcome:
    tag: str
    #: None: the statement returns no rows (NoData); a list, even empty: a row set
    columns: list[Column] | None = None
    rows: list[Sequence[Any]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


_INSERT = re.compile(r"^INSERT\s+(\d+)$")


def command_tag(status: str, nrows: int) -> str:
    """The CommandComplete tag Postgres would send for an engine status.

    The engine writes kinds with underscores (``CREATE_SOURCE``); Postgres tags use spaces.
    ``INSERT n`` gains the legacy OID field (``INSERT 0 n``) that drivers parse.
    """
    tag = status.strip().replace("_", " ")
    m = _INSERT.match(tag)
    if m:
        return f"INSERT 0 {m.group(1)}"
    if tag in ("INSERT", "UPDATE", "DELETE", "SELECT", "MERGE", "FETCH", "MOVE", "COPY"):
        return f"INSERT 0 {nrows}" if tag == "INSERT" else f"{tag} {nrows}"
    return tag


def from_engine(result: Any) -> Outcome:
    """An engine ``Result`` (status, columns, rows, notices) as an Outcome."""
    rows = list(result.rows or [])
    columns = list(result.columns) if result.columns is not None else None
    return Outcome(command_tag(result.status, len(rows)), columns, rows, list(result.notices or []))
