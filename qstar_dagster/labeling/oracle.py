"""Ground-truth step labels for the built-in domain, from its step oracle.

Two of the three meanings of a step score (BACKGROUND): `hard` is step-correct (this step is
right given the steps before it, PRM800K's sense); `prefix` is prefix-correct (every step so
far is right), which is what a Monte Carlo label estimates for a policy that does not err."""

from __future__ import annotations

from collections.abc import Sequence

from qstar_dagster.search.tree import Tree
from qstar_dagster.tasks.arith import oracle_steps

LABELER = "oracle"


def oracle_labels(trees: Sequence[Tree]) -> dict[str, tuple[bool, bool]]:
    """node_id -> (step-correct, prefix-correct) for every step node of built-in-domain trees."""
    out: dict[str, tuple[bool, bool]] = {}
    for tree in trees:
        if tree.problem.domain != "arith":
            raise ValueError(f"the step oracle knows the built-in domain only; tree {tree.tree_id} is "
                             f"{tree.problem.domain!r}. Use Monte Carlo or judge labels for other prompt sets")
        for leaf in tree.leaves():
            path = tree.path(leaf)[1:]
            result = oracle_steps(tree.problem.problem, [n.text for n in path])
            for i, (node, verdict) in enumerate(zip(path, result.verdicts)):
                prefix_ok = result.first_error is None or i < result.first_error
                out.setdefault(node.node_id, (verdict.correct, prefix_ok))
    return out


def label_rows(labels: dict[str, tuple[bool, bool]], run_id: str | None = None) -> list[dict]:
    return [{"node_id": node_id, "labeler": LABELER, "kind": kind, "value": float(value), "cost_tokens": 0,
             "created_run": run_id}
            for node_id, (step_ok, prefix_ok) in labels.items()
            for kind, value in (("hard", step_ok), ("prefix", prefix_ok))]
