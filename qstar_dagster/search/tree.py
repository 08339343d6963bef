"""Trees of reasoning steps: a node is one step, its parent the steps before it.

The root stands for the problem (depth 0, no text). A path from the root to a node is a
partial solution; a terminal node ends a solution (end-of-sequence, an empty step, the
token budget of a step, or the depth limit) and carries the answer the path states and
whether it matches the reference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from qstar_dagster.generation.base import Completion
from qstar_dagster.tasks.domains import domain
from qstar_dagster.tasks.problem import Problem, content_id
from qstar_dagster.tasks.steps import StepFormat


@dataclass
class Node:
    node_id: str
    parent_id: str | None
    depth: int
    text: str  # the step; "" for the root
    n_tokens: int = 0
    logprob: float = 0.0
    is_terminal: bool = False
    truncated: bool = False  # ended by a budget (step tokens or depth), not by the policy
    answer: str | None = None
    is_correct: bool | None = None
    value: float | None = None  # the value function's estimate
    prior: float | None = None  # MCTS: share of the parent's children by policy likelihood
    visits: int = 0  # MCTS
    value_sum: float = 0.0  # MCTS
    selected: bool = False  # on the path the search picked as its answer
    children: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """The policy ended its solution with this step (a budget did not cut it)."""
        return self.is_terminal and not self.truncated


@dataclass
class Tree:
    tree_id: str
    problem: Problem
    prompt: str  # the policy prompt for the problem
    step_format: StepFormat
    max_depth: int
    nodes: dict[str, Node] = field(default_factory=dict)
    generated_tokens: int = 0  # tokens of its steps
    value_tokens: int = 0  # tokens a value function generated to score its nodes (Monte Carlo)

    def __post_init__(self) -> None:
        if not self.nodes:
            root = Node(content_id("n", self.tree_id, "root"), None, 0, "")
            self.nodes[root.node_id] = root

    @property
    def root(self) -> Node:
        return next(iter(self.nodes.values()))

    def path(self, node: Node) -> list[Node]:
        out = [node]
        while out[-1].parent_id is not None:
            out.append(self.nodes[out[-1].parent_id])
        return out[::-1]

    def prefix(self, node: Node) -> str:
        """The text a policy continues from to write the step after `node`."""
        return self.prompt + "".join(n.text + self.step_format.separator for n in self.path(node)[1:])

    def add_child(self, parent: Node, completion: Completion) -> Node:
        index = len(parent.children)
        text = completion.text.strip()
        depth = parent.depth + 1
        ended = completion.stop_string is None  # end-of-sequence or the step's token budget
        truncated = completion.finish_reason == "length" or (depth >= self.max_depth and not ended)
        child = Node(content_id("n", parent.node_id, index), parent.node_id, depth, text,
                     completion.n_tokens, completion.logprob, is_terminal=ended or not text or truncated,
                     truncated=truncated)
        if child.is_terminal:
            self._grade(child)
        self.nodes[child.node_id] = child
        parent.children.append(child.node_id)
        self.generated_tokens += completion.n_tokens
        return child

    @classmethod
    def from_rows(cls, tree_id: str, problem: Problem, prompt: str, step_format: StepFormat, max_depth: int,
                  rows: list[dict[str, Any]]) -> Tree:
        """A tree rebuilt from its `nodes` rows (parents before children)."""
        tree = cls(tree_id, problem, prompt, step_format, max_depth, nodes={})
        for r in rows:
            stats = r["stats"] if isinstance(r["stats"], dict) else json.loads(r["stats"] or "{}")
            node = Node(r["node_id"], r["parent_id"], r["depth"], r["text"], r["n_tokens"] or 0, r["logprob"] or 0.0,
                        r["is_terminal"], stats.get("truncated", False), r["answer"], r["is_correct"],
                        stats.get("value"), stats.get("prior"), stats.get("visits", 0), stats.get("value_sum", 0.0),
                        stats.get("selected", False))
            tree.nodes[node.node_id] = node
            if node.parent_id is not None:
                tree.nodes[node.parent_id].children.append(node.node_id)
                tree.generated_tokens += node.n_tokens
        return tree

    def descendants(self, node: Node) -> list[Node]:
        out, stack = [], list(node.children)
        while stack:
            child = self.nodes[stack.pop()]
            out.append(child)
            stack.extend(child.children)
        return out

    def _grade(self, node: Node) -> None:
        solution = self.solution_until(node)
        node.answer, node.is_correct = domain(self.problem.domain).grade(self.problem, solution)

    def solution_until(self, node: Node) -> str:
        """The steps from the root to `node`, joined: the solution text the path states."""
        return self.step_format.join([n.text for n in self.path(node)[1:] if n.text])

    def leaves(self) -> list[Node]:
        return [n for n in self.nodes.values() if not n.children]

    def terminals(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.is_terminal]

    def mark_selected(self, leaf: Node | None) -> None:
        for n in self.nodes.values():
            n.selected = False
        if leaf is not None:
            for n in self.path(leaf):
                n.selected = True

    def selected_leaf(self) -> Node | None:
        chosen = [n for n in self.nodes.values() if n.selected and not any(
            self.nodes[c].selected for c in n.children)]
        return chosen[0] if chosen else None

    def rows(self, policy_checkpoint: str | None, search: str, run_id: str | None) -> list[dict[str, Any]]:
        """One `nodes` row per node, for the lineage store."""
        return [{
            "node_id": n.node_id, "tree_id": self.tree_id, "prompt_id": self.problem.prompt_id,
            "parent_id": n.parent_id, "depth": n.depth, "text": n.text, "n_tokens": n.n_tokens,
            "logprob": n.logprob, "is_terminal": n.is_terminal, "answer": n.answer, "is_correct": n.is_correct,
            "policy_checkpoint": policy_checkpoint, "search": search, "created_run": run_id,
            "stats": {"value": n.value, "prior": n.prior, "visits": n.visits, "value_sum": n.value_sum,
                      "selected": n.selected, "truncated": n.truncated},
        } for n in self.nodes.values()]


def check_tree(tree: Tree) -> list[str]:
    """Invariant violations (empty when the tree is sound)."""
    problems = []
    roots = [n for n in tree.nodes.values() if n.parent_id is None]
    if len(roots) != 1:
        problems.append(f"{len(roots)} roots")
    for n in tree.nodes.values():
        if n.parent_id is not None:
            parent = tree.nodes.get(n.parent_id)
            if parent is None:
                problems.append(f"{n.node_id}: parent {n.parent_id} missing")
                continue
            if n.depth != parent.depth + 1:
                problems.append(f"{n.node_id}: depth {n.depth} under a parent at depth {parent.depth}")
            if n.node_id not in parent.children:
                problems.append(f"{n.node_id}: not among its parent's children")
        if n.is_terminal and n.children:
            problems.append(f"{n.node_id}: terminal with children")
        if n.is_terminal and n.is_correct is None:
            problems.append(f"{n.node_id}: terminal but not graded")
        if n.depth > tree.max_depth:
            problems.append(f"{n.node_id}: deeper than {tree.max_depth}")
    return problems
