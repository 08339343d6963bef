"""Which wrong steps does the PRM score as right, and does RL learn to write them?

Step-PPO with a PRM's step rewards gains less than outcome-only GRPO from the converged
Countdown policy, and over a long run its samples' PRM step score rises while the oracle's
step accuracy barely does (README, "Four times the iterations"). This bench looks at the
steps themselves. Each policy (the base, and trained ones such as `bench/step_rl.py`'s arms)
writes `--n` samples (T `--temperature`) of each of `--test` held-out problems; the PRM
scores every step and the domain's oracle judges it. Per policy, side by side:

- the PRM against the oracle on the steps up to each sample's first error (where a step's
  and its prefix's verdicts agree, as `evaluate_prm` reads them): step accuracy at 0.5 and AUC;
- how many of the first errors the PRM scores at 0.5 or more: the wrong steps `clip`
  shaping (min(score - 0.5, 0)) leaves unpunished, the escapes; the same for the wrong steps
  after a first error (a PRM trained with `stop_at_first_error`, the default, never learned
  to score them); and escaped wrong steps per sample;
- per kind of first error (the oracle's verdict with its numbers taken out, e.g. Countdown's
  "valid, but n cannot be made from n": a legal move off the target): its share of the
  policy's first errors, the PRM's mean score, and its escape rate; and each kind's
  highest-scored first error, with its problem and steps, to read what fooled the PRM.

A policy that learned to please the PRM writes more of the kinds the PRM overrates. The
last line is one JSON object.

    python bench/prm_overrate.py --domain countdown --prm DIR --policy base=DIR --policy "step/prm=DIR" [--test 200]
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict

import torch

from qstar_dagster.evaluation.evaluate import EvalSpec, sample, score_samples
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.tasks.domains import domain
from qstar_dagster.tasks.prompt_sets import BUILTIN_PROMPT_SETS, builtin_problems
from qstar_dagster.training.prm import PRMScorer, step_auc

TEST_SETS = {"arith": "arith-test", "countdown": "countdown-test"}


def verdict_kind(reason: str) -> str:
    """An oracle verdict without its numbers: "8 + 4 is 13, not 12" -> "n op n is n, not n"."""
    kind = re.sub(r"-?\d+(?: -?\d+)*", "n", reason)
    return re.sub(r"n [-+*/x×÷] n", "n op n", kind)


def step_table(sampled, scores: list[list[list[float]]], threshold: float = 0.5) -> dict:
    """The PRM's scores of every sample's steps (`scores[problem][sample][step]`) against the
    oracle: accuracy and AUC on the steps up to each first error, escapes (wrong steps scored
    at or above `threshold`), and the first errors by kind."""
    region: list[tuple[float, bool]] = []
    first_errors: dict[str, list[float]] = defaultdict(list)
    wrong_after: list[float] = []  # the wrong steps after a sample's first error
    examples: dict[str, tuple[float, str, list[str]]] = {}  # kind -> the highest-scored (score, problem, steps)
    samples = 0
    for s, problem_scores in zip(sampled, scores):
        oracle = domain(s.problem.domain).oracle
        for steps, step_scores in zip(s.steps, problem_scores):
            samples += 1
            if not steps:
                continue
            result = oracle(s.problem, steps)
            end = len(steps) if result.first_error is None else result.first_error + 1
            region += [(sc, v.correct) for sc, v in zip(step_scores[:end], result.verdicts[:end])]
            if result.first_error is not None:
                kind, score = verdict_kind(result.verdicts[result.first_error].reason), step_scores[result.first_error]
                first_errors[kind].append(score)
                if score > examples.get(kind, (-1.0,))[0]:
                    examples[kind] = (score, s.problem.problem, steps[:end])
                wrong_after += [sc for sc, v in zip(step_scores[end:], result.verdicts[end:]) if not v.correct]
    errors = [sc for scs in first_errors.values() for sc in scs]
    right_scores = [sc for sc, ok in region if ok]
    escaped = sum(sc >= threshold for sc in errors) + sum(sc >= threshold for sc in wrong_after)
    return {
        "samples": samples,
        "steps_scored": len(region),
        "step_accuracy": sum((sc >= threshold) == ok for sc, ok in region) / len(region) if region else None,
        "step_auc": step_auc(region),
        "right_step_mean_score": sum(right_scores) / len(right_scores) if right_scores else None,
        "first_errors": len(errors),
        "first_error_mean_score": sum(errors) / len(errors) if errors else None,
        "first_error_escape": sum(sc >= threshold for sc in errors) / len(errors) if errors else None,
        "wrong_after_mean_score": sum(wrong_after) / len(wrong_after) if wrong_after else None,
        "wrong_after_escape": sum(sc >= threshold for sc in wrong_after) / len(wrong_after) if wrong_after else None,
        "escaped_per_sample": escaped / samples if samples else 0.0,
        "kinds": {k: {"share": len(v) / len(errors), "mean_score": sum(v) / len(v),
                      "escape": sum(sc >= threshold for sc in v) / len(v),
                      "top_example": {"score": examples[k][0], "problem": examples[k][1], "steps": examples[k][2]}}
                  for k, v in sorted(first_errors.items(), key=lambda kv: -len(kv[1]))},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--domain", choices=sorted(TEST_SETS), default="countdown")
    ap.add_argument("--prm", required=True, help="the PRM directory whose scores are examined")
    ap.add_argument("--policy", action="append", required=True, metavar="NAME=DIR",
                    help="a policy to sample, with its name in the table; repeat for each")
    ap.add_argument("--test", type=int, default=200, help="held-out problems")
    ap.add_argument("--n", type=int, default=8, help="samples per problem")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--threshold", type=float, default=0.5, help="a step scored at or above it counts as right")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    policies = {}
    for item in args.policy:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--policy {item!r}: write NAME=DIR, e.g. --policy base=qstar_dagster/policies/countdown")
        policies[name] = path
    test_set = TEST_SETS[args.domain]
    test = builtin_problems(test_set, n=max(args.test, BUILTIN_PROMPT_SETS[test_set].n))[: args.test]
    scorer = PRMScorer(args.prm)
    tables = {}
    for name, path in policies.items():
        sampled = sample(TransformersGenerator(path), test,
                         EvalSpec(ns=(args.n,), temperature=args.temperature, max_new_tokens=96))
        t = tables[name] = step_table(sampled, score_samples(scorer, sampled), args.threshold)
        t["right_samples"] = sum(sum(s.correct) for s in sampled) / t["samples"]
        print(f"{name}: {t['samples']} samples, {t['right_samples']:.1%} right, {t['first_errors']} first errors, "
              f"{t['first_error_escape'] or 0:.1%} of them scored >= {args.threshold}", flush=True)

    def cell(v, fmt="{:.1%}"):
        return "-" if v is None else fmt.format(v)

    names = list(tables)
    w = max(16, *(len(n) + 2 for n in names))  # a column per policy, as wide as its name
    print(f"\n{args.domain}: {args.test} held-out problems x {args.n} samples at T {args.temperature}; "
          f"PRM {args.prm}; a step scored >= {args.threshold} counts as right")
    print(f"{'':44}" + "".join(f"{n:>{w}}" for n in names))
    rows = [("samples right", "right_samples", "{:.1%}"),
            ("PRM step accuracy (to the first error)", "step_accuracy", "{:.1%}"),
            ("PRM step AUC (to the first error)", "step_auc", "{:.3f}"),
            ("PRM mean score, right steps", "right_step_mean_score", "{:.3f}"),
            ("PRM mean score, first errors", "first_error_mean_score", "{:.3f}"),
            ("first errors per sample", None, "{:.3f}"),
            ("first errors scored >= threshold", "first_error_escape", "{:.1%}"),
            ("PRM mean score, wrong steps after the first", "wrong_after_mean_score", "{:.3f}"),
            ("later wrong steps scored >= threshold", "wrong_after_escape", "{:.1%}"),
            ("wrong steps scored >= threshold, per sample", "escaped_per_sample", "{:.3f}")]
    for label, key, fmt in rows:
        vals = [tables[n]["first_errors"] / tables[n]["samples"] if key is None else tables[n][key] for n in names]
        print(f"{label:44}" + "".join(f"{cell(v, fmt):>{w}}" for v in vals))
    kinds = list(dict.fromkeys(k for n in names for k in tables[n]["kinds"]))
    print("\nfirst errors by kind: share of the policy's first errors / PRM mean score / scored >= threshold")
    print(f"{'':44}" + "".join(f"{n:>{max(w, 22)}}" for n in names))
    for k in kinds:
        cells = []
        for n in names:
            f = tables[n]["kinds"].get(k)
            cells.append("-" if f is None else f"{f['share']:.0%} / {f['mean_score']:.2f} / {f['escape']:.0%}")
        print(f"{k[:44]:44}" + "".join(f"{c:>{max(w, 22)}}" for c in cells))
    print("\nthe highest-scored first error of each kind, per policy (score: problem | steps, the last one wrong)")
    for k in kinds:
        for n in names:
            if (f := tables[n]["kinds"].get(k)) is not None:
                ex = f["top_example"]
                print(f"  {k[:40]:40} {n:>{w}}  {ex['score']:.2f}: {ex['problem']!r} | {' / '.join(ex['steps'])}")
    print(json.dumps({"bench": "prm_overrate", "domain": args.domain, "prm": args.prm, "test": args.test,
                      "n": args.n, "temperature": args.temperature, "threshold": args.threshold,
                      "policies": policies, "tables": tables}))


if __name__ == "__main__":
    main()
