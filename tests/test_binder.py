"""Binding queries against a catalog: names, stars, types, windows, CTEs and errors."""

from __future__ import annotations

import pytest
from sqlglot import exp

from sqlstream.errors import SqlStreamError
from sqlstream.sql.binder import BoundQuery, bind_query, pg_name
from sqlstream.sql.parser import parse_one
from sqlstream.sql.statements import CreateMaterializedView, Query
from sqlstream.types import Column

CATALOG = {
    "bids": [
        Column("auction", "bigint"),
        Column("bidder", "bigint"),
        Column("price", "bigint"),
        Column("date_time", "timestamp"),
    ],
    "users": [Column("id", "integer"), Column("name", "varchar"), Column("tier", "varchar")],
    "accounts": [Column("id", "integer"), Column("balance", "numeric(12,2)")],
    "Quoted": [Column("Mixed", "integer"), Column("ts", "timestamptz")],
}


def bind(sql: str) -> BoundQuery:
    statement = parse_one(sql)
    if isinstance(statement, CreateMaterializedView):
        return bind_query(statement.query, CATALOG.get)
    assert isinstance(statement, Query)
    return bind_query(statement.query, CATALOG.get)


def schema(sql: str) -> list[tuple[str, str]]:
    return [(c.name, c.type) for c in bind(sql).schema]


def test_star_expansion_and_qualification() -> None:
    b = bind("SELECT * FROM bids")
    assert [c.name for c in b.schema] == ["auction", "bidder", "price", "date_time"]
    assert b.relations == ["bids"]
    assert b.query.sql("postgres") == (
        'SELECT "bids"."auction" AS "auction", "bids"."bidder" AS "bidder", '
        '"bids"."price" AS "price", "bids"."date_time" AS "date_time" FROM "bids" AS "bids"'
    )
    b = bind("SELECT u.*, b.price FROM bids AS b JOIN users u ON b.bidder = u.id")
    assert schema("SELECT u.*, b.price FROM bids AS b JOIN users u ON b.bidder = u.id") == [
        ("id", "integer"),
        ("name", "varchar"),
        ("tier", "varchar"),
        ("price", "bigint"),
    ]
    assert b.relations == ["bids", "users"]
    # every column carries its table alias
    assert all(c.table for c in b.query.find_all(exp.Column))


def test_input_is_not_modified() -> None:
    statement = parse_one("SELECT * FROM bids")
    assert isinstance(statement, Query)
    before = statement.query.sql()
    bind_query(statement.query, CATALOG.get)
    assert statement.query.sql() == before


def test_types() -> None:
    assert schema(
        "SELECT count(*), sum(price), avg(price), min(date_time), max(name), "
        "count(DISTINCT bidder), price * 2, price / 2.0, CAST(price AS varchar), "
        "date_time + INTERVAL '1' SECOND, price > 1, 'x', 1, 1.5, NULL, "
        "string_agg(name, ','), bool_and(price > 0), "
        "regexp_replace(name, 'a', 'b') "
        "FROM bids, users GROUP BY price, date_time, name"
    ) == [
        ("count", "bigint"),
        ("sum", "bigint"),
        ("avg", "double precision"),
        ("min", "timestamp"),
        ("max", "varchar"),
        ("count", "bigint"),
        ("?column?", "bigint"),
        ("?column?", "double precision"),
        ("price", "varchar"),
        ("?column?", "timestamp"),
        ("?column?", "boolean"),
        ("?column?", "varchar"),
        ("?column?", "integer"),
        ("?column?", "double precision"),
        ("?column?", "varchar"),
        ("string_agg", "varchar"),
        ("bool_and", "boolean"),
        ("regexp_replace", "varchar"),  # unknown to sqlglot: typed by DuckDB
    ]
    assert schema("SELECT balance, sum(balance) AS total FROM accounts GROUP BY balance") == [
        ("balance", "numeric(12,2)"),
        ("total", "numeric(12,2)"),
    ]


