"""OmegaPRM-style labels: per solution, binary search for the first step whose prefix can no
longer reach the reference answer, with O(log steps) prefix estimates instead of one per
step. Steps before it are positive, it is negative, the steps after it stay unlabeled.

It assumes what OmegaPRM assumes: once a prefix cannot reach the answer, no longer prefix
of the same solution can. All solutions advance together, one estimate each per round, so
each round is one batch for the generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qstar_dagster.search.estimate import PrefixEstimator
from qstar_dagster.search.tree import Node, Tree

LABELER = "binary_search"


@dataclass
class _Search:
    tree: Tree
    steps: list[Node]  # the solution's step nodes, root excluded
    lo: int  # the longest prefix known to reach the answer (0: the problem itself)
    hi: int  # the shortest prefix known not to (len(steps) + 1: none known)


@dataclass(frozen=True)
class FirstError:
    leaf_id: str
    step_ids: list[str]
    first_error: int | None  # index into step_ids, or None when every step can reach the answer
    cost_tokens: int


def first_errors(solutions: Sequence[tuple[Tree, Node]], estimator: PrefixEstimator) -> list[FirstError]:
    """`solutions`: (tree, terminal leaf). A right final answer makes every step positive with
    no estimate; a wrong one is searched."""
    searches = []
    for tree, leaf in solutions:
        steps = tree.path(leaf)[1:]
        if leaf.is_correct:  # every prefix of a right solution reaches the answer: nothing to search
            searches.append(_Search(tree, steps, len(steps), len(steps) + 1))
        else:  # the full prefix is known not to reach it
            searches.append(_Search(tree, steps, 0, len(steps)))
    spent = {id(s): 0 for s in searches}
    while open_ := [s for s in searches if s.hi - s.lo > 1]:
        mids = [(s.lo + s.hi) // 2 for s in open_]
        estimates = estimator.estimate([(s.tree, s.steps[m - 1]) for s, m in zip(open_, mids)])
        for s, m, e in zip(open_, mids, estimates):
            spent[id(s)] += e.cost_tokens
            if e.n_correct > 0:
                s.lo = m
            else:
                s.hi = m
    return [FirstError(s.steps[-1].node_id, [n.node_id for n in s.steps],
                       None if s.hi > len(s.steps) else s.hi - 1, spent[id(s)]) for s in searches]


def label_rows(results: Sequence[FirstError], run_id: str | None = None) -> list[dict]:
    """Hard labels for the steps up to and including the first error. A step shared by several
    solutions is labeled by the first solution that labels it."""
    rows: dict[str, dict] = {}
    for r in results:
        last = len(r.step_ids) - 1 if r.first_error is None else r.first_error
        for i, node_id in enumerate(r.step_ids[: last + 1]):
            value = 0.0 if i == r.first_error else 1.0
            rows.setdefault(node_id, {"node_id": node_id, "labeler": LABELER, "kind": "hard", "value": value,
                                      "cost_tokens": r.cost_tokens if i == last else 0, "created_run": run_id})
    return list(rows.values())
