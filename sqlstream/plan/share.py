"""One state for aggregates a query computes twice over the same rows.

Nexmark q5 writes its HOP count per auction and window twice, once for the rows it returns
and once under the maximum per window, grouping by the same keys in another order and naming
the outputs differently. Both fold the same rows into the same accumulators, so the second
(the *follower*) keeps no state of its own: per batch it takes the first's (the *leader's*)
rows before and after the merge and projects them its own way, as RisingWave shares a
common subplan between its consumers.

Shared: aggregates over the same scan (the stateless steps fused into their pre-projection)
with the same keys in any order, the same accumulators and the same window bounds, emitting
on update (under EMIT ON WINDOW CLOSE the rows come from per-window partials, kept apart),
without ``count(DISTINCT ...)``. The leader is the one reached first when a batch of the
scanned relation is pushed up the tree, so its merge is done when the follower needs it.
"""

from __future__ import annotations

from sqlstream.plan.nodes import Aggregate, Node, Scan


def share_aggregates(root: Node) -> None:
    """Make each aggregate that repeats an earlier one (in the order batches reach them:
    the operators' build order, children first) its follower."""
    leaders: dict[str, Aggregate] = {}

    def walk(node: Node) -> None:
        for i in node.inputs:
            walk(i)
        if not (
            isinstance(node, Aggregate)
            and node.share_key
            and node.keys
            and not node.emit_on_window_close
            and not node.distincts
            and isinstance(node.inputs[0], Scan)
        ):
            return
        key = f"{node.inputs[0].relation}\n{node.share_key}"  # type: ignore[attr-defined]
        leader = leaders.setdefault(key, node)
        if leader is not node:
            node.leader = leader

    walk(root)