def test_postgres_output_names() -> None:
    assert [
        c.name
        for c in bind(
            "SELECT count(*), sum(price) AS s, auction, bids.bidder, price + 1, "
            "coalesce(price, 0), CASE WHEN price > 1 THEN 1 END, price::int, 1::int, true, "
            "(SELECT max(id) FROM users), EXISTS (SELECT 1 FROM users), upper(CAST(price AS text)) "
            "FROM bids GROUP BY auction, bidder, price"
        ).schema
    ] == [
        "count",
        "s",
        "auction",
        "bidder",
        "?column?",
        "coalesce",
        "case",
        "price",
        "int4",
        "bool",
        "max",
        "exists",
        "upper",
    ]
    # the bound query's output aliases are those names
    b = bind("SELECT count(*), 1 FROM bids")
    assert b.query.named_selects == ["count", "?column?"]


def test_pg_name() -> None:
    assert pg_name(exp.column("a", table="t")) == "a"
    assert pg_name(exp.Literal.number(1)) is None


def test_quoted_names() -> None:
    assert schema('SELECT "Mixed", q.ts FROM "Quoted" AS q') == [
        ("Mixed", "integer"),
        ("ts", "timestamptz"),
    ]
    with pytest.raises(SqlStreamError) as info:
        bind('SELECT mixed FROM "Quoted"')
    assert info.value.sqlstate == "42703"
    with pytest.raises(SqlStreamError) as info:
        bind("SELECT * FROM quoted")
    assert info.value.sqlstate == "42P01"


def test_tumble_and_hop() -> None:
    b = bind(
        "CREATE MATERIALIZED VIEW hot_items AS\n"
        "SELECT auction, window_start, count(*) AS bids\n"
        "FROM HOP(bids, date_time, INTERVAL '2 seconds', INTERVAL '10 seconds')\n"
        "GROUP BY auction, window_start\n"
        "EMIT ON WINDOW CLOSE"
    )
    assert [(c.name, c.type) for c in b.schema] == [
        ("auction", "bigint"),
        ("window_start", "timestamp"),
        ("bids", "bigint"),
    ]
    assert b.relations == ["bids"]
    table = b.query.args["from_"].this
    assert isinstance(table.this, exp.Anonymous) and table.this.name == "HOP"
    assert table.alias == "bids"
    assert [a.sql() for a in table.this.expressions[:2]] == ['"bids"', '"date_time"']

    assert schema("SELECT * FROM TUMBLE(bids, date_time, INTERVAL '1' MINUTE) AS w") == [
        ("auction", "bigint"),
        ("bidder", "bigint"),
        ("price", "bigint"),
        ("date_time", "timestamp"),
        ("window_start", "timestamp"),
        ("window_end", "timestamp"),
    ]
    b = bind(
        "SELECT w.window_end, max(w.price) FROM "
        "TABLE(TUMBLE(TABLE bids, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) AS w "
        "GROUP BY w.window_end"
    )
    assert [(c.name, c.type) for c in b.schema] == [("window_end", "timestamp"), ("max", "bigint")]
    assert b.query.args["from_"].this.alias == "w"
    assert schema("SELECT window_start FROM TUMBLE(\"Quoted\", ts, INTERVAL '1' HOUR)") == [
        ("window_start", "timestamptz")
    ]


def test_cte_and_subqueries() -> None:
    b = bind(
        "WITH big AS (SELECT auction, price * 2 AS p2 FROM bids WHERE price > 10) "
        "SELECT b.p2, u.name FROM big b JOIN users u ON b.auction = u.id "
        "WHERE u.id IN (SELECT id FROM accounts WHERE balance > 0)"
    )
    assert [(c.name, c.type) for c in b.schema] == [("p2", "bigint"), ("name", "varchar")]
    assert b.relations == ["bids", "users", "accounts"]

    assert schema("SELECT s.total FROM (SELECT sum(price) AS total FROM bids) AS s") == [
        ("total", "bigint")
    ]
    # a window over a CTE
    b = bind(
        "WITH cheap AS (SELECT * FROM bids WHERE price < 10) "
        "SELECT window_start, count(*) FROM TUMBLE(cheap, date_time, INTERVAL '1' MINUTE) "
        "GROUP BY window_start"
    )
    assert [c.name for c in b.schema] == ["window_start", "count"]
    assert b.relations == ["bids"]
    # relations deduplicated, in order of appearance
    assert bind("SELECT 1 FROM users, bids, users AS u2").relations == ["users", "bids"]


