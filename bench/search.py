"""Benchmark: tree search batched across problems against one problem at a time.

For each algorithm (best-of-N, beam, MCTS) at one budget, the same problems, policy, config
and seeds run twice: all problems in one search (every search step sends the whole frontier
of all problems to the generator in one call) and one search per problem (what tools that
search problem by problem do). Prints pass@k (any path correct), selected-path accuracy and
tokens/s of each side and the ratio; the last line is one JSON object with the figures.

    python bench/search.py [--model PATH] [--problems 64] [--threads 2]

Without --model it uses the latest base policy recorded in the store ($QSTAR_HOME, as left
by `make demo`); problems are the first --problems of the built-in arith-test set.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from bench_common import default_model  # bench/ is on sys.path when a benchmark runs as a script

from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.search.algorithms import SearchSpec, search
from qstar_dagster.search.tree import Tree
from qstar_dagster.search.value import make_value_function
from qstar_dagster.tasks.problem import policy_prompt
from qstar_dagster.tasks.prompt_sets import builtin_problems
from qstar_dagster.tasks.steps import LINE

# One budget for all three: at most 33 nodes per tree.
SPECS = [
    SearchSpec(algorithm="best_of_n", n=8, value="none", max_nodes=33),
    SearchSpec(algorithm="beam", k=4, beam_width=2, value="likelihood", max_nodes=33),
    SearchSpec(algorithm="mcts", k=2, simulations=16, value="likelihood", max_nodes=33),
]


def trees_for(problems, spec):
    return [Tree(f"t{i}", p, policy_prompt(p.problem), LINE, spec.max_depth) for i, p in enumerate(problems)]


def run(gen, problems, spec, batched: bool) -> dict:
    started = time.perf_counter()
    groups = [problems] if batched else [[p] for p in problems]
    trees, tokens = [], 0
    for i, group in enumerate(groups):
        # Per-problem seeds on the unbatched side, so neither side repeats the other's samples.
        done, stats = search(trees_for(group, spec), spec, gen, make_value_function(spec.value, gen), seed=i)
        trees += done
        tokens += stats.generated_tokens + stats.value_tokens
    seconds = time.perf_counter() - started
    return {
        "tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
        "nodes_per_tree": round(sum(len(t.nodes) for t in trees) / len(trees), 1),
        "pass_at_k": sum(any(n.is_correct for n in t.terminals()) for t in trees) / len(trees),
        "selected_accuracy": sum(bool(t.selected_leaf() and t.selected_leaf().is_correct) for t in trees) / len(trees),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: the latest base policy in the store)")
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model_path = args.model or default_model()
    gen = TransformersGenerator(model_path)
    problems = builtin_problems("arith-test")[: args.problems]
    search(trees_for(problems[:2], SPECS[0]), SPECS[0], gen, make_value_function("none", gen))  # warm-up

    print(f"model {model_path}, {len(problems)} arith-test problems, <= 33 nodes per tree, {args.threads} threads")
    figures = {}
    for spec in SPECS:
        batched = run(gen, problems, spec, batched=True)
        single = run(gen, problems, spec, batched=False)
        ratio = batched["tokens_per_s"] / single["tokens_per_s"]
        figures[spec.algorithm] = {"batched": batched, "one_at_a_time": single, "speedup": round(ratio, 2)}
        print(f"{spec.algorithm:10s} batched: pass@k {batched['pass_at_k']:.1%}, selected {batched['selected_accuracy']:.1%}, "
              f"{batched['nodes_per_tree']} nodes/tree, {batched['tokens_per_s']:,.0f} tokens/s | one at a time: "
              f"pass@k {single['pass_at_k']:.1%}, {single['tokens_per_s']:,.0f} tokens/s | speed-up {ratio:.1f}x")
    print(json.dumps({"bench": "search", "model": model_path, "problems": len(problems), "threads": args.threads,
                      "machine": platform.machine(), "specs": {s.algorithm: s.__dict__ for s in SPECS}, **figures}))


if __name__ == "__main__":
    main()
