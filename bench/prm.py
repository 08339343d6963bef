"""Every PRM design side by side on the same held-out samples, with the references.

After `make demo` (the data directory $QSTAR_HOME): the demo's base policy writes `--n`
samples (T=0.7) for each problem of the held-out set; every scorer rates the same samples.
PRMs learn from the round-1 rollout of the training slice (the demo's), labeled by each of
the factory's labelers (mc, binary_search, consensus = mc where binary search agrees) and by
the oracle, so the table also shows what the labels cost. The diagnosis variants of the
classifier (the earlier design) learn from the oracle's labels, so that label noise is not
what they measure.

Columns: best-of-N (min of step scores) for N = 4, 8, 16, best-of-8 by prod and last, PRM
vote@8 (answers weighted by their solutions' summed scores, and by their summed log-odds);
sibling accuracy (right next step over wrong one from one prefix, chance 50%) on the
held-out rollout's steps and on the training rollout's (does it fit what it learned from?);
the within-problem signal (mean score of a problem's right samples minus its wrong ones, and
how often positive); step accuracy against the oracle (with chance) and ProcessBench
first-error F1 on the held-out rollout; training seconds. Majority@N, pass@N and a random
sample's accuracy are printed for scale; the last line is one JSON object.

    python bench/prm.py [--threads 2] [--n 16] [--only "NAME|NAME"] [--quick] [--backbones]
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

from qstar_dagster.datasets.build import dataset_labels, prm_rows
from qstar_dagster.evaluation.evaluate import (
    VOTE_WEIGHTS,
    EvalSpec,
    policy_metrics,
    prm_metrics,
    sample,
    score_samples,
    vote_accuracy,
    within_problem_signal,
)
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.labeling import binary_search
from qstar_dagster.labeling.oracle import oracle_labels
from qstar_dagster.labeling.pipeline import label_consensus, label_monte_carlo, label_oracle
from qstar_dagster.lineage import LineageStore
from qstar_dagster.lineage.labels import label_costs
from qstar_dagster.lineage.rollouts import held_out_rollout
from qstar_dagster.resources import default_store_path
from qstar_dagster.search.algorithms import SearchSpec, search
from qstar_dagster.search.estimate import EstimatorSpec, PrefixEstimator
from qstar_dagster.search.rollouts import load_trees
from qstar_dagster.search.tree import Tree
from qstar_dagster.search.value import NoValue
from qstar_dagster.tasks.arith import oracle_steps
from qstar_dagster.tasks.problem import policy_prompt
from qstar_dagster.tasks.steps import LINE
from qstar_dagster.training.prm import (
    LikelihoodScorer,
    PRMScorer,
    PRMTrainSpec,
    evaluate_prm,
    train_prm,
)
from qstar_dagster.training.shipped import shipped_verifier

CLASSIFIER = PRMTrainSpec(head="classifier", epochs=3.0, lr=1e-3,  # the earlier design, as it was
                          stop_at_first_error=False, once_per_step=False)
TUNED = PRMTrainSpec(epochs=3.0)  # the generative head fine-tuned on the labels (the default trains 0 steps)
JOINT = {"lm_weight": 1.0, "lr": 1e-3}  # Cobbe et al.'s joint objective: an LM loss on reference solutions


def _with(spec: PRMTrainSpec, **changes) -> PRMTrainSpec:
    return PRMTrainSpec(**{**spec.__dict__, **changes})


# name -> (labels it learns from, spec); the diagnosis variants learn from the oracle's labels
VARIANTS = {
    "classifier (the earlier design)": ("oracle", CLASSIFIER),
    "classifier on mc (the earlier demo PRM)": ("mc", CLASSIFIER),
    "classifier, read at the step's last token": ("oracle", _with(CLASSIFIER, read_at="step")),
    "classifier, frozen backbone (probe)": ("oracle", _with(CLASSIFIER, freeze_backbone=True)),
    "classifier, lr 1e-4": ("oracle", _with(CLASSIFIER, lr=1e-4)),
    "classifier, up to the first error": ("oracle", _with(CLASSIFIER, stop_at_first_error=True)),
    **{f"policy backbone, untrained, on {labeler}" + (" (the earlier default)" if labeler == "mc" else ""):
       (labeler, PRMTrainSpec()) for labeler in ("mc", "binary_search", "consensus", "oracle")},
    "generative, fine-tuned (BCE)": ("oracle", TUNED),
    "generative, fine-tuned, lr 1e-4": ("oracle", _with(TUNED, lr=1e-4)),
    "generative, fine-tuned, lr 3e-5": ("oracle", _with(TUNED, lr=3e-5)),
    "generative, fine-tuned, on mc": ("mc", TUNED),
    "generative, fine-tuned, BCE + pairwise": ("oracle", _with(TUNED, pair_weight=1.0)),
    "generative, fine-tuned, pairwise only": ("oracle", _with(TUNED, pair_weight=1.0, point_weight=0.0)),
    # more, cheaper data: best-of-4 samples on EXTRA other training problems (~8 min of sampling and labels)
    "generative, fine-tuned on more problems (binary search)": ("binary_search+", _with(TUNED, epochs=1.0)),
    "generative, fine-tuned on more problems (oracle)": ("oracle+", _with(TUNED, epochs=1.0)),
    "LM on references alone (no label loss, bias refit)": ("oracle", _with(TUNED, **JOINT, point_weight=0.0)),
    "generative, fine-tuned, BCE + LM on references": ("oracle", _with(TUNED, **JOINT)),
    "generative, fine-tuned, BCE x0.1 + LM on references": ("oracle", _with(TUNED, **JOINT, point_weight=0.1)),
    "generative, fine-tuned, pairwise x0.1 + LM on references": ("oracle", _with(TUNED, **JOINT, point_weight=0.0,
                                                                                   pair_weight=0.1)),
    # the verifier out-computes the policy: the policy trained longer on reference solutions
    # (--verifier; default: the one shipped with the package), read the generative way
    **{f"verifier backbone, untrained, on {labeler}" + (" (the default)" if labeler == "mc" else ""):
       (labeler, PRMTrainSpec(), "verifier") for labeler in ("mc", "binary_search", "oracle")},
    **{f"verifier backbone, Platt-calibrated, on {labeler}": (labeler, PRMTrainSpec(calibrate="platt"), "verifier")
       for labeler in ("mc", "binary_search", "oracle")},
    **{f"verifier backbone, Platt-calibrated, solved problems only, on {labeler}": (
        labeler, PRMTrainSpec(calibrate="platt", solved_only=True), "verifier") for labeler in ("mc", "binary_search")},
    "verifier backbone, untrained, solved problems only, on mc": ("mc", PRMTrainSpec(solved_only=True), "verifier"),
    "policy backbone, Platt-calibrated, on mc": ("mc", PRMTrainSpec(calibrate="platt")),
    "verifier backbone, fine-tuned (BCE), on mc": ("mc", TUNED, "verifier"),
    "verifier backbone, fine-tuned (BCE), lr 3e-5, on mc": ("mc", _with(TUNED, lr=3e-5), "verifier"),
}
DEFAULT = ["classifier (the earlier design)", "classifier on mc (the earlier demo PRM)",
           "classifier, read at the step's last token", "classifier, frozen backbone (probe)",
           "policy backbone, untrained, on mc (the earlier default)", "policy backbone, untrained, on oracle",
           "verifier backbone, untrained, on mc (the default)", "verifier backbone, untrained, on binary_search",
           "verifier backbone, untrained, on oracle", "verifier backbone, fine-tuned (BCE), on mc",
           "generative, fine-tuned (BCE)", "generative, fine-tuned, pairwise only",
           "LM on references alone (no label loss, bias refit)", "generative, fine-tuned, BCE + LM on references"]
QUICK = ["classifier (the earlier design)", "policy backbone, untrained, on mc (the earlier default)",
         "generative, fine-tuned (BCE)", "verifier backbone, untrained, on mc (the default)"]
# the backbone and calibration comparison (README, "A PRM that verifies": the design now)
BACKBONES = ["policy backbone, untrained, on mc (the earlier default)", "policy backbone, Platt-calibrated, on mc",
             "verifier backbone, untrained, on mc (the default)", "verifier backbone, Platt-calibrated, on mc",
             "verifier backbone, Platt-calibrated, solved problems only, on mc",
             "verifier backbone, untrained, on binary_search", "verifier backbone, untrained, on oracle",
             "verifier backbone, Platt-calibrated, on oracle", "verifier backbone, fine-tuned (BCE), on mc"]
REFERENCES = 20000  # reference solutions the joint objective reads (training problems 10,000 on)
EXTRA = 4000  # the "+" labelers' problems (the training set's 1,000th on, clear of the round's rollout)


class OracleScorer:
    """Prefix-correct labels from the step oracle: the ceiling."""

    def score_batch(self, items):
        out = []
        for problem, steps in items:
            ok, scores = True, []
            for verdict in oracle_steps(problem, list(steps)).verdicts:
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
    search and consensus are cheap; mc comes from the demo's round 1). The oracle's are its
    step-correct labels: the same as prefix-correct up to each path's first error, where the
    default cuts the rows; past it (the classifier rows learn every step) they rate the step."""
    have = set(label_costs(store, rollout_id))
    if labeler == "oracle" and "oracle" not in have:
        label_oracle(store, rollout_id)
    if labeler in ("binary_search", "consensus") and "binary_search" not in have:
        label_monte_carlo(store, rollout_id, lambda: TransformersGenerator(policy), EstimatorSpec(),
                          methods=["binary_search"])
    if labeler == "consensus":
        label_consensus(store, rollout_id, first="mc", second="binary_search")
    trees = load_trees(store, rollout_id)
    return prm_rows(trees, *dataset_labels(store, rollout_id, labeler))


