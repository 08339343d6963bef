"""Search over reasoning steps: best-of-N, tree-of-thoughts beam (BFS), MCTS.

Every search step sends the frontier of all problems in the batch to the generator in one
call (and the new nodes to the value function in one call): searching one problem at a
time leaves a GPU, or a CPU's vector units, mostly idle.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from qstar_dagster.generation.base import Generator, SamplingParams
from qstar_dagster.search.tree import Node, Tree
from qstar_dagster.search.value import VALUE_FUNCTIONS, ValueFunction
from qstar_dagster.spec import option
from qstar_dagster.tasks.domains import domain

ALGORITHMS = ("best_of_n", "beam", "mcts")
DEFAULT_K = {"beam": 4, "mcts": 2}


@dataclass(frozen=True)
class SearchSpec:
    algorithm: str = option("beam", f"one of {', '.join(ALGORITHMS)}")
    n: int = option(8, "best_of_n: samples per problem")
    # At a few dozen nodes, MCTS with k=4 spends its budget wide and rarely reaches an answer.
    k: int | None = option(None, "beam, mcts: next steps sampled per expanded node; unset: 4 for beam, 2 for mcts")
    beam_width: int | None = option(None, "beam: open nodes kept per problem and depth; unset: the domain's (4; "
                                    "Countdown 8, whose 2-3 steps leave the node budget room for it)")
    simulations: int = option(16, "mcts: rounds of select-expand-evaluate-backup")
    c_puct: float = option(1.5, "mcts: exploration weight of the policy prior")
    max_depth: int = option(6, "steps per path")
    step_max_tokens: int = option(48, "tokens per step")
    temperature: float = option(0.7, "sampling temperature of the steps")
    top_p: float = option(1.0, "nucleus sampling of the steps")
    # Both budgets are strict: an expansion starts only if its worst case (n new nodes of
    # step_max_tokens each) fits in what the tree has left.
    max_nodes: int = option(64, "budget: nodes per tree, root included")
    max_tokens: int = option(4096, "budget: generated step tokens per tree")
    value: str = option("likelihood", f"value function: {', '.join(VALUE_FUNCTIONS)} (mc reads the reference "
                        "answer: for making data; answers are then chosen by majority vote)")
    mc_rollouts: int = option(4, "value mc: completions sampled per node")
    prm_checkpoint: str | None = option(None, "value prm: PRM checkpoint id; unset: the latest PRM", added=True)
    seed: int = option(0, "seed of the search's sampling")

    def __post_init__(self) -> None:
        if self.k is None:
            object.__setattr__(self, "k", DEFAULT_K.get(self.algorithm, 4))
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"search algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.value not in VALUE_FUNCTIONS:
            raise ValueError(f"value function must be one of {VALUE_FUNCTIONS}, got {self.value!r}")
        width = 1 if self.beam_width is None else self.beam_width  # unset: the domain's, filled in later
        if min(self.n, self.k, width, self.max_depth, self.step_max_tokens, self.max_nodes - 1) < 1:
            raise ValueError(f"n, k, beam_width, max_depth, step_max_tokens must be >= 1 and max_nodes >= 2: {self}")

    def for_domain(self, name: str) -> SearchSpec:
        """The spec with what it leaves to the domain (the beam's width) filled in."""
        return self if self.beam_width is not None else replace(self, beam_width=domain(name).beam_width)


@dataclass
class SearchStats:
    generate_calls: int = 0
    generated_tokens: int = 0  # tokens of the steps (the tree's nodes)
    value_calls: int = 0
    value_tokens: int = 0  # tokens the value function generated (Monte Carlo rollouts)
    seconds: float = 0.0

    def add(self, other: SearchStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def tokens_per_second(self) -> float:
        return (self.generated_tokens + self.value_tokens) / self.seconds if self.seconds else 0.0


class Search:
    def __init__(self, spec: SearchSpec, generator: Generator, value: ValueFunction, seed: int):
        self.spec, self.generator, self.value, self.seed = spec, generator, value, seed
        self.stats = SearchStats()

    # --- shared steps ------------------------------------------------------------------------

    def _fits(self, tree: Tree, reserved: int, n: int) -> bool:
        """Whether `n` more nodes (after `reserved` already promised this call) fit both budgets
        at their worst case."""
        nodes = len(tree.nodes) + reserved + n
        tokens = tree.generated_tokens + (reserved + n) * self.spec.step_max_tokens
        return nodes <= self.spec.max_nodes and tokens <= self.spec.max_tokens

    def expand(self, targets: Sequence[tuple[Tree, Node]], n: int) -> list[tuple[Tree, Node]]:
        """Sample `n` next steps for every target node, all problems in one generator call.
        A target whose `n` children might break its tree's budgets is left unexpanded."""
        reserved: Counter[str] = Counter()
        chosen = []
        for tree, node in targets:
            if not node.is_terminal and self._fits(tree, reserved[tree.tree_id], n):
                reserved[tree.tree_id] += n
                chosen.append((tree, node))
        if not chosen:
            return []
        params = SamplingParams(n=n, temperature=self.spec.temperature, top_p=self.spec.top_p,
                                max_new_tokens=self.spec.step_max_tokens, stop=(chosen[0][0].step_format.separator,),
                                seed=self.seed * 1_000_003 + self.stats.generate_calls)
        outs = self.generator.generate([t.prefix(node) for t, node in chosen], params)
        self.stats.generate_calls += 1
        children = []
        for (tree, node), completions in zip(chosen, outs):
            for c in completions:
                children.append((tree, tree.add_child(node, c)))
                self.stats.generated_tokens += c.n_tokens
        return children

    def evaluate(self, items: list[tuple[Tree, Node]]) -> None:
        if not items:
            return
        values = self.value(items, seed=self.seed * 1_000_003 + 500_000 + self.stats.value_calls)
        self.stats.value_calls += 1
        for (_, node), v in zip(items, values):
            node.value = v

    def select_answer(self, tree: Tree) -> Node | None:
        """The leaf a search answers with. MCTS: the most visited path, when it ends in an
        answer. Otherwise the best-valued terminal; with no informative value (all equal, or a
        value that reads the reference answer, which an answer must not use) the most common
        answer (self-consistency), its likeliest path; in a domain without votes (Countdown:
        every right answer is the target) the likeliest path."""
        if self.spec.algorithm == "mcts" and (leaf := self._most_visited_leaf(tree)) is not None:
            return leaf
        terminals = [n for n in tree.terminals() if n.answer is not None] or tree.terminals()
        if not terminals:
            return None
        values = {n.value for n in terminals}
        if not self.value.uses_reference and len(values) > 1 and None not in values:
            return max(terminals, key=lambda n: (n.value, n.logprob))
        if not domain(tree.problem.domain).votes:
            return max(terminals, key=lambda n: n.logprob)
        votes = Counter(n.answer for n in terminals)
        top = votes.most_common(1)[0][0]
        return max((n for n in terminals if n.answer == top), key=lambda n: n.logprob)

    def run(self, trees: list[Tree]) -> list[Tree]:
        started = time.monotonic()
        getattr(self, f"_{self.spec.algorithm}")(trees)
        for tree in trees:
            tree.mark_selected(self.select_answer(tree))
        self.stats.value_tokens += sum(t.value_tokens for t in trees)
        self.stats.seconds += time.monotonic() - started
        return trees

    # --- algorithms --------------------------------------------------------------------------

    def _best_of_n(self, trees: list[Tree]) -> None:
        """N chains per problem from the root, each extended one step at a time."""
        chains = self.expand([(t, t.root) for t in trees], self.spec.n)
        while chains:
            open_chains = [(t, n) for t, n in chains if not n.is_terminal]
            chains = self.expand(open_chains, 1)
        self.evaluate([(t, n) for t in trees for n in t.terminals()])

    def _beam(self, trees: list[Tree]) -> None:
        """Tree-of-thoughts BFS: expand every frontier node with k steps, score the new nodes,
        keep the best `beam_width` open ones per problem; ended paths leave the beam."""
        frontier = {t.tree_id: [t.root] for t in trees}
        by_id = {t.tree_id: t for t in trees}
        width = {t.tree_id: self.spec.for_domain(t.problem.domain).beam_width for t in trees}
        while any(frontier.values()):
            children = self.expand([(by_id[tid], n) for tid, nodes in frontier.items() for n in nodes],
                                   self.spec.k)
            self.evaluate(children)
            frontier = {tid: [] for tid in frontier}
            for tree, child in children:
                if not child.is_terminal:
                    frontier[tree.tree_id].append(child)
            for tid, nodes in frontier.items():
                # One partial solution sampled twice (the same steps from the root) is one candidate
                # with one value: its copies tie exactly, so float noise in their scores (which
                # differs between backends, servers and batches) cannot reorder them. The sort is
                # stable: ties keep sampling order.
                steps = {id(n): _steps(by_id[tid], n) for n in nodes}  # each path walked once
                value: dict[tuple[str, ...], float] = {}
                for n in nodes:
                    value.setdefault(steps[id(n)], n.value or 0.0)
                nodes.sort(key=lambda n: -value[steps[id(n)]])
                del nodes[width[tid]:]

    def _mcts(self, trees: list[Tree]) -> None:
        """`simulations` rounds over all trees at once: PUCT selection from the root to a leaf,
        expansion of that leaf by k sampled steps (when the budgets allow), the new children
        scored by the value function, and their mean backed up along the path. A terminal (or
        unexpandable) leaf backs up its own value."""
        for _ in range(self.spec.simulations):
            picks = [(t, self._select(t)) for t in trees]
            children = self.expand([(t, path[-1]) for t, path in picks if not path[-1].children], self.spec.k)
            self.evaluate(children)
            self.evaluate([(t, path[-1]) for t, path in picks if not path[-1].children and path[-1].value is None])
            for tree, path in picks:
                leaf = path[-1]
                self._set_priors(tree, leaf)
                kids = [tree.nodes[c] for c in leaf.children]
                v = sum(k.value or 0.0 for k in kids) / len(kids) if kids else (leaf.value or 0.0)
                for node in path:
                    node.visits += 1
                    node.value_sum += v

    def _most_visited_leaf(self, tree: Tree) -> Node | None:
        node = tree.root
        while node.children:
            node = max((tree.nodes[c] for c in node.children), key=lambda k: (k.visits, k.value or 0.0))
        return node if node.is_terminal and node.answer is not None and node.visits else None

    def _select(self, tree: Tree) -> list[Node]:
        node, path = tree.root, [tree.root]
        while node.children and not node.is_terminal:
            parent, kids = node, [tree.nodes[c] for c in node.children]
            scores = [self._puct(parent, child, len(kids)) for child in kids]
            node = kids[scores.index(max(scores))]
            path.append(node)
        return path

    def _puct(self, parent: Node, child: Node, n_siblings: int) -> float:
        """Q + c * P * sqrt(N(parent)) / (1 + N(child)); an unvisited child's Q is its value estimate."""
        q = child.value_sum / child.visits if child.visits else (child.value or 0.0)
        prior = child.prior if child.prior is not None else 1 / n_siblings
        return q + self.spec.c_puct * prior * math.sqrt(max(1, parent.visits)) / (1 + child.visits)

    def _set_priors(self, tree: Tree, node: Node) -> None:
        """The policy's preference among siblings: softmax of mean token log-probability."""
        kids = [tree.nodes[c] for c in node.children]
        if not kids or kids[0].prior is not None:
            return
        scores = [k.logprob / max(1, k.n_tokens) for k in kids]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        for k, w in zip(kids, weights):
            k.prior = w / sum(weights)


def search(trees: list[Tree], spec: SearchSpec, generator: Generator, value: ValueFunction,
           seed: int | None = None) -> tuple[list[Tree], SearchStats]:
    """Run `spec` over `trees` (one per problem) in place; returns them and the call stats."""
    s = Search(spec, generator, value, spec.seed if seed is None else seed)
    s.run(trees)
    return trees, s.stats


def _steps(tree: Tree, node) -> tuple[str, ...]:
    """The texts of the steps from the root to `node`: what the partial solution says."""
    return tuple(n.text for n in tree.path(node)[1:])
