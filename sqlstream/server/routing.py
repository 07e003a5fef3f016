"""Where a statement is answered: by the session itself, by introspection, or by the engine.

* the session: transaction control (``BEGIN``/``COMMIT``/``ROLLBACK``/``SAVEPOINT``),
  ``SET``/``SHOW``/``RESET`` of connection parameters, ``DISCARD``, ``DEALLOCATE``,
  ``LISTEN``/``UNLISTEN``, ``CLOSE`` -- things a Postgres connection owns;
* introspection (:mod:`sqlstream.server.introspection`): queries of ``pg_catalog``,
  ``information_schema``, the ``sqlstream`` system schema, and queries that read no
  relation (``SELECT 1``, ``SELECT version()``);
* the engine: everything else -- DDL, ``FLUSH``, ``SHOW SOURCES``, ``SELECT`` from views,
  ``INSERT``/``UPDATE``/``DELETE``.

>>> route("BEGIN").kind, route("SET application_name = 'x'").kind, route("SELECT 1").kind
('txn', 'set', 'system')
>>> r = route("SELECT * FROM v WHERE a = $1"); (r.kind, r.read_only)
('engine', True)
>>> route("SET checkpoint_interval = '2s'").kind, route("-- only a comment").kind
('engine', 'empty')
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlstream.errors import FeatureNotSupported
from sqlstream.server.introspection import is_system_query
from sqlstream.server.session_params import SETTABLE, parse_set
from sqlstream.server.sqltext import code_only, first_words
from sqlstream.sql import statements as st
from sqlstream.sql.parser import parse

#: engine statements that change nothing: safe to run early (Describe) or to abandon (cancel)
_READ_ONLY = (st.Query, st.Show, st.Describe, st.Explain)


@dataclass
class Route:
    #: 'empty' | 'txn' | 'set' | 'reset' | 'show' | 'noop' | 'discard' | 'deallocate' |
    #: 'system' | 'engine'
    kind: str
    read_only: bool = True
    #: txn: 'begin' | 'start' | 'commit' | 'rollback' | 'savepoint' | 'release' | 'rollback_to';
    #: set/reset/show: the parameter name; noop: the command tag
    action: str = ""
    value: str = ""
    #: engine: the parsed statement (placeholders still in it)
    statement: st.Statement | None = None


def _words(text: str, n: int = 4) -> list[str]:
    return first_words(text, n)


def route(text: str) -> Route:
    """Decide where ``text`` (one statement, possibly with ``$n``) is answered."""
    words = _words(text)
    if not words:
        return Route("empty")
    head = words[0]
    second = words[1] if len(words) > 1 else ""
    if head in ("BEGIN", "START") and (head == "BEGIN" or second == "TRANSACTION"):
        return Route("txn", action="begin" if head == "BEGIN" else "start")
    if head in ("COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE"):
        if second == "PREPARED" or (head == "PREPARE" and second == "TRANSACTION"):
            raise FeatureNotSupported("two-phase commit (PREPARE TRANSACTION) is not supported")
        if head in ("ROLLBACK", "ABORT") and second == "TO":
            return Route("txn", action="rollback_to")
        action = {"END": "commit", "ABORT": "rollback"}.get(head, head.lower())
        return Route("txn", action=action)
    if head == "PREPARE" and second == "TRANSACTION":
        raise FeatureNotSupported("two-phase commit (PREPARE TRANSACTION) is not supported")
    if head == "SET":
        if second in ("TRANSACTION", "CONSTRAINTS") or words[1:3] == ["SESSION", "CHARACTERISTICS"]:
            return Route("noop", action="SET")
        parsed = parse_set(text)
        if parsed and (parsed[0] in SETTABLE or parsed[0] in ("names",)):
            name = "client_encoding" if parsed[0] == "names" else parsed[0]
            return Route("set", read_only=False, action=name, value=parsed[1])
    if head == "RESET":
        name = " ".join(code_only(text).split()[1:]).strip().rstrip(";").strip().strip('"').lower()
        return Route("reset", read_only=False, action=name)
    if head == "SHOW":
        name = " ".join(code_only(text).split()[1:]).strip().rstrip(";").strip().strip('"').lower()
        if name in SETTABLE or name in _SHOWABLE:
            return Route("show", action=name)
    if head == "DISCARD":
        return Route("discard", read_only=False, action="DISCARD " + (second or "ALL"))
    if head == "DEALLOCATE":
        target = words[2] if second == "PREPARE" and len(words) > 2 else second
        return Route("deallocate", read_only=False, action=target)
    if head in ("LISTEN", "UNLISTEN"):
        return Route("noop", action=head)
    if head == "CLOSE":
        return Route("noop", action="CLOSE CURSOR ALL" if second == "ALL" else "CLOSE CURSOR")
    if is_system_query(text):
        return Route("system")
    statements = parse(text)
    if not statements:
        return Route("empty")
    if len(statements) > 1:
        raise FeatureNotSupported("cannot insert multiple commands into a prepared statement",
                                  sqlstate="42601")
    stmt = statements[0]
    return Route("engine", read_only=isinstance(stmt, _READ_ONLY), statement=stmt)


_SHOWABLE = {
    "server_version", "server_version_num", "server_encoding", "integer_datetimes",
    "is_superuser", "session_authorization", "in_hot_standby", "max_identifier_length",
    "block_size", "lc_collate", "lc_ctype", "lc_messages", "max_connections",
    "transaction isolation level",
}
