"""Ground-truth step labels for the domains with a step oracle (arith, countdown).

Two of the three meanings of a step score (BACKGROUND): `hard` is step-correct (this step is
right given the steps before it, PRM800K's sense); `prefix` is prefix-correct (every step so
far is right), which is what a Monte Carlo label estimates for a policy that does not err."""

from __future__ import annotations

from collections.abc import Sequence

from qstar_dagster.search.tree import Tree
from qstar_dagster.tasks.domains import domain

LABELER = "oracle"


def oracle_labels(trees: Sequence[Tree]) -> dict[str, tuple[bool, bool]]:
    """node_id -> (step-correct, prefix-correct) for every step node of the trees (an error
    naming the tree for a domain with no oracle)."""
    out: dict[str, tuple[bool, bool]] = {}
    for tree in trees:
        d = domain(tree.problem.domain)
        if not d.has_oracle:
            raise ValueError(f"tree {tree.tree_id} is of domain {d.name!r}, which has no step oracle; use Monte "
                             "Carlo or judge labels for its prompt set")
        for leaf in tree.leaves():
            path = tree.path(leaf)[1:]
            result = d.oracle(tree.problem, [n.text for n in path])
            for i, (node, verdict) in enumerate(zip(path, result.verdicts)):
                prefix_ok = result.first_error is None or i < result.first_error
                out.setdefault(node.node_id, (verdict.correct, prefix_ok))
    return out


def label_rows(labels: dict[str, tuple[bool, bool]], run_id: str | None = None) -> list[dict]:
    return [{"node_id": node_id, "labeler": LABELER, "kind": kind, "value": float(value), "cost_tokens": 0,
             "created_run": run_id}
            for node_id, (step_ok, prefix_ok) in labels.items()
            for kind, value in (("hard", step_ok), ("prefix", prefix_ok))]
