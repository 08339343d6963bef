"""The built-in judge: a policy checkpoint fine-tuned to answer the PRM800K judge template
(`labeling/judge.py`) on rollout paths of the built-in domain rated by its step oracle.

Starting from the policy rather than from scratch gives the judge the arithmetic it must
check. The judge is then used exactly like a large one: same template, same parser, any
`Generator` backend. It learns from the rollouts of a training prompt set, so the labels it
makes on the test set's rollouts are on problems it has not seen.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from qstar_dagster.generation.backends import make_generator
from qstar_dagster.generation.base import Generator
from qstar_dagster.labeling.agreement import agreement
from qstar_dagster.labeling.judge import (
    JUDGE_TEMPLATE,
    format_ratings,
    judge,
    judge_prompt,
    truncate_at_first_negative,
)
from qstar_dagster.lineage.rollouts import rollout_policy
from qstar_dagster.lineage.store import LineageStore, utcnow
from qstar_dagster.search.rollouts import load_trees
from qstar_dagster.search.tree import Tree
from qstar_dagster.spec import option
from qstar_dagster.tasks.domains import domain
from qstar_dagster.tasks.problem import content_id
from qstar_dagster.training.checkpoints import CheckpointBuild, fine_tune
from qstar_dagster.training.sft import FitSpec, encode_pairs, fit_causal_lm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JudgeTrainSpec:
    steps: int = option(400, "optimizer steps")
    batch_size: int = option(16, "paths per step")
    lr: float = option(2e-3, "peak learning rate (warm-up, then cosine)")
    warmup: int = option(40, "warm-up steps")
    seed: int = option(0, "seed of the split, the balancing and the training")
    max_examples: int = option(4000, "paths to learn from, after balancing")
    holdout: int = option(200, "paths of unseen problems kept aside to measure the judge")
    # rollouts of a decent policy are mostly right
    balance: bool = option(True, "as many paths with an error as without")


@dataclass(frozen=True)
class JudgeExample:
    problem: str
    steps: tuple[str, ...]
    ratings: tuple[int, ...]  # oracle ratings up to the first negative step
    node_ids: tuple[str, ...]  # the path's step nodes: what the example is made of


def judge_examples(trees: Sequence[Tree]) -> list[JudgeExample]:
    """One example per distinct root-to-leaf path of built-in-domain trees."""
    seen, out = set(), []
    for tree in trees:
        d = domain(tree.problem.domain)
        if not d.has_oracle:
            raise ValueError(f"the built-in judge learns from oracle-rated rollouts; tree {tree.tree_id} is of "
                             f"domain {d.name!r}, which has no step oracle")
        for leaf in tree.leaves():
            path = tree.path(leaf)[1:]
            steps = tuple(n.text for n in path)
            if not steps or (tree.problem.problem, steps) in seen:
                continue
            seen.add((tree.problem.problem, steps))
            verdicts = d.oracle(tree.problem, steps).verdicts
            ratings = truncate_at_first_negative([1 if v.correct else -1 for v in verdicts])
            out.append(JudgeExample(tree.problem.problem, steps, tuple(ratings), tuple(n.node_id for n in path)))
    return out


def split_examples(examples: Sequence[JudgeExample], spec: JudgeTrainSpec) -> tuple[list, list]:
    """(train, holdout), seeded; holdout problems never appear in train."""
    rng = random.Random(spec.seed)
    per_problem = Counter(e.problem for e in examples)
    problems = sorted(per_problem)
    rng.shuffle(problems)
    held: set[str] = set()
    n_held = 0
    limit = min(spec.holdout, len(examples) // 5)  # small rollouts keep most paths for training
    for p in problems:
        if n_held >= limit:
            break
        held.add(p)
        n_held += per_problem[p]
    train = [e for e in examples if e.problem not in held]
    holdout = [e for e in examples if e.problem in held]
    if spec.balance:
        bad = [e for e in train if e.ratings[-1] < 0]
        good = [e for e in train if e.ratings[-1] >= 0]
        rng.shuffle(good)
        train = bad + good[: max(len(bad), 1)]
    rng.shuffle(train)
    return train[: spec.max_examples], holdout


def train_judge(policy_dir: str | Path, train: Sequence[JudgeExample], out_dir: Path,
                spec: JudgeTrainSpec = JudgeTrainSpec()) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy_dir)
    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    pairs = [(judge_prompt(e.problem, e.steps), format_ratings(e.ratings)) for e in train]
    fit = FitSpec(steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr, warmup=spec.warmup, seed=spec.seed,
                  eval_every=0)
    summary = fit_causal_lm(model, tok, encode_pairs(tok, pairs), fit, "judge")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {**summary, "config": asdict(spec)}


def evaluate_judge(generator: Generator, holdout: Sequence[JudgeExample]) -> dict:
    """The judge against the oracle on held-out paths: parsed share, step agreement and
    first-error F1 (each path's steps get synthetic ids)."""
    judgements = judge(generator, [(e.problem, e.steps) for e in holdout])
    labels, reference, solutions = {}, {}, []
    for i, (e, j) in enumerate(zip(holdout, judgements)):
        ids = [f"{i}/{k}" for k in range(len(e.steps))]
        solutions.append(ids)
        reference.update({s: r >= 0 for s, r in zip(ids, e.ratings)})
        if j.ratings is not None:
            labels.update({s: r >= 0 for s, r in zip(ids, j.ratings)})
    a = agreement(labels, reference, solutions)
    n = len(holdout)
    return {"n_paths": n, "parsed_rate": sum(j.ratings is not None for j in judgements) / n if n else None,
            "step_accuracy": a.accuracy, "negative_recall": a.negative_recall,
            "negative_precision": a.negative_precision, "first_error_f1": a.first_error_f1}


# --- the judge_model stage: learn from a stored rollout, measure, record ----------------------


@dataclass
class JudgeBuild:
    checkpoint: CheckpointBuild
    dataset_row: dict | None = None  # the judge's training paths as a dataset; None when reused
    member_rows: list[dict] | None = None


def build_judge(store: LineageStore, checkpoints_dir: Path, datasets_dir: Path, rollout_id: str,
                spec: JudgeTrainSpec = JudgeTrainSpec(), device: str = "cpu",
                run_id: str | None = None) -> JudgeBuild:
    """Train the built-in judge on the oracle-rated paths of `rollout_id`, starting from the
    policy that sampled them, and evaluate it on held-out problems, through the shared
    checkpoint build (named by its inputs; one recorded and on disk is reused)."""
    policy_id, n_trees = rollout_policy(store, rollout_id)
    if not n_trees:
        raise LookupError(f"rollout {rollout_id!r} is not in {store.path}; materialize tot_rollouts on the judge's "
                          "training prompt set first")
    policy = store.checkpoint(policy_id, "policy")
    dataset_id = content_id("ds", "judge_sft", rollout_id, asdict(spec), JUDGE_TEMPLATE)
    @functools.cache  # read and split once, and only when something is trained or measured
    def split() -> tuple[list[JudgeExample], list[JudgeExample]]:
        train, holdout = split_examples(judge_examples(load_trees(store, rollout_id)), spec)
        if not train:
            raise ValueError(f"rollout {rollout_id} has no paths to learn judging from")
        log.info("judge: %d training paths (%d with an error), %d held out, from rollout %s", len(train),
                 sum(e.ratings[-1] < 0 for e in train), len(holdout), rollout_id)
        return train, holdout

    def evaluate(path: Path) -> dict:
        heldout = evaluate_judge(make_generator("transformers", str(path), device), split()[1])
        log.info("judge on %d held-out paths: parsed %.1f%%, step accuracy %.1f%%, first-error F1 %.3f",
                 heldout["n_paths"], 100 * (heldout["parsed_rate"] or 0), 100 * (heldout["step_accuracy"] or 0),
                 heldout["first_error_f1"] or 0)
        return heldout

    built = fine_tune(store, checkpoints_dir, "judge", policy, dataset_id,
                      {"trainer": "judge", **asdict(spec), "template": JUDGE_TEMPLATE, "architecture": "char-llama"},
                      lambda path: train_judge(policy["path"], split()[0], path, spec), evaluate, run_id)
    if built.reused:
        return JudgeBuild(built)
    train = split()[0]
    export = datasets_dir / f"{dataset_id}.jsonl"
    export.parent.mkdir(parents=True, exist_ok=True)
    tmp = export.with_suffix(".jsonl.tmp")
    with tmp.open("w") as f:
        for e in train:
            f.write(json.dumps({"prompt": judge_prompt(e.problem, e.steps), "completion": format_ratings(e.ratings),
                                "node_ids": list(e.node_ids)}) + "\n")
    os.replace(tmp, export)
    return JudgeBuild(
        built,
        dataset_row={"dataset_id": dataset_id, "kind": "judge_sft",
                     "spec": {"rollout_id": rollout_id, **asdict(spec)}, "n_rows": len(train), "path": str(export),
                     "sha256": hashlib.sha256(export.read_bytes()).hexdigest(), "created_run": run_id,
                     "created_at": utcnow()},
        member_rows=[{"dataset_id": dataset_id, "row_idx": i, "node_id": n, "role": "step"}
                     for i, e in enumerate(train) for n in e.node_ids],
    )
