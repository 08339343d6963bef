"""Benchmark: what a Monte Carlo step label costs, and how good it is, three ways.

On the same rollouts (the demo's default beam search on the first --problems arith-test
problems, with the same policy):

  (a) naive: N fresh completions from every step's prefix (Math-Shepherd as written);
  (b) ours: every step, counting the tree's finished paths through the step and the
      samples drawn for its ancestors that pass through it, estimating a step the search
      sampled twice once, and sampling only what is missing to reach N (also shown: tree
      paths alone, and the samples alone);
  (c) binary search (OmegaPRM-style, with (b)'s reuse): per finished solution, the first
      step whose prefix cannot reach the answer, O(log steps) prefix estimates.

For each: generated tokens per labeled step, and agreement with the built-in oracle on the
steps up to each solution's first error (accuracy, recall of wrong steps, first-error F1).
Binary search labels fewer steps, so its accuracy is also compared with naive's on the
same steps. The ratios against (a) are measured in this run; the last line is one JSON object.

    python bench/labeling.py [--model PATH] [--problems 64] [--n 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from bench_common import default_model  # bench/ is on sys.path when a benchmark runs as a script

from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.labeling import binary_search, montecarlo
from qstar_dagster.labeling.agreement import agreement
from qstar_dagster.labeling.oracle import oracle_labels
from qstar_dagster.labeling.pipeline import oracle_region, solutions_of
from qstar_dagster.search.algorithms import SearchSpec, search
from qstar_dagster.search.estimate import EstimatorSpec, PrefixEstimator
from qstar_dagster.search.tree import Tree
from qstar_dagster.search.value import make_value_function
from qstar_dagster.tasks.problem import policy_prompt
from qstar_dagster.tasks.prompt_sets import builtin_problems
from qstar_dagster.tasks.steps import LINE


def measure(name: str, trees, labels: dict[str, bool], tokens: int, seconds: float, truth, region,
            naive: dict[str, bool] | None = None) -> dict:
    step_ok, _ = truth
    reference = {n: v for n, v in step_ok.items() if n in region}
    a = agreement({n: v for n, v in labels.items() if n in region}, reference, solutions_of(trees))
    out = {"labeled_steps": len(labels), "tokens": tokens, "tokens_per_labeled_step": round(tokens / len(labels), 2),
           "seconds": round(seconds, 1), "accuracy": a.accuracy, "negative_recall": a.negative_recall,
           "negative_precision": a.negative_precision, "first_error_f1": a.first_error_f1, "kappa": a.kappa}
    if naive is not None:  # naive's labels on exactly the steps this labeler labels
        same = agreement({n: v for n, v in naive.items() if n in labels and n in region}, reference, [])
        out["naive_accuracy_same_steps"] = same.accuracy
    print(f"{name:18s} {out['labeled_steps']:6d} steps  {out['tokens_per_labeled_step']:8.1f} tokens/step  "
          f"accuracy {a.accuracy:.1%}  neg. recall {a.negative_recall or 0:.1%}  first-error F1 "
          f"{a.first_error_f1 or 0:.3f}  ({seconds:.0f}s)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="policy directory (default: the latest base policy in the store)")
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--n", type=int, default=EstimatorSpec().n, help="completions per step (Math-Shepherd's N)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model_path = args.model or default_model()
    gen = TransformersGenerator(model_path)
    problems = builtin_problems("arith-test")[: args.problems]
    spec = SearchSpec().for_domain("arith")  # the demo's rollouts: beam, k=4, width 4, likelihood value
    trees = [Tree(f"t{i}", p, policy_prompt(p.problem), LINE, spec.max_depth) for i, p in enumerate(problems)]
    search(trees, spec, gen, make_value_function(spec.value, gen), seed=0)
    truth_map = oracle_labels(trees)
    truth = ({n: s for n, (s, _) in truth_map.items()}, {n: p for n, (_, p) in truth_map.items()})
    region = oracle_region(trees, truth[1])
    n_steps = sum(len(t.nodes) - 1 for t in trees)
    print(f"model {model_path}: {len(trees)} arith-test trees ({spec.algorithm}, k={spec.k}, width {spec.beam_width}), "
          f"{n_steps} steps, N={args.n}, {args.threads} threads; agreement with the oracle on the {len(region)} "
          "steps up to each solution's first error")

    figures, naive_labels = {}, None
    variants = (("naive", False, False), ("reuse_tree_only", True, False), ("reuse_samples_only", False, True),
                ("reuse", True, True))
    for name, tree_paths, shared in variants:
        est = PrefixEstimator(gen, EstimatorSpec(n=args.n, reuse_tree=tree_paths, share_completions=shared,
                                                 same_prefix_once=shared), seed=1)
        started = time.perf_counter()
        estimates = montecarlo.label_trees(trees, est)
        seconds = time.perf_counter() - started
        labels = {n: e.hard > 0 for n, e in estimates.items()}
        figures[name] = measure(name, trees, labels, sum(e.cost_tokens for e in estimates.values()), seconds, truth,
                                region, naive_labels)
        naive_labels = naive_labels or labels
    est = PrefixEstimator(gen, EstimatorSpec(n=args.n), seed=1)
    started = time.perf_counter()
    found = binary_search.first_errors([(t, leaf) for t in trees for leaf in t.terminals()], est)
    seconds = time.perf_counter() - started
    rows = binary_search.label_rows(found)
    figures["binary_search"] = measure("binary_search", trees, {r["node_id"]: r["value"] > 0 for r in rows},
                                       sum(f.cost_tokens for f in found), seconds, truth, region, naive_labels)

    naive = figures["naive"]
    for name in ("reuse_tree_only", "reuse_samples_only", "reuse", "binary_search"):
        f = figures[name]
        f["token_ratio_vs_naive"] = round(naive["tokens_per_labeled_step"] / max(f["tokens_per_labeled_step"], 1e-9), 2)
        f["accuracy_points_vs_naive"] = round(100 * (f["accuracy"] - f["naive_accuracy_same_steps"]), 2)
        f["first_error_f1_points_vs_naive"] = round(100 * ((f["first_error_f1"] or 0) - (naive["first_error_f1"] or 0)), 2)
        print(f"{name}: {f['token_ratio_vs_naive']}x fewer tokens per labeled step than naive; accuracy "
              f"{f['accuracy_points_vs_naive']:+.1f} points against naive on the same steps, first-error F1 "
              f"{f['first_error_f1_points_vs_naive']:+.1f} points")
    print(json.dumps({"bench": "labeling", "model": model_path, "problems": len(trees), "n": args.n,
                      "steps": n_steps, "oracle_region_steps": len(region), "threads": args.threads,
                      "machine": platform.machine(), **figures}))


if __name__ == "__main__":
    main()
