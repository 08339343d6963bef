"""Value functions: how promising a partial solution (a node) looks, in [0, 1].

Each is called once per search step with every new node of every problem in the batch.
`prm` scores a path with a trained process reward model (PRM-guided search).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from qstar_dagster.generation.base import Generator
from qstar_dagster.search.estimate import EstimatorSpec, PrefixEstimator
from qstar_dagster.search.tree import Node, Tree


class ValueFunction(Protocol):
    name: str
    uses_reference: bool  # reads the reference answer: fine for making data, not for answering

    def __call__(self, items: Sequence[tuple[Tree, Node]], seed: int) -> list[float]: ...


class NoValue:
    """Every node looks the same: beam keeps the first b, MCTS follows the policy's prior."""

    name = "none"
    uses_reference = False

    def __call__(self, items, seed):
        return [0.0] * len(items)


class LikelihoodValue:
    """The policy's own likelihood of the path ("From r to Q*"): the geometric mean of its
    token probabilities, exp(sum of log-probabilities / tokens)."""

    name = "likelihood"
    uses_reference = False

    def __call__(self, items, seed):
        out = []
        for tree, node in items:
            path = tree.path(node)[1:]
            tokens = sum(n.n_tokens for n in path)
            out.append(math.exp(sum(n.logprob for n in path) / tokens) if tokens else 1.0)
        return out


class MonteCarloValue:
    """Math-Shepherd's estimate: the share of `rollouts` completions from the node that reach
    the reference answer. Terminal nodes score their own correctness. Uses the reference,
    so it is for making training data, not for answering unseen problems."""

    name = "mc"
    uses_reference = True

    def __init__(self, generator: Generator, rollouts: int = 4, max_new_tokens: int = 128,
                 temperature: float = 0.7):
        self.generator = generator
        # During search a node has no finished descendants yet, so there is nothing to reuse.
        self.spec = EstimatorSpec(n=rollouts, temperature=temperature, max_new_tokens=max_new_tokens,
                                  reuse_tree=False)

    def __call__(self, items, seed):
        estimates = PrefixEstimator(self.generator, self.spec, seed=seed).estimate(items)
        for (tree, _), e in zip(items, estimates):
            tree.value_tokens += e.cost_tokens
        return [e.soft for e in estimates]


PRM_AGGREGATIONS = ("min", "last", "prod")


class PRMValue:
    """A process reward model's view of the path from its step scores: `min` (a path is as
    good as its weakest step), `last` (only the newest step: the value of the state reached)
    or `prod` (their product: the chance that every step is right, if the scores were
    independent)."""

    name = "prm"
    uses_reference = False

    def __init__(self, scorer, aggregation: str = "min"):
        if aggregation not in PRM_AGGREGATIONS:
            raise ValueError(f"PRM aggregation must be one of {', '.join(PRM_AGGREGATIONS)}, got {aggregation!r}")
        self.scorer, self.aggregation = scorer, aggregation

    def __call__(self, items, seed):
        paths = [[n.text for n in tree.path(node)[1:]] for tree, node in items]
        scored = self.scorer.score_batch([(tree.problem.problem, p) for (tree, _), p in zip(items, paths) if p])
        it = iter(scored)
        return [aggregate(next(it) if p else [1.0], self.aggregation) for p in paths]


def aggregate(scores: Sequence[float], how: str) -> float:
    if how == "min":
        return min(scores)
    if how == "last":
        return scores[-1]
    return math.prod(scores)


VALUE_FUNCTIONS = ("none", "likelihood", "mc", "prm")


def make_value_function(name: str, generator: Generator, mc_rollouts: int = 4, prm=None) -> ValueFunction:
    """`prm`: a step scorer (`score_batch`, e.g. training.prm.PRMScorer) for value "prm"; the
    caller loads it, so that search does not depend on how PRMs are trained."""
    if name == "none":
        return NoValue()
    if name == "likelihood":
        return LikelihoodValue()
    if name == "mc":
        return MonteCarloValue(generator, mc_rollouts)
    if name == "prm":
        if prm is None:
            raise ValueError("value function prm needs a PRM checkpoint (prm_checkpoint; materialize prm_model)")
        return PRMValue(prm)
    raise ValueError(f"value function must be one of {', '.join(VALUE_FUNCTIONS)}, got {name!r}")