def test_union_and_values() -> None:
    assert schema("SELECT id FROM users UNION ALL SELECT id FROM accounts") == [("id", "integer")]
    assert schema("VALUES (1, 'a'), (2, 'b')") == [("column1", "integer"), ("column2", "varchar")]
    # branches that disagree take the type DuckDB gives the union
    assert schema("SELECT id FROM users UNION ALL SELECT price FROM bids") == [("id", "bigint")]
    assert schema("SELECT NULL, id FROM users UNION ALL SELECT name, NULL FROM users") == [
        ("?column?", "varchar"),
        ("id", "integer"),
    ]


def test_order_by_follows_renamed_outputs() -> None:
    b = bind("SELECT auction, sum(price) FROM bids GROUP BY auction ORDER BY 2 DESC LIMIT 3")
    assert b.query.sql("postgres").endswith('ORDER BY "sum" DESC LIMIT 3')
    b = bind("SELECT count(*), count(bidder) FROM bids ORDER BY 2")
    assert b.query.sql("postgres").endswith("ORDER BY 2")
    b = bind("SELECT id FROM users UNION ALL SELECT id FROM accounts ORDER BY 1")
    assert b.query.sql("postgres").endswith('ORDER BY "id"')


@pytest.mark.parametrize(
    ("sql", "sqlstate", "message", "line", "col", "position"),
    [
        ("SELECT * FROM nope", "42P01", 'relation "nope" does not exist', 1, 15, 15),
        (
            "SELECT a.x\nFROM bids a JOIN\n  missing m ON true",
            "42P01",
            'relation "missing" does not exist',
            3,
            3,
            31,
        ),
        ("SELECT nope FROM bids", "42703", 'column "nope" does not exist', 1, 8, 8),
        ("SELECT bids.nope FROM bids", "42703", "column bids.nope does not exist", 1, 8, 8),
        ("SELECT b.price FROM bids", "42P01", 'missing FROM-clause entry for table "b"', 1, 8, 8),
        (
            "SELECT id FROM users, accounts",
            "42702",
            'column reference "id" is ambiguous',
            1,
            8,
            8,
        ),
        (
            "SELECT price FROM bids\nWHERE EXISTS (SELECT 1 FROM users WHERE bogus = 1)",
            "42703",
            'column "bogus" does not exist',
            2,
            41,
            64,
        ),
        (
            "SELECT * FROM TUMBLE(bids, nots, INTERVAL '1' SECOND)",
            "42703",
            'column "nots" does not exist',
            1,
            28,
            28,
        ),
        (
            "SELECT * FROM TUMBLE(users, id, INTERVAL '1' SECOND)",
            "42804",
            'TUMBLE time column "id" must be a timestamp, not integer',
            1,
            29,
            29,
        ),
        (
            "SELECT * FROM TUMBLE(nope, ts, INTERVAL '1' SECOND)",
            "42P01",
            'relation "nope" does not exist',
            1,
            22,
            22,
        ),
        (
            "SELECT * FROM HOP(bids, date_time, INTERVAL '1' SECOND)",
            "42883",
            "HOP takes (relation, time column, slide, size[, offset])",
            1,
            19,
            19,
        ),
        (
            "SELECT s.q FROM (SELECT price FROM bids) s",
            "42703",
            "column s.q does not exist",
            1,
            8,
            8,
        ),
    ],
)
def test_errors(sql: str, sqlstate: str, message: str, line: int, col: int, position: int) -> None:
    with pytest.raises(SqlStreamError) as info:
        bind(sql)
    e = info.value
    assert (e.sqlstate, e.message, e.line, e.col, e.position) == (
        sqlstate,
        message,
        line,
        col,
        position,
    )


def test_error_positions_are_into_the_whole_input() -> None:
    from sqlstream.sql.parser import parse

    statements = parse("SELECT 1;\nSELECT x FROM bids")
    query = statements[1]
    assert isinstance(query, Query)
    with pytest.raises(SqlStreamError) as info:
        bind_query(query.query, CATALOG.get)
    assert (info.value.line, info.value.col, info.value.position) == (2, 8, 18)


def test_unknown_function_is_reported() -> None:
    with pytest.raises(SqlStreamError) as info:
        bind("SELECT no_such_function(price) FROM bids")
    assert info.value.sqlstate == "42883"
