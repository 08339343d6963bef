"""Benchmark: does Countdown give search something to choose?

Trains the built-in policy on Countdown reference solutions (or loads --model), then on
held-out problems and a slice of `game24` prints side by side:

- greedy, pass@8 and a random sample (the mean over the 8 samples);
- the sampled steps: how many are *valid* (the numbers are there, the arithmetic is exact,
  the list of what is left is right), and of the valid ones how many keep the target in
  reach. Search can fix bad choices, not slips: issue 16 asks for >= 80% valid steps;
- beam search at one node budget, valued by the policy's likelihood, by a PRM (--prm, or
  --verifier: a language model read as the generative PRM's backbone) and by the oracle's
  "still solvable" (a ceiling: what a perfect verifier would let the same search reach);
  and each PRM's best-of-8 of the same samples. --aggregations reads a PRM's step scores
  into a path's value more than one way (min, last, prod; one beam each), --beam searches
  more than one beam shape (KxW: K steps per expanded node, W open nodes) at the same budget.

With --specs, one policy per domain setting (how many numbers, their range, the targets'),
each trained on 60,000 problems of its setting (all of them, when it has fewer) and
measured on 200 held-out ones, in one run:

    python bench/countdown.py [--model DIR] [--prm DIR] [--verifier DIR,DIR] [--steps 900] [--problems 200]
                              [--aggregations min,last,prod] [--beam 4x4,4x8]
    python bench/countdown.py --specs "4:1-20:10-99,4:1-10:10-50,3:1-20:10-99"

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import random
import time
from dataclasses import replace
from pathlib import Path

import torch

from qstar_dagster.evaluation.evaluate import EvalSpec, prm_metrics, sample, score_samples
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.search.algorithms import SearchSpec, search
from qstar_dagster.search.tree import Tree
from qstar_dagster.search.value import PRM_AGGREGATIONS, LikelihoodValue, PRMValue
from qstar_dagster.tasks import countdown
from qstar_dagster.tasks.problem import policy_prompt
from qstar_dagster.tasks.prompt_sets import builtin_problems
from qstar_dagster.tasks.steps import LINE
from qstar_dagster.training.base_policy import BasePolicyConfig, train_base_policy
from qstar_dagster.training.prm import PRMScorer

# the rollouts' default: 4 steps per expanded node, the domain's 8 open nodes per depth, 64 nodes
BEAM = SearchSpec(algorithm="beam", k=4, max_nodes=64, value="likelihood").for_domain("countdown")


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


# What makes a step invalid, by the start of the oracle's reason
WHY = {"uses": "numbers not left", "states": "wrong 'left' list", "not of the form": "unreadable",
       "step after": "after the last one"}


def _why(reason: str) -> str:
    return next((label for start, label in WHY.items() if reason.startswith(start)), "wrong arithmetic")


def step_rates(sampled) -> dict:
    valid = solvable = total = samples = 0
    invalid: dict[str, int] = {}
    first: dict[str, int] = {}  # the first invalid step of each sample: the slip, not its consequences
    at = {"first": [0, 0], "middle": [0, 0], "last": [0, 0]}  # [valid, steps] by position, up to the first slip
    for s in sampled:
        for steps in s.steps:
            samples += 1
            seen = False
            verdicts = countdown.oracle_steps(s.problem.problem, steps).verdicts
            for i, v in enumerate(verdicts):
                total += 1
                ok = v.correct or v.reason.startswith("valid, but")
                valid += ok
                solvable += v.correct
                if not seen:
                    where = at["last" if i == len(verdicts) - 1 else "first" if i == 0 else "middle"]
                    where[0], where[1] = where[0] + ok, where[1] + 1
                if not ok:
                    invalid[_why(v.reason)] = invalid.get(_why(v.reason), 0) + 1
                    if not seen:
                        first[_why(v.reason)] = first.get(_why(v.reason), 0) + 1
                        seen = True
    return {"steps": total, "valid_steps": valid / total if total else None,
            "solvable_of_valid": solvable / valid if valid else None,
            "invalid_because": {k: round(n / total, 3) for k, n in sorted(invalid.items())},
            "samples_first_invalid_because": {k: round(n / samples, 3) for k, n in sorted(first.items())},
            "valid_until_first_slip": {k: ok / n if n else None for k, (ok, n) in at.items()}}


def beam(gen, problems, value, spec: SearchSpec = BEAM) -> dict:
    trees = [Tree(f"t{i}", p, policy_prompt(p.problem), LINE, spec.max_depth) for i, p in enumerate(problems)]
    started = time.perf_counter()
    search(trees, spec, gen, value, seed=0)
    return {"selected": sum(bool(t.selected_leaf() and t.selected_leaf().is_correct) for t in trees) / len(trees),
            "any_path": sum(any(n.is_correct for n in t.terminals()) for t in trees) / len(trees),
            "nodes_per_tree": round(sum(len(t.nodes) for t in trees) / len(trees), 1),
            "seconds": round(time.perf_counter() - started, 1)}


def by_numbers(sampled) -> dict:
    """Greedy and pass@8 per count of numbers (a mixture's parts differ widely)."""
    groups: dict[str, list] = {}
    for s in sampled:
        groups.setdefault(str(len(countdown.parse_problem(s.problem.problem).numbers)), []).append(s)
    return {k: {"problems": len(g), "greedy": sum(s.greedy_correct for s in g) / len(g),
                "pass_at_8": sum(any(s.correct) for s in g) / len(g)} for k, g in sorted(groups.items())}


def measure(gen, problems, prms=None, aggregations=("min",), shapes=(BEAM,)) -> dict:
    """`prms`: name -> step scorer; each also picks best-of-8 and values beam search, at the
    likelihood's node budget, once per way of reading a path's step scores (`aggregations`:
    the first is the one the figures' "beam" is). `shapes`: beam specs, the first the main
    one; each further one is searched by the likelihood, the oracle and each PRM's first
    aggregation."""
    sampled = sample(gen, problems, EvalSpec(ns=(8,), max_new_tokens=96))
    n, spec = len(sampled), shapes[0]
    return {
        "problems": n,
        "greedy": sum(s.greedy_correct for s in sampled) / n,
        "pass_at_8": sum(any(s.correct) for s in sampled) / n,
        "random_sample": sum(sum(s.correct) / len(s.correct) for s in sampled) / n,
        "by_numbers": by_numbers(sampled),
        **step_rates(sampled),
        "beam_likelihood": beam(gen, problems, LikelihoodValue(), spec),
        "beam_oracle": beam(gen, problems, OracleValue(), spec),
        "prm": {name: {"best_of_8": prm_metrics(sampled, score_samples(scorer, sampled), [8])[("prm_best_of:min", 8)],
                       **{("beam" if i == 0 else f"beam_{how}"): beam(gen, problems, PRMValue(scorer, how), spec)
                          for i, how in enumerate(aggregations)}}
                for name, scorer in (prms or {}).items()},
        "other_shapes": {shape_name(other): {
            "likelihood": beam(gen, problems, LikelihoodValue(), other),
            "oracle": beam(gen, problems, OracleValue(), other),
            **{name: beam(gen, problems, PRMValue(scorer, aggregations[0]), other) for name, scorer in (prms or {}).items()}}
            for other in shapes[1:]},
    }


def shape_name(spec: SearchSpec) -> str:
    return f"{spec.k}x{spec.beam_width}"


def parse_shapes(text: str) -> tuple[SearchSpec, ...]:
    """"4x4,4x8" -> beam specs with k steps per expanded node and w open nodes, BEAM's budget."""
    try:
        return tuple(replace(BEAM, k=int(k), beam_width=int(w))
                     for k, w in (part.strip().lower().split("x") for part in text.split(",")))
    except ValueError:
        raise SystemExit(f"--beam {text!r}: write KxW shapes separated by commas, e.g. 4x4,4x8") from None


def parse_spec(text: str) -> countdown.CountdownSpec | tuple[countdown.CountdownSpec, ...]:
    """"4:1-20:10-99" -> 4 numbers from 1-20, targets 10-99; "3:1-30:10-99+4:1-13:10-99" -> a
    mixture, equal shares (the built-in default)."""
    if "+" in text:
        return tuple(parse_spec(part) for part in text.split("+"))
    try:
        n, numbers, targets = text.split(":")
        (lo, hi), (tlo, thi) = (map(int, numbers.split("-")), map(int, targets.split("-")))
        return countdown.CountdownSpec(int(n), lo, hi, tlo, thi)
    except ValueError as e:
        raise SystemExit(f"--specs entry {text!r}: {e}; write n:min-max:target_min-target_max, e.g. 4:1-20:10-99, "
                         "or several joined by +")


def has_four(spec) -> bool:
    """Whether a setting makes four-number problems, as game24's hands are."""
    return any(s.n_numbers == 4 for s in countdown.spec_parts(spec))


def setting_problems(spec, n: int, exclude: frozenset[str]) -> list:
    """n distinct problems of the setting, or all of them (shuffled) when it has fewer: a
    small setting's policy then sees each training problem more than once."""
    if isinstance(spec, tuple):  # a mixture: each part must have its share
        return countdown.generate_problems(n, seed=11, spec=spec, exclude=exclude)
    rng = random.Random(11)
    hands = itertools.combinations_with_replacement(range(spec.min_number, spec.max_number + 1), spec.n_numbers)
    space = [countdown.CountdownProblem(h, t) for h in hands for t in sorted(countdown.reachable(h))
             if spec.min_target <= t <= spec.max_target]
    space = [q for q in space if q.text not in exclude]
    if len(space) > n:
        return countdown.generate_problems(n, seed=11, spec=spec, exclude=exclude)
    rng.shuffle(space)
    return [q.to_problem(rng) for q in space]


def train(problems, path: Path, steps: int) -> dict:
    summary = train_base_policy(problems, path, BasePolicyConfig(steps=steps, eval_every=0))
    return {"steps": steps, "final_loss": round(summary["final_loss"], 4), "seconds": round(summary["train_seconds"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="a trained policy directory (skips training; the built-in sets)")
    ap.add_argument("--specs", help="comma-separated domain settings n:min-max:target_min-target_max (or several "
                    "joined by +, a mixture), one policy "
                    "each (default: the built-in sets, countdown-train / countdown-test)")
    ap.add_argument("--steps", type=int, default=BasePolicyConfig().steps, help="training steps")
    ap.add_argument("--problems", type=int, default=200, help="held-out problems and game24 hands")
    ap.add_argument("--offset", type=int, default=0, help="skip this many problems of countdown-test and of game24's "
                    "hands (a fresh slice, to check a choice made on the first one; built-in sets only)")
    ap.add_argument("--save", default="/tmp/countdown-policy", help="where trained policies go")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prm", help="a PRM checkpoint directory: best-of-8 and beam search by it too (e.g. the demo's "
                    "Countdown PRM, $QSTAR_HOME/checkpoints/<id>)")
    ap.add_argument("--verifier", default="", help="comma-separated LM directories, each read as a generative PRM's "
                    "backbone (uncalibrated): best-of-8 and beam search by each")
    ap.add_argument("--aggregations", default="min", help="comma-separated ways a PRM's step scores value a path in "
                    f"beam search ({', '.join(PRM_AGGREGATIONS)}), each a beam of its own; the first is the PRM's 'beam'")
    ap.add_argument("--beam", default=shape_name(BEAM), help="comma-separated beam shapes KxW: K steps sampled per "
                    f"expanded node, W open nodes kept per depth (budget {BEAM.max_nodes} nodes per tree each); the "
                    "first is the main one, each other one is searched too")
    args = ap.parse_args()
    if args.offset and args.specs:
        raise SystemExit("--offset skips problems of the built-in sets; --specs makes its own held-out problems")
    aggregations = tuple(args.aggregations.split(","))
    if bad := [a for a in aggregations if a not in PRM_AGGREGATIONS]:
        raise SystemExit(f"--aggregations {bad}: choose from {', '.join(PRM_AGGREGATIONS)}")
    shapes = parse_shapes(args.beam)
    torch.set_num_threads(args.threads)
    hands = builtin_problems("game24")
    step = max(1, len(hands) // args.problems)
    # the default slice spreads over the hands (every step-th); --offset goes on with the rest
    order = hands[::step] + [h for i, h in enumerate(hands) if i % step]
    game24 = order[args.offset: args.offset + args.problems]
    game24_texts = frozenset(p.problem for p in hands)
    runs = {}  # setting -> (policy dir, training summary, held-out problems, also game24)
    if args.specs:
        for text in args.specs.split(","):
            spec = parse_spec(text.strip())
            problems = setting_problems(spec, 60000 + args.problems, game24_texts)
            path = Path(args.save) / text.strip().replace(":", "_")
            runs[text.strip()] = (path, train(problems[args.problems:], path, args.steps), problems[: args.problems],
                                  has_four(spec))
    else:
        path = Path(args.model or args.save)
        training = None if args.model else train(builtin_problems("countdown-train"), path, args.steps)
        held_out = builtin_problems("countdown-test", n=args.offset + args.problems)[args.offset:]
        runs["built-in"] = (path, training, held_out, True)

    figures = {}
    prms = {"PRM": PRMScorer(args.prm, "cpu")} if args.prm else {}
    for backbone in filter(None, args.verifier.split(",")):  # the factory's PRM before calibration
        prms[f"verifier {Path(backbone).name}"] = PRMScorer(backbone, "cpu", head="generative")
    for name, (path, training, held_out, four) in runs.items():
        gen = TransformersGenerator(str(path))
        figures[name] = {"training": training, "held-out": measure(gen, held_out, prms, aggregations, shapes),
                         "game24": measure(gen, game24, prms, aggregations, shapes) if four else None}

    def pct(v):
        return f"{'–':>13} " if v is None else f"{v:>13.1%} "

    columns = [(name, part) for name in figures for part in ("held-out", "game24") if figures[name][part]]
    print("".ljust(36) + "".join(f"{name[:13]:>14}" for name, _ in columns))
    print("".ljust(36) + "".join(f"{part:>14}" for _, part in columns))
    rows = [("greedy", "greedy"), ("pass@8", "pass_at_8"), ("random sample", "random_sample"),
            ("valid steps", "valid_steps"), ("solvable, of valid", "solvable_of_valid")]
    for label, key in rows:
        print(f"{label:36}" + "".join(pct(figures[n][part][key]) for n, part in columns))
    for count in sorted({k for n, part in columns for k in figures[n][part]["by_numbers"]}):
        for label, key in [("greedy", "greedy"), ("pass@8", "pass_at_8")]:
            print(f"{'  ' + label + ', ' + count + ' numbers':36}" + "".join(
                pct(figures[n][part]["by_numbers"].get(count, {}).get(key)) for n, part in columns))
    for why in dict.fromkeys([*WHY.values(), "wrong arithmetic"]):
        print(f"{'  steps invalid: ' + why:36}" + "".join(pct(figures[n][part]["invalid_because"].get(why, 0.0))
                                                          for n, part in columns))
    for why in dict.fromkeys([*WHY.values(), "wrong arithmetic"]):
        print(f"{'  samples, first: ' + why:36}" + "".join(
            pct(figures[n][part]["samples_first_invalid_because"].get(why, 0.0)) for n, part in columns))
    for where in ("first", "middle", "last"):
        print(f"{'  valid, ' + where + ' step (to a slip)':36}"
              + "".join(pct(figures[n][part]["valid_until_first_slip"][where]) for n, part in columns))
    for label, key in [("beam, likelihood value", "beam_likelihood"), ("beam, oracle value (ceiling)", "beam_oracle")]:
        print(f"{label:36}" + "".join(pct(figures[n][part][key]["selected"]) for n, part in columns))
    for prm_name in prms:
        for i, how in enumerate(aggregations):
            key = "beam" if i == 0 else f"beam_{how}"
            print(f"{('beam (' + how + '), ' + prm_name)[:35]:36}"
                  + "".join(pct(figures[n][part]["prm"][prm_name][key]["selected"]) for n, part in columns))
        print(f"{('best-of-8, ' + prm_name)[:35]:36}"
              + "".join(pct(figures[n][part]["prm"][prm_name]["best_of_8"]) for n, part in columns))
    for other in shapes[1:]:
        for label in ["likelihood", "oracle", *prms]:
            print(f"{('beam ' + shape_name(other) + ', ' + label)[:35]:36}" + "".join(
                pct(figures[n][part]["other_shapes"][shape_name(other)][label]["selected"]) for n, part in columns))
    for name, f in figures.items():
        if f["training"]:
            print(f"{name}: trained {f['training']['steps']} steps in {f['training']['seconds']}s, "
                  f"loss {f['training']['final_loss']}")
    print(json.dumps({"bench": "countdown", "machine": platform.machine(), "threads": args.threads,
                      "beam": shapes[0].__dict__, "other_shapes": [shape_name(x) for x in shapes[1:]],
                      "aggregations": aggregations, "runs": figures}))


if __name__ == "__main__":
    main()
