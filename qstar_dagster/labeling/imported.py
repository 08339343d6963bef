"""Process-supervision files as labeled trees: PRM800K, Math-Shepherd and ProcessBench lines
(read by `tasks/process_files.py`) become one rollout of trees and `step_labels` under the
format's own labeler, so every tool that reads a rollout (agreement, datasets, PRM
evaluation, Monte Carlo and judge labelers) works on them as on the factory's own.

- One tree per problem; a problem's solutions share their common prefix, so PRM800K's
  alternative completions at a step, and solutions that part after the same first steps,
  are siblings (node ids are content ids of parent and text).
- Labels: kind `hard` (the step is right: rating >= 0, neutral counting as positive as
  PRM800K's guideline has it, or `+`), and for PRM800K kind `rating` (+1 / 0 / -1). Where
  several lines rate one step (PRM800K's quality-control questions), `rating` is their mean,
  `hard` follows the mean (a tie of `+` and `-` counts as wrong), and `n_rollouts` /
  `n_correct` count the raters. Unrated steps have no rows.
- A step that ends a solution is a terminal node graded by the file's verdict where it has
  one (ProcessBench's `final_answer_correct`, Math-Shepherd's last label), else against the
  reference answer.
- Lineage: the tree row's spec names the format, file, its sha256 and every source line
  with the line's own ids; each node's stats list the lines whose solutions contain it, and
  each label's `raw` the lines and ratings it came from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from qstar_dagster.lineage.store import utcnow
from qstar_dagster.search.tree import Node, Tree
from qstar_dagster.tasks.domains import domain
from qstar_dagster.tasks.grading import extract_answer
from qstar_dagster.tasks.problem import content_id, policy_prompt
from qstar_dagster.tasks.process_files import PRM800K, LabeledSolution, problems_of
from qstar_dagster.tasks.steps import step_format

SEARCH_PREFIX = "import:"  # trees.search of an imported rollout: import:<format>


@dataclass
class _Rated:
    ratings: list[int] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    flagged: bool = False
    human: bool = False


@dataclass
class ImportedRollout:
    rollout_id: str
    format: str
    trees: list[Tree]
    tree_rows: list[dict]
    node_rows: list[dict]
    label_rows: list[dict]

    @property
    def labeler(self) -> str:
        return self.format  # each format's labels go under its own name


def rollout_id_of(format: str, prompt_set: str, version: str, file_sha256: str) -> str:
    return content_id("r", "import", format, prompt_set, version, file_sha256)


def _child(tree: Tree, parent: Node, text: str) -> Node:
    node_id = content_id("n", parent.node_id, text)
    if node_id not in tree.nodes:
        tree.nodes[node_id] = Node(node_id, parent.node_id, parent.depth + 1, text)
        parent.children.append(node_id)
    return tree.nodes[node_id]


def _label_rows(format: str, node_id: str, r: _Rated, run_id: str | None) -> list[dict]:
    if format == PRM800K:
        mean = sum(r.ratings) / len(r.ratings)
        values = {"rating": mean, "hard": float(mean >= 0)}
        positive = sum(x >= 0 for x in r.ratings)
    else:
        positive = sum(x > 0 for x in r.ratings)
        values = {"hard": float(2 * positive > len(r.ratings))}
    raw = json.dumps({"lines": r.lines, "ratings": r.ratings, "flagged": r.flagged, "human": r.human})
    return [{"node_id": node_id, "labeler": format, "kind": kind, "value": value,
             "n_rollouts": len(r.ratings), "n_correct": positive, "cost_tokens": 0, "raw": raw,
             "labeler_checkpoint": None, "created_run": run_id} for kind, value in values.items()]


def build_import(format: str, solutions: Sequence[LabeledSolution], prompt_set: str, version: str, source: str,
                 file_sha256: str, run_id: str | None = None) -> ImportedRollout:
    """The trees, node rows and label rows of a file's solutions, as one rollout."""
    rollout_id = rollout_id_of(format, prompt_set, version, file_sha256)
    trees, tree_rows, node_rows, label_rows = [], [], [], []
    for problem, group in problems_of(solutions):
        tree = Tree(content_id("t", rollout_id, problem.prompt_id), problem, policy_prompt(problem.problem),
                    step_format(problem.domain), max_depth=0)
        rated: dict[str, _Rated] = {}
        lines: dict[str, list[int]] = {}
        flagged: set[str] = set()  # PRM800K: steps a labeler flagged, rated or not
        verdicts: dict[str, tuple[str, bool | None]] = {}  # node -> (solution text, the file's verdict)
        selected = None
        for sol in group:
            parent, taken = tree.root, []
            for slot in sol.slots:
                nodes = [_child(tree, parent, c.text) for c in slot.candidates]
                for node, c in zip(nodes, slot.candidates):
                    lines.setdefault(node.node_id, []).append(sol.line)
                    if c.flagged:
                        flagged.add(node.node_id)
                    if c.rating is not None:
                        r = rated.setdefault(node.node_id, _Rated())
                        r.ratings.append(c.rating)
                        r.lines.append(sol.line)
                        r.flagged |= c.flagged
                        r.human |= c.human
                    if c.ends:
                        path = [*taken, c]
                        last = slot.chosen is not None and c is slot.candidates[slot.chosen] and \
                            len(path) == len(sol.path())
                        verdicts.setdefault(node.node_id, (tree.step_format.join([s.text for s in path]),
                                                           sol.final_correct if last else None))
                if slot.chosen is None:
                    break
                taken.append(slot.candidates[slot.chosen])
                parent = nodes[slot.chosen]
            selected = selected or (parent if parent is not tree.root else None)
        for node_id, (text, verdict) in verdicts.items():
            node = tree.nodes[node_id]
            if node.children:  # another solution goes on after this step: not an end here
                continue
            node.is_terminal = True
            if verdict is None:
                node.answer, node.is_correct = domain(problem.domain).grade(problem, text)
            else:
                node.answer, node.is_correct = extract_answer(text), verdict
        tree.max_depth = max(n.depth for n in tree.nodes.values())
        tree.mark_selected(selected)
        trees.append(tree)
        rows = tree.rows(None, SEARCH_PREFIX + format, run_id)
        for row in rows:
            row["stats"] |= {"lines": lines.get(row["node_id"], []), "flagged": row["node_id"] in flagged}
        node_rows += rows
        for node_id, r in rated.items():
            label_rows += _label_rows(format, node_id, r, run_id)
        chosen = tree.selected_leaf()
        tree_rows.append({
            "tree_id": tree.tree_id, "rollout_id": rollout_id, "prompt_id": problem.prompt_id,
            "prompt_set": prompt_set, "prompt_set_version": version, "policy_checkpoint": None,
            "search": SEARCH_PREFIX + format, "value_function": "none",
            "spec": {"format": format, "source": source, "sha256": file_sha256, "max_depth": tree.max_depth,
                     "lines": [{"line": s.line, **s.ids} for s in group]},
            "n_nodes": len(tree.nodes), "generated_tokens": 0, "value_tokens": 0, "seconds": None,
            "selected_node": chosen and chosen.node_id, "selected_correct": bool(chosen and chosen.is_correct),
            "any_correct": any(n.is_correct for n in tree.terminals()), "created_run": run_id, "created_at": utcnow(),
        })
    return ImportedRollout(rollout_id, format, trees, tree_rows, node_rows, label_rows)
