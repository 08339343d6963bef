"""Math-Shepherd labels: every step of a rollout tree gets a hard label (some completion
from its prefix reaches the reference answer) and a soft label (the share that do)."""

from __future__ import annotations

from collections.abc import Sequence

from qstar_dagster.search.estimate import Estimate, PrefixEstimator
from qstar_dagster.search.tree import Tree

LABELER = "mc"


def label_trees(trees: Sequence[Tree], estimator: PrefixEstimator) -> dict[str, Estimate]:
    """node_id -> estimate for every step node (every node but the roots)."""
    items = [(t, n) for t in trees for n in t.nodes.values() if n.parent_id is not None]
    return {n.node_id: e for (_, n), e in zip(items, estimator.estimate(items))}


def label_rows(estimates: dict[str, Estimate], labeler: str = LABELER, run_id: str | None = None,
               checkpoint: str | None = None) -> list[dict]:
    """`step_labels` rows: a hard and a soft label per node."""
    rows = []
    for node_id, e in estimates.items():
        for kind, value in (("hard", e.hard), ("soft", e.soft)):
            rows.append({"node_id": node_id, "labeler": labeler, "kind": kind, "value": value,
                         "n_rollouts": e.n_rollouts, "n_correct": e.n_correct, "cost_tokens": e.cost_tokens,
                         "labeler_checkpoint": checkpoint, "created_run": run_id})
    return rows
