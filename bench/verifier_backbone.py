"""Benchmark: does a verifier that computes better than the policy verify better?

Issue 15's diagnosis: in the arithmetic domain checking a step *is* computing it, so a
verifier that reads the step with the policy's own competence (its likelihood) finds the
policy's sampling slips, which majority voting already removes, and none of its systematic
errors. This bench makes verifiers that compute better by continuing the policy's own training
(the same trainer, `train_base_policy`'s loop, on the built-in training set's reference
solutions) for each schedule in --steps, each a full warm-up + cosine schedule from the
policy, and puts them side by side with the policy itself, on the same held-out samples:

- as a policy: greedy accuracy on the held-out problems;
- as a verifier of the *policy's* 16 samples (T=0.7) per problem, each step scored by the
  verifier's likelihood (`LikelihoodScorer`, mean token probability, the step end read as an
  end), aggregated by `min`: best-of-4/8/16, vote@8, and the within-problem signal.

Majority@N, pass@N and a random sample are printed for scale. The continued backbones are
saved under --save (a schedule already there is measured again, not retrained), so the best
one can be shipped as the built-in verifier (README, "A PRM that verifies"):

    python bench/verifier_backbone.py --steps 500,1000,2000 [--lr 1e-3] [--threads 2]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from qstar_dagster.evaluation.evaluate import (
    EvalSpec,
    policy_metrics,
    prm_metrics,
    sample,
    score_samples,
    vote_accuracy,
    within_problem_signal,
)
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.tasks.problem import policy_prompt
from qstar_dagster.tasks.prompt_sets import builtin_problems
from qstar_dagster.training.base_policy import greedy_accuracy
from qstar_dagster.training.prm import LikelihoodScorer
from qstar_dagster.training.sft import FitSpec, encode_pairs, fit_causal_lm
from qstar_dagster.training.shipped import SHIPPED_ROOT


def pct(v) -> str:
    return "–" if v is None else f"{v:.1%}"


def continue_training(policy: str, train: list, out: Path, steps: int, lr: float, seed: int,
                      on_eval) -> dict:
    tok = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy)
    examples = encode_pairs(tok, [(policy_prompt(p.problem), p.reference_solution) for p in train])
    summary = fit_causal_lm(model, tok, examples, FitSpec(steps=steps, batch_size=64, lr=lr, warmup=100, seed=seed,
                                                          eval_every=250), "verifier", on_eval)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "training.json").write_text(json.dumps({**summary, "from": policy, "lr": lr, "seed": seed}))
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", default=str(SHIPPED_ROOT / "arith"), help="the policy (default: the shipped arith one)")
    ap.add_argument("--steps", default="500,1000,2000", help="comma-separated continued-training schedules")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the continued training")
    ap.add_argument("--seed", type=int, default=1, help="seed of the continued training's batches")
    ap.add_argument("--train-set", default="arith-train")
    ap.add_argument("--test-set", default="arith-test")
    ap.add_argument("--start", default=None, help="continue from this backbone instead of the policy (e.g. one "
                    "this bench saved: another schedule on top of it)")
    ap.add_argument("--n", type=int, default=16, help="policy samples per held-out problem")
    ap.add_argument("--save", default="/tmp/verifiers")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    train, test = builtin_problems(args.train_set), builtin_problems(args.test_set)
    ns = sorted({4, 8, args.n})
    started = time.monotonic()
    sampled = sample(TransformersGenerator(args.policy), test, EvalSpec(ns=tuple(ns)))
    alone = policy_metrics(sampled, ns)
    random_pick = sum(sum(s.correct[:8]) / 8 for s in sampled) / len(sampled)
    print(f"{args.test_set}, {len(test)} problems x {args.n} samples of {args.policy} ({time.monotonic() - started:.0f}s): "
          + "".join(f"majority@{n} {alone[('majority', n)]:.1%}, " for n in ns if ('majority', n) in alone)
          + f"pass@8 {alone[('pass', 8)]:.1%}, greedy {alone[('greedy', 1)]:.1%}, a random sample {random_pick:.1%}",
          flush=True)

    def on_eval(model, tok) -> float:
        return greedy_accuracy(TransformersGenerator(model, tok), test[:100])

    start = args.start or args.policy
    backbones = {"the policy itself": (args.policy, None)}
    if args.start:
        backbones["the start"] = (args.start, json.loads((Path(args.start) / "training.json").read_text()))
    for steps in sorted(int(s) for s in args.steps.split(",")):
        path = Path(args.save) / f"{Path(start).name}-lr{args.lr:g}-s{args.seed}-{steps}"
        if (path / "training.json").is_file() and (path / "model.safetensors").is_file():
            summary = json.loads((path / "training.json").read_text())
            print(f"+{steps} steps: reusing {path}", flush=True)
        else:
            summary = continue_training(start, train, path, steps, args.lr, args.seed, on_eval)
        backbones[f"+{steps} steps"] = (str(path), summary)

    results = {}
    for name, (path, summary) in backbones.items():
        greedy = alone[("greedy", 1)] if summary is None else greedy_accuracy(TransformersGenerator(path), test)
        scores = score_samples(LikelihoodScorer(path, "mean"), sampled)
        m = prm_metrics(sampled, scores, ns)
        results[name] = {"path": path, "greedy": greedy,
                         **{f"best_of_{n}": m[("prm_best_of:min", n)] for n in ns},
                         "vote_at_8": m.get(("prm_vote", 8)),
                         "vote_at_8_logodds": vote_accuracy(sampled, scores, 8, "logodds") if ("prm_vote", 8) in m
                         else None, **within_problem_signal(sampled, scores),
                         "train_seconds": None if summary is None else round(summary["train_seconds"], 1),
                         "final_loss": None if summary is None else round(summary["final_loss"], 4)}
        print(f"  {name}: greedy {greedy:.1%}, verifier best-of-8 {results[name]['best_of_8']:.1%}", flush=True)

    head = (f"| verifier | its greedy | {' | '.join(f'best-of-{n}' for n in ns)} | vote@8 | vote@8 log-odds | "
            "within gap | within >0 | train s |")
    print("\n" + head + "\n|" + "---|" * (head.count("|") - 1))
    majority = " | ".join(pct(alone.get(("majority", n))) for n in ns)
    print(f"| majority vote (no verifier) | – | {majority} | – | – | – | – | – |")
    for name, r in results.items():
        gap = "–" if r["within_gap"] is None else f"{r['within_gap']:+.3f}"
        pos = "–" if r["within_positive"] is None else f"{r['within_positive']:.1%}"
        best = " | ".join(f"{r[f'best_of_{n}']:.1%}" for n in ns)
        print(f"| {name} | {r['greedy']:.1%} | {best} | "
              f"{pct(r['vote_at_8'])} | {pct(r['vote_at_8_logodds'])} | {gap} | {pos} | {r['train_seconds'] or '–'} |")
    print(json.dumps({"bench": "verifier_backbone", "machine": platform.machine(), "threads": args.threads,
                      "policy": args.policy, "lr": args.lr, "majority": {n: alone.get(("majority", n)) for n in ns},
                      "pass": {n: alone[("pass", n)] for n in ns}, "greedy": alone[("greedy", 1)],
                      "random_sample": random_pick, "verifiers": results}))


if __name__ == "__main__":
    main()
