"""From a plan tree to a tree of operators."""

from __future__ import annotations

import hashlib

import duckdb

from sqlstream.engine.aggregate import AggregateOperator
from sqlstream.engine.joins import DeltaJoinOperator, TemporalJoinOperator
from sqlstream.engine.operator import Operator, PassThrough, StatelessOperator
from sqlstream.engine.recompute import RecomputeOperator
from sqlstream.engine.union import UnionOperator
from sqlstream.plan.nodes import (
    Aggregate,
    DeltaJoin,
    Node,
    Recompute,
    Scan,
    Stateless,
    TemporalJoin,
    Union,
)

_OPERATORS: dict[type[Node], tuple[type[Operator], str]] = {
    Scan: (PassThrough, "scan"),
    Stateless: (StatelessOperator, "map"),
    Aggregate: (AggregateOperator, "agg"),
    Recompute: (RecomputeOperator, "re"),
    DeltaJoin: (DeltaJoinOperator, "join"),
    TemporalJoin: (TemporalJoinOperator, "lookup"),
    Union: (UnionOperator, "union"),
}


def operator_id(obj: str, role: str, n: int) -> str:
    # Postgres identifiers hold 63 bytes: keep a readable prefix and make it unique.
    digest = hashlib.sha1(obj.encode()).hexdigest()[:8]
    return f"{obj[:32]}__{role}{n}_{digest}"


def build(con: duckdb.DuckDBPyConnection, obj: str, root: Node) -> tuple[Operator, list[Operator]]:
    """The operator tree of a plan; returns (root, all operators bottom-up)."""
    order: list[Operator] = []
    built: dict[int, Operator] = {}

    def make(node: Node) -> Operator:
        children = [make(i) for i in node.inputs]
        cls, role = _OPERATORS[type(node)]
        op = cls(con, node, operator_id(obj, role, len(order)))
        built[id(node)] = op
        if isinstance(node, Aggregate) and node.leader is not None:
            leader = built[id(node.leader)]
            assert isinstance(op, AggregateOperator) and isinstance(leader, AggregateOperator)
            op.follow(leader)
        op.children = children
        for port, child in enumerate(children):
            child.parent = op
            child.parent_port = port
        order.append(op)
        return op

    return make(root), order
