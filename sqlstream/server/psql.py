"""Answers to the catalog queries psql's meta-commands send (``\\d``, ``\\dt``, ``\\dv``,
``\\dm``, ``\\dE``, ``\\d name``, ``\\d+ name``, ``\\l``, ``\\dn``, ``\\du``).

psql reads these results by column position, so an answer must have exactly the columns the
query asks for. Rather than emulating ``pg_catalog`` in full, each query is recognised by
its shape (psql 12-16 send the same shapes), its select list is cut into items, and each item
gets its value from the object it describes; items we have no notion of (row security,
publications, ...) get what an empty Postgres database would answer.

Sources appear as foreign tables (their data lives outside; ``\\d source`` shows the connector
as the "server" and the options as "FDW options"), materialized views as materialized views,
tables as tables. Sinks are not relations: ``SHOW SINKS`` and ``sqlstream.objects`` list them.

>>> items = select_items("SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) AS t, "
...                      "(SELECT 1 FROM x) FROM pg_catalog.pg_attribute a")
>>> [alias for _, alias in items]
['attname', 't', '?column?']
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlstream.server.catalog import RELKIND_WORDS, CatalogObject, display_type
from sqlstream.server.outcome import Outcome
from sqlstream.server.sqltext import code_only
from sqlstream.types import Column


@dataclass
class Context:
    """Who asks: shown as owner and database name."""

    user: str
    database: str


def select_items(sql: str) -> list[tuple[str, str]]:
    """(expression text, output name) of each item of the first top-level select list."""
    code = code_only(sql)
    lower = code.lower()
    start = re.search(r"\bselect\b", lower)
    if not start:
        return []
    depth, i, items, item_start = 0, start.end(), [], start.end()
    while i < len(code):
        c = code[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif depth == 0 and c == ",":
            items.append(sql[item_start:i])
            item_start = i + 1
        elif depth == 0 and re.match(r"\bfrom\b", lower[i:i + 5]) and (i == 0 or not lower[i - 1].isalnum()):
            break
        i += 1
    items.append(sql[item_start:i])
    return [(text.strip(), _output_name(text)) for text in items if text.strip()]


def _output_name(item: str) -> str:
    m = re.search(r"\bas\s+(?:\"((?:[^\"]|\"\")*)\"|([A-Za-z_][\w$]*))\s*$", item, re.I | re.S)
    if m:
        return m.group(1) if m.group(1) is not None else m.group(2).lower()
    m = re.search(r"(?:^|\.)\s*([A-Za-z_][\w$]*)\s*$", item.strip())
    if m and "(" not in item:
        return m.group(1).lower()
    return "?column?"


def _norm(sql: str) -> str:
    return " ".join(code_only(sql).lower().split())


def _regex(sql: str, column: str) -> re.Pattern[str] | None:
    m = re.search(
        re.escape(column) + r"\s+OPERATOR\(pg_catalog\.~\)\s+'((?:[^']|'')*)'", sql, re.I
    )
    if not m:
        return None
    try:
        return re.compile(m.group(1).replace("''", "'"))
    except re.error:
        return re.compile(re.escape(m.group(1)))


def _oid_in(sql: str, pattern: str) -> int | None:
    m = re.search(pattern + r"\s*=\s*'(\d+)'", sql, re.I)
    return int(m.group(1)) if m else None


def _answer(items: list[tuple[str, str]], rows: list[dict[str, Any]]) -> Outcome:
    """An Outcome with one text column per select item; each of ``rows`` maps an item to its
    value (by the item's output name, or by a ``~fragment`` of its text)."""
    columns = [Column(alias, "text") for _, alias in items]
    out = [tuple(_pick(row, text, alias) for text, alias in items) for row in rows]
    return Outcome(f"SELECT {len(out)}", columns, out)


def _pick(row: dict[str, Any], text: str, alias: str) -> Any:
    if alias in row:
        return row[alias]
    flat = " ".join(text.lower().split())
    for key, value in row.items():
        if key.startswith("~") and key[1:] in flat:
            return value
    return None


def _visible(objects: list[CatalogObject]) -> list[CatalogObject]:
    return [o for o in objects if o.relkind is not None]


# -- the queries -----------------------------------------------------------------------------

_EMPTY_CATALOGS = (
    "pg_policy", "pg_statistic_ext", "pg_publication", "pg_inherits", "pg_rewrite", "pg_trigger",
    "pg_constraint", "pg_index", "pg_event_trigger", "pg_extension", "pg_sequence",
    "pg_partitioned_table", "pg_depend", "pg_description", "pg_init_privs", "pg_seclabel",
)


def answer(sql: str, objects: list[CatalogObject], ctx: Context) -> Outcome | None:
    """The answer to a psql meta-command query, or None when ``sql`` is not one."""
    norm = _norm(sql)
    if "pg_catalog." not in norm:
        return None
    lower = sql.lower()
    items = select_items(sql)
    if not items:
        return None
    if "from pg_catalog.pg_class c" in norm and "c.relkind in (" in norm and 'as "schema"' in lower:
        return _list_relations(sql, items, objects, ctx)
    if norm.startswith("select c.oid, n.nspname, c.relname from pg_catalog.pg_class c"):
        return _lookup(sql, objects)
    if norm.startswith("select c.relchecks, c.relkind"):
        return _relation_properties(sql, items, objects)
    if "from pg_catalog.pg_attribute a" in norm and "a.attrelid =" in norm:
        return _attributes(sql, items, objects)
    if norm.startswith("select pg_catalog.pg_get_viewdef("):
        return _viewdef(sql, objects)
    if "from pg_catalog.pg_foreign_table f" in norm:
        return _foreign_server(sql, items, objects)
    if "from pg_catalog.pg_database d" in norm:
        return _databases(items, ctx)
    if "from pg_catalog.pg_namespace n" in norm and 'as "name"' in lower:
        return _schemas(sql, items, ctx)
    if "from pg_catalog.pg_roles r" in norm and "r.rolname" in norm:
        return _roles(items, ctx)
    read = set(re.findall(r"pg_catalog\.(\w+)", norm))
    if read & set(_EMPTY_CATALOGS):
        return _answer(items, [])
    return None


def _list_relations(sql: str, items: list[tuple[str, str]], objects: list[CatalogObject],
                    ctx: Context) -> Outcome:
    m = re.search(r"c\.relkind\s+IN\s*\(([^)]*)\)", sql, re.I)
    kinds = set(re.findall(r"'(\w*)'", m.group(1))) if m else set()
    name_re, schema_re = _regex(sql, "c.relname"), _regex(sql, "n.nspname")
    rows = []
    if schema_re is None or schema_re.search("public"):
        for o in sorted(_visible(objects), key=lambda o: o.name):
            if o.relkind not in kinds or (name_re and not name_re.search(o.name)):
                continue
            rows.append({
                "Schema": "public", "Name": o.name, "Type": RELKIND_WORDS[o.relkind],
                "Owner": ctx.user, "Persistence": "permanent", "Access method": None,
                "Size": "0 bytes", "Table": None,
                "Description": f"{o.connector} source" if o.kind == "source" and o.connector else None,
            })
    return _answer(items, rows)


def _lookup(sql: str, objects: list[CatalogObject]) -> Outcome:
    name_re, schema_re = _regex(sql, "c.relname"), _regex(sql, "n.nspname")
    rows = []
    if schema_re is None or schema_re.search("public"):
        for o in sorted(_visible(objects), key=lambda o: o.name):
            if name_re is None or name_re.search(o.name):
                rows.append((str(o.oid), "public", o.name))
    cols = [Column("oid", "oid"), Column("nspname", "name"), Column("relname", "name")]
    return Outcome(f"SELECT {len(rows)}", cols, rows)


def _by_oid(objects: list[CatalogObject], oid: int | None) -> CatalogObject | None:
    return next((o for o in _visible(objects) if o.oid == oid), None)


def _relation_properties(sql: str, items: list[tuple[str, str]],
                         objects: list[CatalogObject]) -> Outcome:
    o = _by_oid(objects, _oid_in(sql, r"c\.oid"))
    if o is None:
        return _answer(items, [])
    row = {
        "~c.relchecks": "0", "~c.relkind": o.relkind, "~c.relhasindex": "f",
        "~c.relhasrules": "f", "~c.relhastriggers": "f", "~c.relrowsecurity": "f",
        "~c.relforcerowsecurity": "f", "relhasoids": "f", "~c.relispartition": "f",
        "~reloptions": "", "~c.reltablespace": "0", "~c.reloftype": "",
        "~c.relpersistence": "p", "~c.relreplident": "d", "~am.amname": None,
    }
    # The unnamed '' item (reloptions in psql 15) and anything unknown: an empty string.
    values = [_pick(row, text, alias) if (text.strip() != "''") else "" for text, alias in items]
    return Outcome("SELECT 1", [Column(a, "text") for _, a in items], [tuple(values)])


def _attributes(sql: str, items: list[tuple[str, str]], objects: list[CatalogObject]) -> Outcome:
    o = _by_oid(objects, _oid_in(sql, r"a\.attrelid"))
    rows = []
    for c in o.columns if o else []:
        varlena = c.type in ("varchar", "bytea", "jsonb") or c.type.startswith("numeric") or c.type.endswith("[]")
        rows.append({
            "~a.attname": c.name, "~format_type": display_type(c.type), "~pg_get_expr": None,
            "~a.attnotnull": "f", "attcollation": None, "~a.attidentity": "",
            "~a.attgenerated": "", "attfdwoptions": "", "~a.attstorage": "x" if varlena else "p",
            "attcompression": "", "attstattarget": None, "~col_description": None,
        })
    return _answer(items, rows)


def _viewdef(sql: str, objects: list[CatalogObject]) -> Outcome:
    m = re.search(r"pg_get_viewdef\(\s*'?(\d+)", sql, re.I)
    o = _by_oid(objects, int(m.group(1)) if m else None)
    text = None
    if o is not None:
        text = _definition_query(o.sql)
    return Outcome("SELECT 1", [Column("pg_get_viewdef", "text")], [(text,)])


def _definition_query(sql: str) -> str:
    """The query of a CREATE MATERIALIZED VIEW, as psql shows a view's definition."""
    code = code_only(sql)
    m = re.search(r"\bAS\b", code, re.I)
    body = sql[m.end():].strip() if m else sql
    return " " + body.rstrip().rstrip(";") + ";"


def _foreign_server(sql: str, items: list[tuple[str, str]],
                    objects: list[CatalogObject]) -> Outcome:
    o = _by_oid(objects, _oid_in(sql, r"f\.ftrelid"))
    if o is None:
        return _answer(items, [])
    options = ", ".join(f"{k} '{v}'" for k, v in o.shown_options() if k != "connector")
    values = [o.connector or "sqlstream", options][: len(items)]
    values += [None] * (len(items) - len(values))
    return Outcome("SELECT 1", [Column(a, "text") for _, a in items], [tuple(values)])


def _databases(items: list[tuple[str, str]], ctx: Context) -> Outcome:
    row = {
        "Name": ctx.database, "Owner": ctx.user, "Encoding": "UTF8", "Collate": "C",
        "Ctype": "C", "ICU Locale": None, "Locale Provider": "libc", "Access privileges": None,
        "Size": "0 bytes", "Tablespace": "pg_default",
        "Description": "sqlstream streaming database",
        "~d.datname": ctx.database,
    }
    return _answer(items, [row])


def _schemas(sql: str, items: list[tuple[str, str]], ctx: Context) -> Outcome:
    rows = [
        {"Name": "public", "Owner": ctx.user, "Access privileges": None,
         "Description": "sources, tables and materialized views"},
        {"Name": "sqlstream", "Owner": ctx.user, "Access privileges": None,
         "Description": "sqlstream system tables (objects, jobs, checkpoints, ...)"},
    ]
    name_re = _regex(sql, "n.nspname")
    rows = [r for r in rows if name_re is None or name_re.search(r["Name"])]
    return _answer(items, rows)


def _roles(items: list[tuple[str, str]], ctx: Context) -> Outcome:
    row = {
        "~r.rolname": ctx.user, "~r.rolsuper": "t", "~r.rolinherit": "t",
        "~r.rolcreaterole": "t", "~r.rolcreatedb": "t", "~r.rolcanlogin": "t",
        "~r.rolconnlimit": "-1", "~r.rolvaliduntil": None, "memberof": "{}",
        "~r.rolreplication": "f", "~r.rolbypassrls": "f",
    }
    return _answer(items, [row])