def label_tokens(store: LineageStore, rollout_id: str) -> dict[str, int]:
    """What each labeler's labels on the rollout cost, in generated tokens."""
    return {name: int(c["tokens"] or 0) for name, c in label_costs(store, rollout_id).items()}


def more_rows(policy: str, problems: list, labeler: str) -> tuple[list[dict], float]:
    """PRM rows from 4 samples on each of `problems` (best-of-N trees, not stored), labeled by
    binary search or the oracle; and the seconds that took."""
    started = time.monotonic()
    gen = TransformersGenerator(policy)
    spec = SearchSpec(algorithm="best_of_n", n=4, value="none")
    trees = [Tree(f"extra{i}", p, policy_prompt(p.problem), LINE, spec.max_depth) for i, p in enumerate(problems)]
    search(trees, spec, gen, NoValue(), seed=1)
    if labeler == "oracle":
        hard = {n: prefix_ok for n, (_, prefix_ok) in oracle_labels(trees).items()}
    else:
        solutions = [(t, leaf) for t in trees for leaf in t.terminals()]
        found = binary_search.first_errors(solutions, PrefixEstimator(gen, EstimatorSpec(), seed=0))
        hard = {r["node_id"]: r["value"] > 0.5 for r in binary_search.label_rows(found)}
    return prm_rows(trees, hard, {}), time.monotonic() - started


