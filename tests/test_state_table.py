"""Operator state tables: the vnode of a key is fixed forever (DESIGN §6)."""

from __future__ import annotations

import hashlib

import duckdb

from sqlstream.state.table import StateTable


def test_vnode_is_the_first_md5_byte_of_the_key_text() -> None:
    con = duckdb.connect()
    st = StateTable(con, "op", [("w", "TIMESTAMP"), ("k", "BIGINT")], [("n", "BIGINT")])
    st.create()
    con.execute(
        f"INSERT INTO {st.table} VALUES (TIMESTAMP '2024-01-01 00:00:10', 7, 1), "
        "(NULL, 8, 2), (TIMESTAMP '1999-12-31 23:59:59', NULL, 3)"
    )
    st.mark_all_dirty()
    upserts, deletes = st.delta()
    assert deletes.num_rows == 0
    got = {(r["w"] and str(r["w"]), r["k"]): r["vnode"] for r in upserts.to_pylist()}
    texts = {
        ("2024-01-01 00:00:10", 7): "2024-01-01 00:00:10|7",
        (None, 8): "\\N|8",
        ("1999-12-31 23:59:59", None): "1999-12-31 23:59:59|\\N",
    }
    assert got == {key: hashlib.md5(t.encode()).digest()[0] for key, t in texts.items()}
