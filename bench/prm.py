"""Every PRM design side by side on the same held-out samples, with the references.

After `make demo` (the data directory $QSTAR_HOME): the demo's base policy writes `--n`
samples (T=0.7) for each problem of the held-out set; every scorer rates the same samples.
PRMs learn from the round-1 rollout of the training slice (the demo's), labeled by each of
the factory's labelers (mc, binary_search, consensus = mc where binary search agrees) and by
the oracle, so the table also shows what the labels cost. The diagnosis variants of the
classifier (the earlier design) learn from the oracle's labels, so that label noise is not
what they measure.

Columns: best-of-N (min of step scores) for N = 4, 8, 16, best-of-8 by prod and last, PRM
vote@8; sibling accuracy (right next step over wrong one from one prefix, chance 50%) on the
held-out rollout's steps and on the training rollout's (does it fit what it learned from?);
the within-problem signal (mean score of a problem's right samples minus its wrong ones, and
how often positive); step accuracy against the oracle (with chance) and ProcessBench
first-error F1 on the held-out rollout; training seconds. Majority@N, pass@N and a random
sample's accuracy are printed for scale; the last line is one JSON object.

    python bench/prm.py [--threads 2] [--n 16] [--only NAME,...] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import torch
from bench_common import default_model  # bench/ is on sys.path when a benchmark runs as a script

from qstar_dagster.datasets.build import _labels, prm_rows
from qstar_dagster.evaluation.evaluate import (
    EvalSpec,
    policy_metrics,
    prm_metrics,
    sample,
    score_samples,
    within_problem_signal,
)
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.labeling.estimate import EstimatorSpec
from qstar_dagster.labeling.pipeline import label_consensus, label_monte_carlo, label_oracle
from qstar_dagster.lineage import LineageStore
from qstar_dagster.resources import default_store_path
from qstar_dagster.search.rollouts import held_out_rollout, load_trees
from qstar_dagster.tasks.arith import judge_steps
from qstar_dagster.training.prm import (
    LikelihoodScorer,
    PRMScorer,
    PRMTrainSpec,
    evaluate_prm,
    train_prm,
)

CLASSIFIER = PRMTrainSpec(head="classifier", lr=1e-3, stop_at_first_error=False)  # the earlier design, as it was
GENERATIVE = PRMTrainSpec()  # the default
# name -> (labels it learns from, spec)
VARIANTS = {
    "classifier": ("oracle", CLASSIFIER),
    "classifier, read at the step's last token": ("oracle", PRMTrainSpec(**{**CLASSIFIER.__dict__, "read_at": "step"})),
    "classifier, lr 1e-4": ("oracle", PRMTrainSpec(**{**CLASSIFIER.__dict__, "lr": 1e-4})),
    "classifier, frozen backbone (probe)": ("oracle", PRMTrainSpec(**{**CLASSIFIER.__dict__, "freeze_backbone": True})),
    "classifier, up to the first error": ("oracle", PRMTrainSpec(**{**CLASSIFIER.__dict__,
                                                                   "stop_at_first_error": True})),
    "classifier, 3x steps": ("oracle", PRMTrainSpec(**{**CLASSIFIER.__dict__, "epochs": 9.0})),
    "generative, untrained (calibrated likelihood)": ("oracle", PRMTrainSpec(steps=0)),
    "generative": ("oracle", GENERATIVE),
    "generative, 3x steps": ("oracle", PRMTrainSpec(epochs=9.0)),
    "generative, lr 1e-3": ("oracle", PRMTrainSpec(lr=1e-3)),
    **{f"classifier on {labeler}": (labeler, CLASSIFIER) for labeler in ("mc", "binary_search", "consensus")},
    **{f"generative on {labeler}": (labeler, GENERATIVE) for labeler in ("mc", "binary_search", "consensus")},
}
QUICK = ["classifier", "generative, untrained (calibrated likelihood)", "generative", "generative on mc"]


class OracleScorer:
    """Prefix-correct labels from the step oracle: the ceiling."""

    def score_batch(self, items):
        out = []
        for problem, steps in items:
            ok, scores = True, []
            for verdict in judge_steps(problem, list(steps)).verdicts:
                ok = ok and verdict.correct
                scores.append(float(ok))
            out.append(scores)
        return out


class TextNoiseScorer:
    """A score that carries no information but is the same for the same text: shows the
    selection effect of taking the maximum of uninformative scores (the same right solution
    sampled many times has one score; wrong ones are many distinct texts, many draws)."""

    def score_batch(self, items):
        return [[int.from_bytes(hashlib.sha256(f"{p}|{s}".encode()).digest()[:4], "little") / 2**32 for s in steps]
                for p, steps in items]


def training_rows(store: LineageStore, rollout_id: str, policy: str, labeler: str) -> list[dict]:
    """The PRM rows of one labeler on the rollout, labeling it first where needed (binary
    search and consensus are cheap; mc comes from the demo's round 1)."""
    have = {r["labeler"] for r in store.records(
        "SELECT DISTINCT labeler FROM step_labels JOIN nodes USING (node_id) JOIN trees USING (tree_id) "
        "WHERE rollout_id = ?", [rollout_id])}
    if labeler == "oracle" and "oracle" not in have:
        label_oracle(store, rollout_id)
    if labeler in ("binary_search", "consensus") and "binary_search" not in have:
        label_monte_carlo(store, rollout_id, lambda: TransformersGenerator(policy), EstimatorSpec(),
                          methods=["binary_search"])
    if labeler == "consensus":
        label_consensus(store, rollout_id, first="mc", second="binary_search")
    trees = load_trees(store, rollout_id)
    return prm_rows(trees, *_labels(store, rollout_id, labeler))


def measure(scorer, sampled, ns, held_out_trees, train_trees) -> dict:
    scores = score_samples(scorer, sampled)
    m = prm_metrics(sampled, scores, ns)
    held, fit = evaluate_prm(scorer, held_out_trees), evaluate_prm(scorer, train_trees)
    return {**{f"best_of_{n}": m[("prm_best_of:min", n)] for n in ns},
            "best_of_8_prod": m[("prm_best_of:prod", 8)], "best_of_8_last": m[("prm_best_of:last", 8)],
            **{f"vote_at_{n}": m[("prm_vote", n)] for n in ns},
            "sibling_accuracy": held["sibling_accuracy"], "train_sibling_accuracy": fit["sibling_accuracy"],
            **within_problem_signal(sampled, scores),
            "step_accuracy": held["step_accuracy"], "chance_accuracy": held["chance_accuracy"],
            "first_error_f1": held["first_error_f1"]}


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=16, help="samples per held-out problem (N = 4, 8 and this)")
    ap.add_argument("--train-set", default="arith-train")
    ap.add_argument("--test-set", default="arith-test")
    ap.add_argument("--only", default=None, help="comma-separated variant names (default: all)")
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = QUICK if args.quick else args.only.split(",") if args.only else list(VARIANTS)
    if unknown := [n for n in names if n not in VARIANTS]:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    store, policy = LineageStore(default_store_path()), default_model()
    [base] = store.records("SELECT checkpoint_id FROM checkpoints WHERE path = ?", [policy])
    train_rollout = held_out_rollout(store, args.train_set, base["checkpoint_id"])
    test_rollout = held_out_rollout(store, args.test_set, base["checkpoint_id"])
    if not train_rollout or not test_rollout:
        raise SystemExit(f"need rollouts of {args.train_set} and {args.test_set} by {base['checkpoint_id']}: "
                         "run `make demo` first")
    train_trees, test_trees = load_trees(store, train_rollout), load_trees(store, test_rollout)
    ns = sorted({4, 8, args.n})
    _, problems = store.prompt_set_problems(args.test_set)
    sampled = sample(TransformersGenerator(policy), problems, EvalSpec(ns=tuple(ns)))
    alone = policy_metrics(sampled, ns)
    random_pick = sum(sum(s.correct[:8]) / 8 for s in sampled) / len(sampled)
    print(f"{args.test_set}, {len(problems)} problems x {args.n} samples: "
          + ", ".join(f"majority@{n} {alone[('majority', n)]:.1%}" for n in ns)
          + f", pass@8 {alone[('pass', 8)]:.1%}, greedy {alone[('greedy', 1)]:.1%}, a random sample {random_pick:.1%}")

    results: dict[str, dict] = {}
    for name, scorer in (("oracle", OracleScorer()), ("text-hash noise", TextNoiseScorer()),
                         ("policy likelihood (mean), separator read as is", LikelihoodScorer(policy, "mean",
                                                                                          raw_separator=True)),
                         ("policy likelihood (mean)", LikelihoodScorer(policy, "mean")),
                         ("policy likelihood (min token)", LikelihoodScorer(policy, "min"))):
        results[name] = {"labels": "–", **measure(scorer, sampled, ns, test_trees, train_trees), "train_seconds": 0}
    rows_by_labeler: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names):
            labeler, spec = VARIANTS[name]
            if labeler not in rows_by_labeler:
                rows_by_labeler[labeler] = training_rows(store, train_rollout, policy, labeler)
            rows = rows_by_labeler[labeler]
            started = time.monotonic()
            out = Path(tmp) / f"prm{i}"
            summary = train_prm(policy, rows, out, spec)
            results[name] = {"labels": labeler, **measure(PRMScorer(out), sampled, ns, test_trees, train_trees),
                             "train_seconds": time.monotonic() - started, "n_labeled_steps": summary["n_labeled_steps"]}
            r = results[name]
            print(f"  {name}: best-of-8 {pct(r['best_of_8'])}%, sibling {pct(r['sibling_accuracy'])}% "
                  f"({r['train_seconds']:.0f}s, {len(rows)} paths)", flush=True)

    head = (f"| scorer | labels | {' | '.join(f'best-of-{n}' for n in ns)} | bo8 prod | bo8 last | vote@8 "
            "| sibling | sibling (train) | within gap | within >0 | step acc (chance) | F1 | train s |")
    print("\n" + head + "\n|" + "---|" * (head.count("|") - 1))
    print(f"| majority vote | – | {' | '.join(pct(alone[('majority', n)]) for n in ns)} |" + " |" * 11)
    for name, r in results.items():
        gap = "–" if r["within_gap"] is None else f"{r['within_gap']:+.3f}"
        f1 = "–" if r["first_error_f1"] is None else f"{r['first_error_f1']:.3f}"
        print(f"| {name} | {r['labels']} | {' | '.join(pct(r[f'best_of_{n}']) for n in ns)} | "
              f"{pct(r['best_of_8_prod'])} | {pct(r['best_of_8_last'])} | {pct(r['vote_at_8'])} | "
              f"{pct(r['sibling_accuracy'])} | {pct(r['train_sibling_accuracy'])} | {gap} | "
              f"{pct(r['within_positive'])} | {pct(r['step_accuracy'])} ({pct(r['chance_accuracy'])}) | {f1} | "
              f"{r['train_seconds']:.0f} |")
    print(json.dumps({"majority": {n: alone[("majority", n)] for n in ns}, "pass": {n: alone[("pass", n)] for n in ns},
                      "greedy": alone[("greedy", 1)], "random_sample": random_pick, "scorers": results}))


if __name__ == "__main__":
    main()
