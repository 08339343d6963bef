"""Benchmark: does Countdown give search something to choose?

Trains the built-in policy on `countdown-train`'s reference solutions (or loads --model),
then on `countdown-test` and a slice of `game24` prints side by side:

- greedy, pass@8 and a random sample (the mean over the 8 samples);
- the sampled steps: how many are *valid* (the numbers are there, the arithmetic is exact,
  the list of what is left is right), and of the valid ones how many keep the target in
  reach. Search can fix bad choices, not slips: issue 16 asks for >= 80% valid steps;
- beam search at one node budget, valued by the policy's likelihood and by the oracle's
  "still solvable" (a ceiling: what a perfect verifier would let the same search reach).

    python bench/countdown.py [--model DIR] [--steps 900] [--problems 200] [--save DIR]

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from qstar_dagster.evaluation.evaluate import EvalSpec, sample
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.search.algorithms import SearchSpec, search
from qstar_dagster.search.tree import Tree
from qstar_dagster.search.value import LikelihoodValue
from qstar_dagster.tasks import countdown
from qstar_dagster.tasks.problem import policy_prompt
from qstar_dagster.tasks.prompt_sets import builtin_problems
from qstar_dagster.tasks.steps import LINE
from qstar_dagster.training.base_policy import BasePolicyConfig, train_base_policy

BEAM = SearchSpec(algorithm="beam", k=4, beam_width=4, max_nodes=64, value="likelihood")


class OracleValue:
    """1 when every step of the path is valid and the target is still in reach, else 0."""

    name = "oracle"
    uses_reference = False  # the rules, not the reference answer; a ceiling all the same

    def __call__(self, items, seed):
        out = []
        for tree, node in items:
            steps = [n.text for n in tree.path(node)[1:]]
            out.append(float(countdown.oracle_steps(tree.problem.problem, steps).first_error is None))
        return out


def step_rates(sampled) -> dict:
    valid = solvable = total = 0
    for s in sampled:
        for steps in s.steps:
            for v in countdown.oracle_steps(s.problem.problem, steps).verdicts:
                total += 1
                ok = v.correct or v.reason.startswith("valid, but")
                valid += ok
                solvable += v.correct
    return {"steps": total, "valid_steps": valid / total if total else None,
            "solvable_of_valid": solvable / valid if valid else None}


def beam(gen, problems, value) -> dict:
    trees = [Tree(f"t{i}", p, policy_prompt(p.problem), LINE, BEAM.max_depth) for i, p in enumerate(problems)]
    started = time.perf_counter()
    search(trees, BEAM, gen, value, seed=0)
    return {"selected": sum(bool(t.selected_leaf() and t.selected_leaf().is_correct) for t in trees) / len(trees),
            "any_path": sum(any(n.is_correct for n in t.terminals()) for t in trees) / len(trees),
            "nodes_per_tree": round(sum(len(t.nodes) for t in trees) / len(trees), 1),
            "seconds": round(time.perf_counter() - started, 1)}


def measure(gen, problems) -> dict:
    sampled = sample(gen, problems, EvalSpec(ns=(8,), max_new_tokens=96))
    n = len(sampled)
    return {
        "problems": n,
        "greedy": sum(s.greedy_correct for s in sampled) / n,
        "pass_at_8": sum(any(s.correct) for s in sampled) / n,
        "random_sample": sum(sum(s.correct) / len(s.correct) for s in sampled) / n,
        **step_rates(sampled),
        "beam_likelihood": beam(gen, problems, LikelihoodValue()),
        "beam_oracle": beam(gen, problems, OracleValue()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="a trained policy directory (skips training)")
    ap.add_argument("--steps", type=int, default=BasePolicyConfig().steps, help="training steps")
    ap.add_argument("--problems", type=int, default=200, help="countdown-test problems and game24 hands")
    ap.add_argument("--save", default="/tmp/countdown-policy", help="where the trained policy goes")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    training = None
    if args.model:
        path = Path(args.model)
    else:
        path = Path(args.save)
        summary = train_base_policy(builtin_problems("countdown-train"), path, BasePolicyConfig(steps=args.steps,
                                                                                               eval_every=0))
        training = {"steps": args.steps, "final_loss": round(summary["final_loss"], 4),
                    "seconds": round(summary["train_seconds"], 1)}
    gen = TransformersGenerator(str(path))
    hands = builtin_problems("game24")
    step = max(1, len(hands) // args.problems)
    sets = {"countdown-test": builtin_problems("countdown-test", n=args.problems), "game24": hands[::step][: args.problems]}
    figures = {name: measure(gen, problems) for name, problems in sets.items()}

    print(f"policy {path}" + (f" (trained {training['steps']} steps in {training['seconds']}s, loss "
                              f"{training['final_loss']})" if training else ""))
    print(f"{'':28}" + "".join(f"{name:>18}" for name in figures))
    rows = [("greedy", "greedy"), ("pass@8", "pass_at_8"), ("random sample", "random_sample"),
            ("valid steps", "valid_steps"), ("solvable, of valid", "solvable_of_valid")]
    def pct(v):
        return f"{'–':>17} " if v is None else f"{v:>17.1%} "

    for label, key in rows:
        print(f"{label:28}" + "".join(pct(f[key]) for f in figures.values()))
    for label, key in [("beam, likelihood value", "beam_likelihood"), ("beam, oracle value (ceiling)", "beam_oracle")]:
        print(f"{label:28}" + "".join(pct(f[key]["selected"]) for f in figures.values()))
    print(json.dumps({"bench": "countdown", "machine": platform.machine(), "threads": args.threads,
                      "training": training, "beam": BEAM.__dict__, **figures}))


if __name__ == "__main__":
    main()
