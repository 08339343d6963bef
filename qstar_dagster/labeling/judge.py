"""AI-judge step labels following the PRM800K guideline.

The judge reads the problem and the numbered steps and rates each step positive (correct
and moves toward the answer), neutral (correct but no help) or negative (wrong), in order,
stopping at the first negative step. The same template and the same parser serve a large
model behind any `Generator` (OpenAI-compatible endpoint, vLLM) and the small judge the
factory trains for the built-in domain (`training/judge.py`).

The parser is strict: an answer that is not exactly the expected lines is unparsed and is
stored as such with its raw text, never guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from qstar_dagster.generation.base import Generator, SamplingParams
from qstar_dagster.search.tree import Tree

LABELER = "judge"

JUDGE_TEMPLATE = (
    "Rate each step (PRM800K guideline): positive if correct and useful, neutral if correct but useless, "
    "negative if wrong. Write 'Step i: rating' per step, in order; stop at the first negative.\n"
    "Problem: {problem}\n"
    "{steps}\n"
    "Ratings:\n"
)
RATINGS = {"positive": 1, "neutral": 0, "negative": -1}
_RATING_NAMES = {v: k for k, v in RATINGS.items()}
_LINE = re.compile(r"^Step (\d+): (positive|neutral|negative)\.?$", re.IGNORECASE)
TOKENS_PER_RATING = 20  # generation budget per step: "Step 12: negative" plus slack


def judge_prompt(problem: str, steps: Sequence[str], template: str = JUDGE_TEMPLATE) -> str:
    numbered = "\n".join(f"Step {i}: {s}" for i, s in enumerate(steps, 1))
    return template.format(problem=problem, steps=numbered)


def format_ratings(ratings: Sequence[int]) -> str:
    """The answer the guideline asks for: what the built-in judge is trained to write."""
    return "".join(f"Step {i}: {_RATING_NAMES[r]}\n" for i, r in enumerate(ratings, 1))


def truncate_at_first_negative(ratings: Sequence[int]) -> list[int]:
    out = []
    for r in ratings:
        out.append(r)
        if r < 0:
            break
    return out


def parse_ratings(text: str, n_steps: int) -> list[int] | None:
    """Ratings for steps 1..m, m <= n_steps, or None when `text` is not exactly that: lines
    'Step i: positive|neutral|negative' numbered from 1, ending at the first negative or at
    step n_steps. Blank lines around the answer are allowed; nothing else is."""
    lines = [ln.strip() for ln in text.strip().splitlines()]
    if not lines or not lines[0]:
        return None
    ratings = []
    for i, line in enumerate(lines, 1):
        m = _LINE.match(line)
        if not m or int(m.group(1)) != i or i > n_steps or (ratings and ratings[-1] < 0):
            return None
        ratings.append(RATINGS[m.group(2).lower()])
    if ratings[-1] >= 0 and len(ratings) < n_steps:
        return None  # stopped early without a negative step
    return ratings


@dataclass(frozen=True)
class Judgement:
    ratings: list[int] | None  # per step up to the first negative; None: unparsed
    raw: str
    cost_tokens: int


def judge(generator: Generator, solutions: Sequence[tuple[str, Sequence[str]]], template: str = JUDGE_TEMPLATE,
          seed: int = 0) -> list[Judgement]:
    """One greedy judgement per (problem, steps), all in one generator call per solution
    length; identical solutions are judged once."""
    unique = list(dict.fromkeys((p, tuple(s)) for p, s in solutions))
    done: dict[tuple[str, tuple[str, ...]], Judgement] = {}
    by_len: dict[int, list[tuple[str, tuple[str, ...]]]] = {}
    for item in unique:
        by_len.setdefault(len(item[1]), []).append(item)
    for n_steps, group in sorted(by_len.items()):
        params = SamplingParams(n=1, temperature=0.0, max_new_tokens=TOKENS_PER_RATING * n_steps + 8, seed=seed)
        outs = generator.generate([judge_prompt(p, s, template) for p, s in group], params)
        for item, [c] in zip(group, outs):
            done[item] = Judgement(parse_ratings(c.text, n_steps), c.text, c.n_tokens)
    return [done[(p, tuple(s))] for p, s in solutions]


def label_trees(trees: Sequence[Tree], generator: Generator, checkpoint: str | None = None,
                run_id: str | None = None, template: str = JUDGE_TEMPLATE, seed: int = 0) -> list[dict]:
    """`step_labels` rows from judging every root-to-leaf path of `trees`. Per step: kind
    `rating` (+1, 0, -1) and kind `hard` (neutral counts as positive, as in PRM800K's
    "neutral is fine" reading). A step shared by several paths keeps the first path's label.
    An unparsed judgement is one `unparsed` row on the path's leaf, value NULL, with the raw text."""
    items = [(tree, tree.path(leaf)[1:]) for tree in trees for leaf in tree.leaves() if leaf.parent_id is not None]
    judgements = judge(generator, [(t.problem.problem, [n.text for n in path]) for t, path in items], template, seed)
    rows: dict[tuple[str, str], dict] = {}
    base = {"labeler": LABELER, "labeler_checkpoint": checkpoint, "created_run": run_id}
    charged: set[int] = set()  # identical paths share one judgement: count its tokens once
    for (tree, path), j in zip(items, judgements):
        cost = 0 if id(j) in charged else j.cost_tokens
        charged.add(id(j))
        if j.ratings is None:
            leaf = path[-1].node_id
            rows.setdefault((leaf, "unparsed"), {**base, "node_id": leaf, "kind": "unparsed", "value": None,
                                                 "raw": j.raw, "cost_tokens": cost})
            continue
        for node, r in zip(path, j.ratings):
            for kind, value in (("rating", float(r)), ("hard", float(r >= 0))):
                rows.setdefault((node.node_id, kind), {**base, "node_id": node.node_id, "kind": kind, "value": value,
                                                       "raw": j.raw, "cost_tokens": 0})
        rows[(path[len(j.ratings) - 1].node_id, "hard")]["cost_tokens"] += cost  # once per judgement
    return list(rows.values())