def measure(scorer, sampled, ns, held_out_trees, train_trees) -> dict:
    scores = score_samples(scorer, sampled)
    m = prm_metrics(sampled, scores, ns)
    held, fit = evaluate_prm(scorer, held_out_trees), evaluate_prm(scorer, train_trees)
    return {**{f"best_of_{n}": m[("prm_best_of:min", n)] for n in ns},
            "best_of_8_prod": m[("prm_best_of:prod", 8)], "best_of_8_last": m[("prm_best_of:last", 8)],
            **{f"vote_at_{n}": m[("prm_vote", n)] for n in ns},
            # the vote's weighting, side by side on the same scores
            **{f"vote_at_8_{w}": vote_accuracy(sampled, scores, 8, w) for w in VOTE_WEIGHTS},
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
    ap.add_argument("--only", default=None, help="variant names separated by | (default: DEFAULT)")
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--backbones", action="store_true", help="the backbone and calibration comparison (BACKBONES)")
    ap.add_argument("--no-references", action="store_true", help="skip the untrained reference scorers")
    ap.add_argument("--verifier", default=None, help="the verifier backbone's model directory (default: the one "
                    "shipped with the package for --train-set)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = QUICK if args.quick else BACKBONES if args.backbones else args.only.split("|") if args.only else DEFAULT
    if unknown := [n for n in names if n not in VARIANTS]:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    store, policy = LineageStore(default_store_path()), default_model()
    shipped = shipped_verifier(args.train_set)
    verifier = args.verifier or (str(shipped.path) if shipped else None)
    if verifier is None and any(len(VARIANTS[n]) > 2 for n in names):
        raise SystemExit(f"no verifier is shipped for {args.train_set}: pass --verifier DIR "
                         "(bench/verifier_backbone.py makes one), or leave out the verifier variants")
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
    for name, scorer in () if args.no_references else (("oracle", OracleScorer()), ("text-hash noise", TextNoiseScorer()),
                         ("policy likelihood (mean), separator read as is", LikelihoodScorer(policy, "mean",
                                                                                          raw_separator=True)),
                         ("policy likelihood (mean)", LikelihoodScorer(policy, "mean")),
                         ("policy likelihood (min token)", LikelihoodScorer(policy, "min")),
                         *((("verifier likelihood (mean)", LikelihoodScorer(verifier, "mean")),) if verifier else ())):
        results[name] = {"labels": "–", **measure(scorer, sampled, ns, test_trees, train_trees), "train_seconds": 0}
    rows_by_labeler: dict[str, list[dict]] = {}
    _, train_problems = store.prompt_set_problems(args.train_set)
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names):
            labeler, spec, *backbone = VARIANTS[name]
            data_seconds = 0.0
            if labeler.endswith("+") and labeler not in rows_by_labeler:
                rows_by_labeler[labeler], data_seconds = more_rows(policy, train_problems[1000:1000 + EXTRA],
                                                                   labeler[:-1])
                print(f"  {EXTRA} more problems labeled by {labeler[:-1]}: {len(rows_by_labeler[labeler])} paths "
                      f"in {data_seconds:.0f}s", flush=True)
            if labeler not in rows_by_labeler:
                rows_by_labeler[labeler] = training_rows(store, train_rollout, policy, labeler)
            rows = rows_by_labeler[labeler]
            started = time.monotonic()
            out = Path(tmp) / f"prm{i}"
            refs = [(policy_prompt(p.problem), p.reference_solution) for p in train_problems[10000:10000 + REFERENCES]]
            summary = train_prm(verifier if backbone else policy, rows, out, spec,
                                lm_pairs=refs if spec.lm_weight else ())
            results[name] = {"labels": labeler, **measure(PRMScorer(out), sampled, ns, test_trees, train_trees),
                             "train_seconds": time.monotonic() - started, "data_seconds": data_seconds,
                             "n_labeled_steps": summary["n_labeled_steps"],
                             **{k: summary["head"].get(k) for k in ("scale", "bias")}}
            r = results[name]
            print(f"  {name}: best-of-8 {pct(r['best_of_8'])}%, vote@8 {pct(r['vote_at_8'])}% (log-odds "
                  f"{pct(r['vote_at_8_logodds'])}%), "
                  f"sibling {pct(r['sibling_accuracy'])}%, scale {r['scale']}, bias {r['bias']} "
                  f"({r['train_seconds']:.0f}s, {len(rows)} paths)", flush=True)

    head = (f"| scorer | labels | {' | '.join(f'best-of-{n}' for n in ns)} | bo8 prod | bo8 last | vote@8 | vote@8 log-odds "
            "| sibling | sibling (train) | within gap | within >0 | step acc (chance) | F1 | train s |")
    print("\n" + head + "\n|" + "---|" * (head.count("|") - 1))
    print(f"| majority vote | – | {' | '.join(pct(alone[('majority', n)]) for n in ns)} |" + " |" * 12)
    for name, r in results.items():
        gap = "–" if r["within_gap"] is None else f"{r['within_gap']:+.3f}"
        f1 = "–" if r["first_error_f1"] is None else f"{r['first_error_f1']:.3f}"
        print(f"| {name} | {r['labels']} | {' | '.join(pct(r[f'best_of_{n}']) for n in ns)} | "
              f"{pct(r['best_of_8_prod'])} | {pct(r['best_of_8_last'])} | {pct(r['vote_at_8'])} | "
              f"{pct(r['vote_at_8_logodds'])} | "
              f"{pct(r['sibling_accuracy'])} | {pct(r['train_sibling_accuracy'])} | {gap} | "
              f"{pct(r['within_positive'])} | {pct(r['step_accuracy'])} ({pct(r['chance_accuracy'])}) | {f1} | "
              f"{r['train_seconds']:.0f} |")
    costs = label_tokens(store, train_rollout)
    costs["consensus"] = costs.get("mc", 0) + costs.get("binary_search", 0)  # needs both labelers' labels
    print("what the labels on the training rollout cost (generated tokens): "
          + ", ".join(f"{k} {v:,}" for k, v in sorted(costs.items())))
    print(json.dumps({"label_tokens": costs, "majority": {n: alone[("majority", n)] for n in ns}, "pass": {n: alone[("pass", n)] for n in ns},
                      "greedy": alone[("greedy", 1)], "random_sample": random_pick, "scorers": results}))


if __name__ == "__main__":
    main()
