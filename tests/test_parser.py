"""The SQL front end: every statement form into its typed object, and Postgres-like errors."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest
import sqlglot
from hypothesis import given, settings
from hypothesis import strategies as hs
from sqlglot import exp

import sqlstream.sql.binder
import sqlstream.sql.dialect
import sqlstream.sql.parser
import sqlstream.sql.statements
from sqlstream.connectors.base import Format
from sqlstream.errors import SqlStreamError
from sqlstream.sql import statements as st
from sqlstream.sql.dialect import SqlStream
from sqlstream.sql.parser import parse, parse_one
from sqlstream.types import Column

# The example block of DESIGN §2 (checked against the document too when it is at hand).
DESIGN_EXAMPLE = """CREATE SOURCE bids (
  auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP,
  WATERMARK FOR date_time AS date_time - INTERVAL '5 seconds'
) WITH (connector = 'kafka', topic = 'bids', properties.bootstrap.server = 'localhost:9092',
        scan.startup.mode = 'earliest')
FORMAT PLAIN ENCODE JSON;

CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR, tier VARCHAR);   -- INSERT/UPDATE/DELETE
CREATE TABLE accounts (id INT PRIMARY KEY, balance NUMERIC)
  WITH (connector = 'postgres-cdc', dsn = '...', table = 'public.accounts');

CREATE MATERIALIZED VIEW hot_items AS
SELECT auction, window_start, count(*) AS bids
FROM HOP(bids, date_time, INTERVAL '2 seconds', INTERVAL '10 seconds')
GROUP BY auction, window_start
EMIT ON WINDOW CLOSE;

CREATE SINK hot_items_pg FROM hot_items
WITH (connector = 'postgres', dsn = '...', table = 'hot_items', type = 'upsert',
      primary_key = 'auction,window_start');
CREATE SINK big_bids AS SELECT * FROM bids WHERE price > 1000000
WITH (connector = 'file', path = 'out/big_bids') FORMAT PLAIN ENCODE PARQUET;

CREATE SOURCE orders (id BIGINT, customer INT, amount DOUBLE PRECISION, ts TIMESTAMP)
WITH (connector = 'file', path = 'data/orders', pattern = '*.jsonl') FORMAT PLAIN ENCODE JSON;
"""
DESIGN_PATHS = [
    Path(__file__).resolve().parents[1] / "docs" / "DESIGN.md",
    Path("/work/shared/DESIGN.md"),
]


def design_examples() -> list[str]:
    blocks = [DESIGN_EXAMPLE]
    for path in DESIGN_PATHS:
        if path.exists():
            match = re.search(r"## 2\..*?```sql\n(.*?)```", path.read_text(), re.S)
            if match:
                blocks.append(match.group(1))
    return blocks


# -- sources and tables -----------------------------------------------------------------------

BIDS = """CREATE SOURCE bids (
  auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP,
  WATERMARK FOR date_time AS date_time - INTERVAL '5 seconds'
) WITH (connector = 'kafka', topic = 'bids', properties.bootstrap.server = 'localhost:9092',
        scan.startup.mode = 'earliest')
