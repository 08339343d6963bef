"""Monte Carlo estimates of a step prefix: of N completions from it, how many reach the
reference answer (Math-Shepherd's value of a step). Shared by the Monte Carlo labeler, the
binary-search labeler and the naive baseline of the labeling benchmark.

Two kinds of reuse, both counted before anything is sampled, so only what is missing to
reach N is generated:

- tree paths: in a rollout tree, every finished path through a node is already a
  completion from that node's prefix. Paths cut by a search budget (truncated) are not
  finished and are not counted. A search keeps the paths it likes, so these are not a
  random sample (bench/labeling.py measures what that costs in agreement).
- shared completions: a completion sampled from a node whose first steps repeat a child's
  (grandchild's, ...) steps is also a completion from that descendant's prefix: what
  follows the repeated steps is the policy's continuation of exactly that prefix. Nodes
  are therefore estimated shallow to deep, and each sample is credited to every node of
  the tree it passes through. This keeps each estimate an unbiased sample.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from qstar_dagster.generation.base import Generator, SamplingParams
from qstar_dagster.search.tree import Node, Tree
from qstar_dagster.spec import option
from qstar_dagster.tasks.domains import domain


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
    n: int = option(8, "completions per step prefix (Math-Shepherd's N)")
    temperature: float = option(0.7, "sampling temperature of the completions")
    max_new_tokens: int = option(128, "tokens per completion")
    reuse_tree: bool = option(True, "count the tree's finished paths through a step as completions and sample "
                              "only the rest")
    share_completions: bool = option(True, "credit a sample to the tree's deeper nodes it passes through")
    same_prefix_once: bool = option(True, "nodes with the same prefix text (a step sampled twice) share one "
                                    "estimate")


class PrefixEstimator:
    def __init__(self, generator: Generator, spec: EstimatorSpec = EstimatorSpec(), seed: int = 0):
        self.generator, self.spec, self.seed = generator, spec, seed
        self.calls = 0
        self.cache: dict[str, Estimate] = {}
        self.shared: dict[str, list[bool]] = defaultdict(list)  # node_id -> outcomes of samples through it

    def estimate(self, items: Sequence[tuple[Tree, Node]]) -> list[Estimate]:
        """One estimate per (tree, node). Depth by depth (shallow first, so their samples can
        serve deeper nodes), all prefixes of a depth sampled together: one generator call per
        distinct number of missing completions. A terminal node is its own single rollout."""
        by_depth: dict[int, list[tuple[Tree, Node]]] = defaultdict(list)
        for tree, node in items:
            by_depth[node.depth].append((tree, node))
        for depth in sorted(by_depth):
            self._estimate_level(by_depth[depth])
        return [self.cache[node.node_id] for _, node in items]

    def _estimate_level(self, items: Sequence[tuple[Tree, Node]]) -> None:
        todo: dict[int, list[tuple[Tree, Node, int, int]]] = defaultdict(list)
        copies: list[tuple[Node, str]] = []  # nodes whose prefix text another node of the level has
        first_with: dict[str, str] = {}  # prefix text -> the node estimated for it
        unique = {node.node_id: (tree, node) for tree, node in items}  # a node asked for twice is estimated once
        for tree, node in unique.values():
            if node.node_id in self.cache:
                continue
            if node.is_terminal:
                self.cache[node.node_id] = Estimate(1, int(bool(node.is_correct)), 0, 1)
                continue
            # Searches often sample the same step twice: same prefix, same distribution, one estimate.
            prefix = tree.prefix(node)
            if self.spec.same_prefix_once and prefix in first_with:
                copies.append((node, first_with[prefix]))
                continue
            first_with[prefix] = node.node_id
            reused = [bool(n.is_correct) for n in self._finished_paths(tree, node)] if self.spec.reuse_tree else []
            reused = (reused + self.shared.get(node.node_id, []))[: self.spec.n]
            missing = self.spec.n - len(reused)
            if missing == 0:
                self.cache[node.node_id] = Estimate(len(reused), sum(reused), 0, len(reused))
            else:
                todo[missing].append((tree, node, len(reused), sum(reused)))
        for missing, group in sorted(todo.items()):
            params = SamplingParams(n=missing, temperature=self.spec.temperature,
                                    max_new_tokens=self.spec.max_new_tokens, seed=self.seed * 1_000_003 + self.calls)
            self.calls += 1
            outs = self.generator.generate([tree.prefix(node) for tree, node, _, _ in group], params)
            for (tree, node, n_reused, hits), completions in zip(group, outs):
                done = tree.solution_until(node)
                grade = domain(tree.problem.domain).grade
                correct = 0
                for c in completions:
                    _, ok = grade(tree.problem, tree.step_format.join([done, c.text]))
                    correct += ok
                    if self.spec.share_completions and c.finish_reason != "length":
                        self._share(tree, node, tree.step_format.split(c.text), ok)
                self.cache[node.node_id] = Estimate(n_reused + missing, hits + correct,
                                                    sum(c.n_tokens for c in completions), n_reused)
        for node, same in copies:
            e = self.cache[same]
            self.cache[node.node_id] = Estimate(e.n_rollouts, e.n_correct, 0, e.n_rollouts)

    def _share(self, tree: Tree, node: Node, steps: list[str], ok: bool) -> None:
        """Credit a finished sample from `node` to each non-terminal descendant whose steps
        it repeats (a terminal node's estimate is its own grade)."""
        frontier = [node]
        for text in steps[:-1]:  # the last step ends the sample: its node would be terminal
            frontier = [c for n in frontier for c in map(tree.nodes.get, n.children)
                        if c.text == text and not c.is_terminal]
            for c in frontier:
                self.shared[c.node_id].append(ok)

    @staticmethod
    def _finished_paths(tree: Tree, node: Node) -> list[Node]:
        return [d for d in tree.descendants(node) if d.finished]
