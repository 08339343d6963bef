"""Experiment: what would round 1's policy need to gain 10 points greedy? (Not a speed benchmark.)

After `make demo`, from the demo's base policy, the same continued training (the RFT
trainer: `--steps` steps of `--batch-size`, peak lr `--lr`, warm-up then cosine) on three
datasets, each then measured by greedy accuracy on the held-out set:

- `self_solved`: the policy's own right solutions, deduplicated: `--samples` samples at
  temperature 0.7 on the first `--problems` training problems (rejection sampling, RFT's data);
- `reference_same_size`: as many reference solutions (of the same training problems), to
  tell the data's source from its size;
- `reference_large`: `--reference` reference solutions of other training problems.

The last line is one JSON object.

    python bench/round_budget.py [--threads 2] [--steps 300] [--problems 2000] [--samples 4] [--arms A,B]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from bench_common import default_model  # bench/ is on sys.path when a benchmark runs as a script

from qstar_dagster.generation.base import SamplingParams
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.lineage import LineageStore
from qstar_dagster.resources import default_store_path
from qstar_dagster.tasks.grading import answers_match, extract_answer
from qstar_dagster.tasks.problem import policy_prompt
from qstar_dagster.training.base_policy import greedy_accuracy
from qstar_dagster.training.rft import RFTSpec, train_rft


def self_solved(policy: str, problems, samples: int, seed: int = 0) -> list[dict]:
    out = TransformersGenerator(policy).generate(
        [policy_prompt(p.problem) for p in problems],
        SamplingParams(n=samples, temperature=0.7, max_new_tokens=96, seed=seed))
    rows = {(policy_prompt(p.problem), c.text.strip()) for p, cs in zip(problems, out) for c in cs
            if answers_match(extract_answer(c.text), p.reference_answer)}
    return [{"prompt": q, "completion": a} for q, a in sorted(rows)]


def reference(problems) -> list[dict]:
    return [{"prompt": policy_prompt(p.problem), "completion": p.reference_solution} for p in problems]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--problems", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--reference", type=int, default=20000)
    ap.add_argument("--arms", default="self_solved,reference_same_size,reference_large",
                    help="which datasets to train on, comma-separated")
    ap.add_argument("--train-set", default="arith-train")
    ap.add_argument("--test-set", default="arith-test")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    store, policy = LineageStore(default_store_path()), default_model()
    _, train = store.prompt_set_problems(args.train_set)
    _, test = store.prompt_set_problems(args.test_set)
    if len(train) < args.problems + args.reference:
        raise SystemExit(f"{args.train_set} has {len(train)} problems; --problems + --reference must fit in it")

    started = time.monotonic()
    solved = self_solved(policy, train[: args.problems], args.samples)
    n_problems = len({r["prompt"] for r in solved})
    print(f"{len(solved)} distinct right solutions of {n_problems} of {args.problems} problems "
          f"({args.samples} samples each, {time.monotonic() - started:.0f}s)")
    solved_prompts = {r["prompt"] for r in solved}
    same_problems = [p for p in train[: args.problems] if policy_prompt(p.problem) in solved_prompts]
    datasets = {"self_solved": solved,
                # one reference solution per solved problem, topped up from the other problems to the same size
                "reference_same_size": reference(same_problems + [
                    p for p in train[: args.problems] if policy_prompt(p.problem) not in solved_prompts])[: len(solved)],
                "reference_large": reference(train[args.problems: args.problems + args.reference])}
    spec = RFTSpec(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=20)
    results = {"base": {"rows": 0, "greedy": greedy_accuracy(TransformersGenerator(policy), test)}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, rows in datasets.items():
            if name not in args.arms.split(","):
                continue
            summary = train_rft(policy, rows, Path(tmp) / name, spec)
            results[name] = {"rows": len(rows), "final_loss": summary["final_loss"],
                             "greedy": greedy_accuracy(TransformersGenerator(str(Path(tmp) / name)), test)}
    for name, r in results.items():
        loss = f", final loss {r['final_loss']:.3f}" if "final_loss" in r else ""
        print(f"{name:20s} {r['rows']:6d} rows{loss}: greedy {r['greedy']:.1%} on {args.test_set}")
    print(json.dumps({"steps": args.steps, "lr": args.lr, "batch_size": args.batch_size, **results}))


if __name__ == "__main__":
    main()