FORMAT PLAIN ENCODE JSON"""


def test_create_source() -> None:
    s = parse_one(BIDS + ";")
    assert isinstance(s, st.CreateSource)
    assert s.name == "bids"
    assert s.columns == [
        Column("auction", "bigint"),
        Column("bidder", "bigint"),
        Column("price", "bigint"),
        Column("date_time", "timestamp"),
    ]
    assert s.watermark is not None
    assert s.watermark.column == "date_time"
    assert isinstance(s.watermark.expr, exp.Sub)
    assert s.watermark.expr.sql("postgres") == "date_time - INTERVAL '5 SECONDS'"
    assert s.options == {
        "connector": "kafka",
        "topic": "bids",
        "properties.bootstrap.server": "localhost:9092",
        "scan.startup.mode": "earliest",
    }
    assert s.format == Format("plain", "json")
    assert s.if_not_exists is False
    assert s.text == BIDS
    assert s.line == 1


def test_create_source_options_types_and_names() -> None:
    s = parse_one(
        'CREATE SOURCE IF NOT EXISTS "MySrc" ("Id" int8, b text, c float8, d numeric(10,2), '
        "e timestamptz, f jsonb, g int[], h bool, i DOUBLE PRECISION, j real) "
        "WITH ('connector' = 'datagen', rows.per.second = 10, fields.Id.kind = sequence, "
        "flag = true, neg = -1, ratio = 1.5, format = 'x', partition = 'p') "
        "FORMAT PLAIN ENCODE CSV (without_header = 'true', delimiter = ',')"
    )
    assert isinstance(s, st.CreateSource)
    assert s.name == "MySrc" and s.if_not_exists
    assert [(c.name, c.type) for c in s.columns] == [
        ("Id", "bigint"),
        ("b", "varchar"),
        ("c", "double precision"),
        ("d", "numeric(10,2)"),
        ("e", "timestamptz"),
        ("f", "jsonb"),
        ("g", "integer[]"),
        ("h", "boolean"),
        ("i", "double precision"),
        ("j", "real"),
    ]
    assert s.options == {
        "connector": "datagen",
        "rows.per.second": "10",
        "fields.Id.kind": "sequence",
        "flag": "true",
        "neg": "-1",
        "ratio": "1.5",
        "format": "x",
        "partition": "p",
    }
    assert s.format == Format("plain", "csv", {"without_header": "true", "delimiter": ","})
    assert s.watermark is None


def test_create_table_primary_keys() -> None:
    s = parse_one("CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR, tier VARCHAR)")
    assert isinstance(s, st.CreateTable)
    assert s.name == "users"
    assert s.columns == [
        Column("id", "integer"),
        Column("name", "varchar"),
        Column("tier", "varchar"),
    ]
    assert s.primary_key == ["id"]
    assert s.options == {} and s.format is None and s.watermark is None

    s = parse_one("CREATE TABLE IF NOT EXISTS t (a INT NOT NULL, B INT, PRIMARY KEY (a, b))")
    assert isinstance(s, st.CreateTable)
    assert s.primary_key == ["a", "b"] and s.if_not_exists

    s = parse_one("CREATE TABLE log (msg VARCHAR)")
    assert isinstance(s, st.CreateTable) and s.primary_key == []


def test_create_table_with_connector_format_and_watermark() -> None:
    s = parse_one(
        "CREATE TABLE accounts (id INT PRIMARY KEY, balance NUMERIC, ts TIMESTAMP, "
        "WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)\n"
        "  WITH (connector = 'postgres-cdc', dsn = '...', table = 'public.accounts') "
        "FORMAT UPSERT ENCODE JSON"
    )
    assert isinstance(s, st.CreateTable)
    assert s.columns[1] == Column("balance", "numeric")
    assert s.options == {"connector": "postgres-cdc", "dsn": "...", "table": "public.accounts"}
    assert s.format == Format("upsert", "json")
    assert s.watermark is not None and s.watermark.column == "ts"


def test_create_materialized_view() -> None:
    sql = (
        "CREATE MATERIALIZED VIEW hot_items AS\n"
        "SELECT auction, window_start, count(*) AS bids\n"
        "FROM HOP(bids, date_time, INTERVAL '2 seconds', INTERVAL '10 seconds')\n"
        "GROUP BY auction, window_start\n"
        "EMIT ON WINDOW CLOSE"
    )
    s = parse_one(sql)
    assert isinstance(s, st.CreateMaterializedView)
    assert s.name == "hot_items" and s.emit_on_window_close and not s.if_not_exists
    assert isinstance(s.query, exp.Select)
    assert s.query.named_selects == ["auction", "window_start", "bids"]
    hop = s.query.args["from_"].this.this
    assert isinstance(hop, exp.Anonymous) and hop.name == "HOP"
    assert s.text == sql

    s = parse_one(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS v AS SELECT * FROM t EMIT ON WINDOW CLOSE"
    )
    assert isinstance(s, st.CreateMaterializedView)
    assert s.emit_on_window_close and s.if_not_exists
    assert s.query.args["from_"].this.alias == ""  # EMIT is not taken as an alias

    s = parse_one("CREATE MATERIALIZED VIEW v AS WITH c AS (SELECT 1 AS x) SELECT x FROM c")
    assert isinstance(s, st.CreateMaterializedView)
    assert not s.emit_on_window_close and s.query.ctes[0].alias == "c"

    s = parse_one("CREATE MATERIALIZED VIEW v AS SELECT a FROM t UNION ALL SELECT a FROM u")
    assert isinstance(s, st.CreateMaterializedView) and isinstance(s.query, exp.Union)


def test_create_sink_from_and_as() -> None:
    s = parse_one(
        "CREATE SINK hot_items_pg FROM hot_items\n"
        "WITH (connector = 'postgres', dsn = '...', table = 'hot_items', type = 'upsert',\n"
        "      primary_key = 'auction,window_start')"
    )
    assert isinstance(s, st.CreateSink)
    assert (s.name, s.from_name, s.query, s.format) == ("hot_items_pg", "hot_items", None, None)
    assert s.options["type"] == "upsert" and s.options["primary_key"] == "auction,window_start"

    s = parse_one(
        "CREATE SINK IF NOT EXISTS big_bids AS SELECT * FROM bids WHERE price > 1000000\n"
        "WITH (connector = 'file', path = 'out/big_bids') FORMAT PLAIN ENCODE PARQUET"
    )
    assert isinstance(s, st.CreateSink)
    assert s.from_name is None and isinstance(s.query, exp.Select)
    assert s.query.sql("postgres") == "SELECT * FROM bids WHERE price > 1000000"
    assert s.options == {"connector": "file", "path": "out/big_bids"}
    assert s.format == Format("plain", "parquet") and s.if_not_exists


@pytest.mark.parametrize(
    ("sql", "kind", "names", "if_exists", "cascade"),
    [
        ("DROP SOURCE IF EXISTS a, b CASCADE", "source", ["a", "b"], True, True),
        ("DROP TABLE t", "table", ["t"], False, False),
        ("DROP MATERIALIZED VIEW IF EXISTS V1 RESTRICT", "materialized view", ["v1"], True, False),
        ('DROP SINK "S"', "sink", ["S"], False, False),
        ("DROP VIEW v, w CASCADE", "view", ["v", "w"], False, True),
    ],
)
def test_drop(sql: str, kind: str, names: list[str], if_exists: bool, cascade: bool) -> None:
    assert parse_one(sql) == st.Drop(kind, names, if_exists, cascade, text=sql, line=1)


@pytest.mark.parametrize(
    ("sql", "what"),
    [
        ("SHOW SOURCES", "sources"),
        ("show tables", "tables"),
        ("SHOW MATERIALIZED VIEWS", "materialized views"),
        ("SHOW SINKS", "sinks"),
        ("SHOW JOBS", "jobs"),
        ("SHOW CHECKPOINTS", "checkpoints"),
        ("SHOW ALL", "all"),
        ("SHOW checkpoint_interval", "checkpoint_interval"),
        ("SHOW TimeZone", "timezone"),
        ("SHOW TIME ZONE", "timezone"),
        ("SHOW TRANSACTION ISOLATION LEVEL", "transaction_isolation"),
        ("SHOW my.setting", "my.setting"),
    ],
)
def test_show(sql: str, what: str) -> None:
    assert parse_one(sql) == st.Show(what, text=sql, line=1)


@pytest.mark.parametrize(
    ("sql", "name", "value"),
    [
        ("SET checkpoint_interval = '2s'", "checkpoint_interval", "2s"),
        ("SET streaming_parallelism TO 4", "streaming_parallelism", "4"),
        ("SET extra_float_digits = -1", "extra_float_digits", "-1"),
        ("SET SESSION DateStyle TO ISO", "datestyle", "ISO"),
        ("SET LOCAL statement_timeout = 0", "statement_timeout", "0"),
        ("SET TIME ZONE 'UTC'", "timezone", "UTC"),
        ("SET search_path = public, other", "search_path", "public, other"),
        ("SET x = DEFAULT", "x", "DEFAULT"),
        ("SET standard_conforming_strings = on", "standard_conforming_strings", "on"),
        ("SET my.opt = true", "my.opt", "true"),
        (
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
            "transaction_isolation",
            "read committed",
        ),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "default_transaction_isolation",
            "serializable",
        ),
    ],
)
def test_set(sql: str, name: str, value: str) -> None:
    assert parse_one(sql) == st.SetVariable(name, value, text=sql, line=1)


@pytest.mark.parametrize(
    ("sql", "action"),
    [
        ("BEGIN", "begin"),
        ("BEGIN TRANSACTION", "begin"),
        ("START TRANSACTION", "begin"),
        ("COMMIT", "commit"),
        ("END", "commit"),
        ("ROLLBACK", "rollback"),
        ("ABORT", "rollback"),
    ],
)
def test_transactions(sql: str, action: str) -> None:
    assert parse_one(sql) == st.Transaction(action, text=sql, line=1)


def test_describe_flush_explain() -> None:
    assert parse_one("DESCRIBE Bids") == st.Describe("bids", text="DESCRIBE Bids", line=1)
    assert parse_one("FLUSH;") == st.Flush(text="FLUSH", line=1)
    s = parse_one("EXPLAIN CREATE MATERIALIZED VIEW v AS SELECT a FROM t")
    assert isinstance(s, st.Explain)
    assert isinstance(s.statement, st.CreateMaterializedView)
    assert s.statement.name == "v"
    assert s.statement.text == "CREATE MATERIALIZED VIEW v AS SELECT a FROM t"
    inner = parse_one("EXPLAIN SELECT 1")
    assert isinstance(inner, st.Explain) and isinstance(inner.statement, st.Query)


def test_queries_and_dml() -> None:
    s = parse_one("SELECT a FROM t WHERE b > 1")
    assert isinstance(s, st.Query) and isinstance(s.query, exp.Select)
    s = parse_one("WITH c AS (SELECT 1 AS x) SELECT x FROM c")
    assert isinstance(s, st.Query) and s.query.ctes
    s = parse_one("SELECT 1 UNION ALL SELECT 2")
    assert isinstance(s, st.Query) and isinstance(s.query, exp.Union)
    s = parse_one("(SELECT 1)")
    assert isinstance(s, st.Query) and isinstance(s.query, exp.Select)
    s = parse_one("VALUES (1, 'a'), (2, 'b')")
    assert isinstance(s, st.Query) and isinstance(s.query, exp.Select)
    assert s.query.sql("postgres") == (
        "SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS \"*VALUES*\"(column1, column2)"
    )
    s = parse_one("TABLE t")
    assert isinstance(s, st.Query)

    s = parse_one("INSERT INTO users VALUES (1, 'ann', 'gold')")
    assert isinstance(s, st.Insert) and s.ast.this.name == "users"
    s = parse_one("UPDATE users SET tier = 'x' WHERE id = 1")
    assert isinstance(s, st.Update) and isinstance(s.ast, exp.Update)
    s = parse_one("DELETE FROM users WHERE id = 1")
    assert isinstance(s, st.Delete) and isinstance(s.ast, exp.Delete)


def test_flink_windows_normalised_to_risingwave_form() -> None:
    flink = parse_one(
        "SELECT * FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) AS w"
    )
    native = parse_one("SELECT * FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) AS w")
    assert isinstance(flink, st.Query) and isinstance(native, st.Query)
    assert flink.query == native.query
    hop = parse_one(
        "SELECT * FROM TABLE(HOP(TABLE bids, DESCRIPTOR(date_time), INTERVAL '1' SECOND, "
        "INTERVAL '5' SECOND))"
    )
    assert isinstance(hop, st.Query)
    assert hop.query.sql("postgres") == (
        "SELECT * FROM HOP(bids, date_time, INTERVAL '1 SECOND', INTERVAL '5 SECOND')"
    )


def test_many_statements_text_and_lines() -> None:
    sql = (
        "-- a job file\n"
        "SET checkpoint_interval = '1s';;\n"
        "\n"
        "/* the source */ CREATE SOURCE s (a INT)\n"
        "  WITH (connector = 'datagen') FORMAT PLAIN ENCODE JSON; -- trailing\n"
        "SELECT 'a;b' AS x\n"
        ";\n"
        "FLUSH"
    )
    out = parse(sql)
    assert [type(s).__name__ for s in out] == ["SetVariable", "CreateSource", "Query", "Flush"]
    assert [s.line for s in out] == [2, 4, 6, 8]
    assert out[1].text == (
        "CREATE SOURCE s (a INT)\n  WITH (connector = 'datagen') FORMAT PLAIN ENCODE JSON"
    )
    assert out[2].text == "SELECT 'a;b' AS x"
    assert parse("") == [] and parse(" ; -- nothing\n;") == []


@pytest.mark.parametrize("block", design_examples())
def test_design_example_block(block: str) -> None:
    out = parse(block)
    assert [type(s).__name__ for s in out] == [
        "CreateSource",
        "CreateTable",
        "CreateTable",
        "CreateMaterializedView",
        "CreateSink",
        "CreateSink",
        "CreateSource",
    ]
    hot = out[3]
    assert isinstance(hot, st.CreateMaterializedView) and hot.emit_on_window_close
    pg_sink, file_sink = out[4], out[5]
    assert isinstance(pg_sink, st.CreateSink) and pg_sink.from_name == "hot_items"
    assert isinstance(file_sink, st.CreateSink) and file_sink.query is not None
    assert file_sink.format == Format("plain", "parquet")
    orders = out[6]
    assert isinstance(orders, st.CreateSource)
    assert orders.columns[2] == Column("amount", "double precision")
    assert orders.options["pattern"] == "*.jsonl"


def test_dialect_never_returns_silent_commands() -> None:
    # Text sqlglot cannot parse raises instead of becoming an exp.Command.
    with pytest.raises(sqlglot.errors.ParseError):
        sqlglot.parse_one("DROP THING x", read=SqlStream)
    e = sqlglot.parse_one("CREATE SINK s FROM v WITH (connector = 'x')", read=SqlStream)
    assert e.sql(SqlStream) == "CREATE SINK s FROM v WITH (connector='x')"
    e = sqlglot.parse_one(
        "CREATE MATERIALIZED VIEW v AS SELECT 1 EMIT ON WINDOW CLOSE", read=SqlStream
    )
    assert e.sql(SqlStream) == "CREATE MATERIALIZED VIEW v AS SELECT 1 EMIT ON WINDOW CLOSE"


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "sqlstate", "message", "line", "col", "position"),
    [
        ("SELEC 1", "42601", 'syntax error at or near "SELEC"', 1, 1, 1),
        ("SELECT * FROMM t", "42601", 'syntax error at or near "FROMM"', 1, 10, 10),
        ("CREATE SOURCE s (a INT WITH (x='1')", "42601", "syntax error at end of input", 1, 36, 36),
        ("SELECT a\nFROM t\nWHERE a = = 1", "42601", 'syntax error at or near "="', 3, 11, 27),
        ("SELECT 1;\nSELECT * FROMM t", "42601", 'syntax error at or near "FROMM"', 2, 10, 20),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT 1 EMIT ON WINDOW",
            "42601",
            "syntax error at end of input",
            1,
            54,
            54,
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT 1 EMIT ON WINDOW;",
            "42601",
            'syntax error at or near ";"',
            1,
            54,
            54,
        ),
        (
            "CREATE FUNCTION f() RETURNS int AS 'select 1'",
            "0A000",
            "CREATE FUNCTION is not supported",
            1,
            1,
            1,
        ),
        ("CREATE INDEX i ON t (a)", "0A000", "CREATE INDEX is not supported", 1, 1, 1),
        ("ALTER TABLE t ADD COLUMN b INT", "0A000", "ALTER TABLE is not supported", 1, 1, 1),
        ("COPY t FROM STDIN", "0A000", "COPY is not supported", 1, 1, 1),
        ("CALL p()", "0A000", "CALL is not supported", 1, 1, 1),
        ("DISCARD ALL", "0A000", "DISCARD is not supported", 1, 1, 1),
        ("RESET ALL", "0A000", "RESET is not supported", 1, 1, 1),
        ("CREATE TABLE t AS SELECT 1", "0A000", "CREATE TABLE ... AS is not supported", 1, 26, 26),
        ("CREATE TEMP TABLE t (a INT)", "0A000", "TEMPORARY is not supported", 1, 1, 1),
        (
            "CREATE OR REPLACE MATERIALIZED VIEW v AS SELECT 1",
            "0A000",
            "CREATE with REPLACE is not supported",
            1,
            1,
            1,
        ),
        ("SELECT 1; VACUUM", "0A000", "VACUUM is not supported", 1, 11, 11),
        ("CREATE VIEW v AS SELECT 1", "0A000", "CREATE VIEW is not supported", 1, 1, 1),
        ("DROP THING x", "42601", 'syntax error at or near "THING"', 1, 6, 6),
        ("DROP INDEX i", "0A000", "DROP INDEX is not supported", 1, 1, 1),
        (
            "CREATE SINK s WITH (connector='x')",
            "42601",
            'syntax error at or near "WITH"',
            1,
            15,
            15,
        ),
        ("SELECT 'abc", "42601", 'unterminated quoted string at or near "\'abc"', 1, 8, 8),
        ('SELECT 1,\n "ab', "42601", 'unterminated quoted identifier at or near ""ab"', 2, 2, 12),
        ("SELECT 1 /* open", "42601", 'unterminated /* comment at or near "/* open"', 1, 10, 10),
        ("SELECT $$x", "42601", 'unterminated dollar-quoted string at or near "$$x"', 1, 8, 8),
        ("SHOW", "42601", "syntax error at end of input", 1, 5, 5),
        ("SET x", "42601", "syntax error at end of input", 1, 6, 6),
        ("FLUSH now", "42601", 'syntax error at or near "now"', 1, 7, 7),
        (
            "CREATE SOURCE s (a INT) WITH (connector = 'x') FORMAT PLAIN",
            "42601",
            "syntax error at end of input",
            1,
            60,
            60,
        ),
        (
            "CREATE SOURCE s (a INT) WITH (connector)",
            "42601",
            'syntax error at or near ")"',
            1,
            40,
            40,
        ),
        (
            "CREATE TABLE t (a INT, a INT)",
            "42701",
            'column "a" specified more than once',
            1,
            24,
            24,
        ),
        (
            "CREATE TABLE t (a INT PRIMARY KEY, b INT PRIMARY KEY)",
            "42P16",
            "multiple primary keys are not allowed",
            1,
            36,
            36,
        ),
        (
            "CREATE SOURCE s (a INT, WATERMARK FOR b AS b)",
            "42703",
            'column "b" does not exist',
            1,
            39,
            39,
        ),
        ("CREATE SOURCE s (a FOO)", "0A000", "type FOO is not supported", 1, 18, 18),
        (
            "CREATE SOURCE s (a INT PRIMARY KEY)",
            "0A000",
            "column constraint PRIMARY KEY is not supported",
            1,
            18,
            18,
        ),
    ],
)
def test_errors(sql: str, sqlstate: str, message: str, line: int, col: int, position: int) -> None:
    with pytest.raises(SqlStreamError) as info:
        parse(sql)
    e = info.value
    assert (e.sqlstate, e.message, e.line, e.col, e.position) == (
        sqlstate,
        message,
        line,
        col,
        position,
    )


WORDS = (
    "SELECT FROM WHERE CREATE SOURCE SINK TABLE MATERIALIZED VIEW AS WITH ( ) , ; = 'x' 1 a "
    "EMIT ON WINDOW CLOSE FORMAT PLAIN ENCODE JSON DROP IF EXISTS NOT SHOW SET TO FLUSH EXPLAIN "
    "TUMBLE HOP DESCRIPTOR INTERVAL PRIMARY KEY WATERMARK FOR - * . INSERT VALUES BEGIN START "
    "TRANSACTION DESCRIBE GROUP BY UNION ALL JOIN $$ \" /* '"
).split()


@settings(max_examples=300, deadline=None)
@given(hs.lists(hs.sampled_from(WORDS), min_size=1, max_size=12))
def test_any_input_parses_or_raises_a_sql_error(words: list[str]) -> None:
    try:
        parse(" ".join(words))
    except SqlStreamError as e:
        assert e.sqlstate in ("42601", "0A000", "42701", "42P16", "42703")
        assert e.line is not None and e.position is not None


def test_error_token() -> None:
    with pytest.raises(SqlStreamError) as info:
        parse("SELECT * FROMM t")
    assert info.value.token == "FROMM"
    assert str(info.value) == 'syntax error at or near "FROMM" (line 1, column 10, near "FROMM")'


def test_parse_one_needs_exactly_one() -> None:
    with pytest.raises(SqlStreamError) as info:
        parse_one("SELECT 1; SELECT 2")
    assert info.value.sqlstate == "42601"
    with pytest.raises(SqlStreamError):
        parse_one("-- nothing")


@pytest.mark.parametrize(
    "module",
    [sqlstream.sql.dialect, sqlstream.sql.parser, sqlstream.sql.statements, sqlstream.sql.binder],
)
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.failed == 0
