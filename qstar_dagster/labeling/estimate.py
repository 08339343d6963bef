"""Monte Carlo estimates of a step prefix: of N completions from it, how many reach the
reference answer (Math-Shepherd's value of a step). Shared by the Monte Carlo labeler, the
binary-search labeler and the naive baseline of the labeling benchmark.

Reuse: in a rollout tree, every finished path through a node is already a completion from
that node's prefix, so the estimator counts those first and samples only what is missing
to reach N. Paths cut by a search budget (truncated) are not finished and are not counted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from qstar_dagster.generation.base import Generator, SamplingParams
from qstar_dagster.search.tree import Node, Tree
from qstar_dagster.tasks.grading import answers_match, extract_answer


@dataclass(frozen=True)
class Estimate:
    n_rollouts: int
    n_correct: int
    cost_tokens: int  # tokens sampled for this estimate (reused paths cost nothing)
    n_reused: int

    @property
    def soft(self) -> float:
        return self.n_correct / self.n_rollouts if self.n_rollouts else 0.0

    @property
    def hard(self) -> float:
        return float(self.n_correct > 0)


@dataclass(frozen=True)
class EstimatorSpec:
    n: int = 8  # completions per prefix (Math-Shepherd's N)
    temperature: float = 0.7
    max_new_tokens: int = 128
    reuse_tree: bool = True  # count finished paths through the node before sampling


class PrefixEstimator:
    def __init__(self, generator: Generator, spec: EstimatorSpec = EstimatorSpec(), seed: int = 0):
        self.generator, self.spec, self.seed = generator, spec, seed
        self.calls = 0
        self.cache: dict[str, Estimate] = {}

    def estimate(self, items: Sequence[tuple[Tree, Node]]) -> list[Estimate]:
        """One estimate per (tree, node), all prefixes sampled together (one generator call per
        distinct number of missing completions). A terminal node is its own single rollout."""
        todo: dict[int, list[tuple[Tree, Node, int, int]]] = defaultdict(list)
        for tree, node in items:
            if node.node_id in self.cache:
                continue
            if node.is_terminal:
                self.cache[node.node_id] = Estimate(1, int(bool(node.is_correct)), 0, 1)
                continue
            reused = self._finished_paths(tree, node)[: self.spec.n] if self.spec.reuse_tree else []
            hits = sum(bool(n.is_correct) for n in reused)
            missing = self.spec.n - len(reused)
            if missing == 0:
                self.cache[node.node_id] = Estimate(len(reused), hits, 0, len(reused))
            else:
                todo[missing].append((tree, node, len(reused), hits))
        for missing, group in sorted(todo.items()):
            params = SamplingParams(n=missing, temperature=self.spec.temperature,
                                    max_new_tokens=self.spec.max_new_tokens, seed=self.seed * 1_000_003 + self.calls)
            self.calls += 1
            outs = self.generator.generate([tree.prefix(node) for tree, node, _, _ in group], params)
            for (tree, node, n_reused, hits), completions in zip(group, outs):
                done = tree.solution_until(node)
                correct = sum(answers_match(extract_answer(tree.step_format.join([done, c.text])),
                                            tree.problem.reference_answer) for c in completions)
                self.cache[node.node_id] = Estimate(n_reused + missing, hits + correct,
                                                    sum(c.n_tokens for c in completions), n_reused)
        return [self.cache[node.node_id] for _, node in items]

    @staticmethod
    def _finished_paths(tree: Tree, node: Node) -> list[Node]:
        return [d for d in tree.descendants(node) if d.is_terminal and not d.truncated]
