"""Experiment: can the built-in PRM rank the samples of one problem? (Not a speed benchmark.)

After `make demo`, on the demo's base policy and round-1 data: 8 samples per held-out
problem, then for each scorer the share of the training step pairs (one prefix, a right and
a wrong next step) it ranks right over wrong, and best-of-8 with the `min` of step scores.
Scorers: the oracle (the ceiling), a PRM trained on the prm dataset's labels (the demo's
PRM), the same trainer on the same paths relabeled by the oracle, and the policy's own
log-likelihood of a step (pairs only). Majority@8, pass@8 and a random sample's accuracy
are printed for scale; the last line is one JSON object.

    python bench/prm_ranking.py [--threads 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from bench_common import default_model  # bench/ is on sys.path when a benchmark runs as a script

from qstar_dagster.datasets.build import latest_dataset, read_rows
from qstar_dagster.evaluation.evaluate import (
    EvalSpec,
    policy_metrics,
    prm_metrics,
    sample,
    score_samples,
)
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.lineage import LineageStore
from qstar_dagster.resources import default_store_path
from qstar_dagster.tasks.arith import judge_steps
from qstar_dagster.training.prm import PRMScorer, PRMTrainSpec, train_prm


def prefix_correct(problem: str, steps: list[str]) -> list[bool]:
    ok, out = True, []
    for verdict in judge_steps(problem, steps).verdicts:
        ok = ok and verdict.correct
        out.append(ok)
    return out


def pair_items(pairs: list[dict]) -> list[tuple[str, list[str]]]:
    """Each pair as two (problem, steps) items: prefix + chosen, prefix + rejected."""
    items = []
    for r in pairs:
        problem, *prefix = r["prompt"].rstrip("\n").split("\n")
        items += [(problem, prefix + [r["chosen"].rstrip("\n")]), (problem, prefix + [r["rejected"].rstrip("\n")])]
    return items


def pair_accuracy(last_scores: list[float]) -> float:
    pairs = list(zip(last_scores[::2], last_scores[1::2]))
    return sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in pairs) / len(pairs)


@torch.no_grad()
def likelihood_pair_accuracy(model_dir: str, pairs: list[dict]) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir).eval()
    scores = []
    for r in pairs:
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        for side in ("chosen", "rejected"):
            c = tok(r[side], add_special_tokens=False)["input_ids"]
            logp = model(torch.tensor([p + c])).logits[0].log_softmax(-1)
            scores.append(sum(logp[len(p) + i - 1, t].item() for i, t in enumerate(c)))
    return pair_accuracy(scores)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--train-set", default="arith-train")
    ap.add_argument("--test-set", default="arith-test")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    store, policy = LineageStore(default_store_path()), default_model()
    prm_rows = read_rows(latest_dataset(store, args.train_set, "prm", "mc"))
    pairs = read_rows(latest_dataset(store, args.train_set, "step_pairs", "mc"))
    _, problems = store.prompt_set_problems(args.test_set)
    sampled = sample(TransformersGenerator(policy), problems, EvalSpec(ns=(8,)))
    alone = policy_metrics(sampled, [8])
    random_pick = sum(sum(s.correct[:8]) / 8 for s in sampled) / len(sampled)
    print(f"{args.test_set}: majority@8 {alone[('majority', 8)]:.1%}, pass@8 {alone[('pass', 8)]:.1%}, "
          f"a random sample {random_pick:.1%}; {len(prm_rows)} PRM paths, {len(pairs)} step pairs")

    results = {}
    oracle_scores = [[[float(v) for v in prefix_correct(s.problem.problem, st)] if st else [] for st in s.steps]
                     for s in sampled]
    results["oracle"] = {"pair_accuracy": 1.0,
                         "best_of_8": prm_metrics(sampled, oracle_scores, [8])[("prm_best_of:min", 8)]}
    relabeled = [{**r, "labels": prefix_correct(r["prompt"], r["completions"]), "soft_labels": None}
                 for r in prm_rows]
    with tempfile.TemporaryDirectory() as tmp:
        for name, rows in (("prm_mc_labels", prm_rows), ("prm_oracle_labels", relabeled)):
            out = Path(tmp) / name
            train_prm(policy, rows, out, PRMTrainSpec(epochs=args.epochs))
            scorer = PRMScorer(out)
            results[name] = {
                "pair_accuracy": pair_accuracy([s[-1] for s in scorer.score_batch(pair_items(pairs))]),
                "best_of_8": prm_metrics(sampled, score_samples(scorer, sampled), [8])[("prm_best_of:min", 8)]}
    results["policy_likelihood"] = {"pair_accuracy": likelihood_pair_accuracy(policy, pairs), "best_of_8": None}
    for name, r in results.items():
        bo8 = "–" if r["best_of_8"] is None else f"{r['best_of_8']:.1%}"
        print(f"{name:20s} right over wrong on step pairs {r['pair_accuracy']:.1%}, best-of-8 (min) {bo8}")
    print(json.dumps({"majority_at_8": alone[("majority", 8)], "pass_at_8": alone[("pass", 8)],
                      "random_sample": random_pick, **results}))


if __name__ == "__main__":
    main()
