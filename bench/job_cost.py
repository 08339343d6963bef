"""The cost of a real job, on paper: Math-Shepherd labels for 100k GSM8K/MATH problems (16
rollouts per problem, N=8 Monte Carlo completions from every step), for a 1.5B and a 7B
policy, side by side, with what each part of the engine has to carry.

Measured here: the length and step count of the reference solutions in ../shared/data
(GSM8K train, MATH500; tokens ~ characters / 4). Assumed, and printed: policy solutions
are --length-factor times as long as the references; vLLM generates --tokens-per-s-7b
output tokens/s per GPU for a 7-8B model (6,583: `vllm bench serve`, Llama-3.1-8B on one
GPU, ShareGPT, vllm-project/vllm#18566) and --speedup-1p5b times that for a 1.5B one (an
extrapolation: vLLM publishes no 1.5B figure); prompt tokens are nearly free (prefix
caching: the MC completions of a step share its prefix). The store's write rate is
compared with --store-rows-per-s (bench/shared_store.py's postgres figure on this machine).
Last line: JSON.

    python bench/job_cost.py --gpus 64
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def reference_shape() -> dict:
    """Mean steps and tokens of reference solutions: GSM8K (a line per step, calculator
    annotations dropped) and MATH500 (a sentence per step)."""
    shapes = {}
    gsm = DATA / "gsm8k" / "train.jsonl"
    if gsm.exists():
        rows = [json.loads(line) for line in gsm.open()]
        steps = [r["answer"].split("####")[0].strip().split("\n") for r in rows]
        chars = [len(re.sub(r"<<[^>]*>>", "", "\n".join(s))) for s in steps]
        shapes["gsm8k"] = {"n": len(rows), "steps": sum(map(len, steps)) / len(rows), "tokens": sum(chars) / 4 / len(rows)}
    math = DATA / "math500" / "test.jsonl"
    if math.exists():
        rows = [json.loads(line) for line in math.open()]
        steps = [[s for s in re.split(r"(?<=[.!?])\s+|\n\n", r["solution"]) if s.strip()] for r in rows]
        shapes["math"] = {"n": len(rows), "steps": sum(map(len, steps)) / len(rows),
                          "tokens": sum(len(r["solution"]) for r in rows) / 4 / len(rows)}
    if not shapes:  # no reference data here: typical published shapes
        shapes = {"gsm8k": {"n": 0, "steps": 4.0, "tokens": 70.0}, "math": {"n": 0, "steps": 9.0, "tokens": 210.0}}
    return shapes


def job(shape: dict, problems: int, rollouts: int, mc: int, length_factor: float) -> dict:
    """Tokens and rows for `problems` of one shape (S steps, L tokens per policy solution).
    Monte Carlo from step k of S generates the remaining (S - k) steps, N times, for every
    step but the last (graded directly): N * L * (S - 1) / 2 tokens per solution."""
    steps, length = shape["steps"] * length_factor ** 0.5, shape["tokens"] * length_factor
    solutions = problems * rollouts
    return {
        "solutions": solutions,
        "rollout_tokens": solutions * length,
        "mc_tokens": solutions * mc * length * (steps - 1) / 2,
        "step_nodes": solutions * steps,  # an upper bound: shared prefixes are one node
        "labels": solutions * (steps - 1) * 2,  # hard and soft per labeled step
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=100_000)
    ap.add_argument("--math-share", type=float, default=0.5, help="share of MATH problems (the rest GSM8K)")
    ap.add_argument("--rollouts", type=int, default=16)
    ap.add_argument("--mc", type=int, default=8, help="Monte Carlo completions per step")
    ap.add_argument("--length-factor", type=float, default=2.0,
                    help="policy solutions are this many times as long as the references (steps grow by its root)")
    ap.add_argument("--tokens-per-s-7b", type=float, default=6583.0)
    ap.add_argument("--speedup-1p5b", type=float, default=4.0)
    ap.add_argument("--gpus", type=int, default=64)
    ap.add_argument("--store-rows-per-s", type=float, default=None,
                    help="the shared store's measured write rate (bench/shared_store.py, postgres)")
    ap.add_argument("--bytes-per-node", type=float, default=600.0, help="a nodes row with its text and indexes")
    args = ap.parse_args()

    shapes = reference_shape()
    parts = {"gsm8k": round(args.problems * (1 - args.math_share)), "math": round(args.problems * args.math_share)}
    totals: dict[str, float] = {}
    for name, n in parts.items():
        for k, v in job(shapes[name], n, args.rollouts, args.mc, args.length_factor).items():
            totals[k] = totals.get(k, 0) + v
    tokens = totals["rollout_tokens"] + totals["mc_tokens"]
    policies = {"1.5B": args.tokens_per_s_7b * args.speedup_1p5b, "7B": args.tokens_per_s_7b}

    print("reference solutions: " + "; ".join(f"{k} {v['n']} rows, {v['steps']:.1f} steps, {v['tokens']:.0f} tokens"
                                              for k, v in shapes.items()))
    print(f"job: {args.problems:,} problems ({parts['gsm8k']:,} GSM8K, {parts['math']:,} MATH), {args.rollouts} rollouts,"
          f" N={args.mc} Monte Carlo completions per step, policy solutions x{args.length_factor} the references")
    print(f"  solutions {totals['solutions']:,.0f}; generated tokens: rollouts {totals['rollout_tokens'] / 1e9:.2f} B, "
          f"Monte Carlo {totals['mc_tokens'] / 1e9:.2f} B ({totals['mc_tokens'] / tokens:.0%}), total {tokens / 1e9:.2f} B")
    print(f"  store rows: nodes <= {totals['step_nodes'] / 1e6:.1f} M, step labels {totals['labels'] / 1e6:.1f} M; "
          f"~{totals['step_nodes'] * args.bytes_per_node / 1e9:.1f} GB of nodes")
    print(f"\n{'policy':<8}{'tokens/s/GPU':>14}{'GPU-hours':>11}{'hours on ' + str(args.gpus):>14}{'store rows/s':>14}"
          f"{'store load':>12}")
    out = {}
    for name, rate in policies.items():
        gpu_hours = tokens / rate / 3600
        wall_h = gpu_hours / args.gpus
        rows_per_s = (totals["step_nodes"] + totals["labels"]) / (wall_h * 3600)
        load = f"{rows_per_s / args.store_rows_per_s:.1%}" if args.store_rows_per_s else "-"
        print(f"{name:<8}{rate:>14,.0f}{gpu_hours:>11,.0f}{wall_h:>14,.1f}{rows_per_s:>14,.0f}{load:>12}")
        out[name] = {"tokens_per_s_per_gpu": rate, "gpu_hours": round(gpu_hours), "wall_hours": round(wall_h, 1),
                     "store_rows_per_s": round(rows_per_s)}
    print(json.dumps({"bench": "job_cost", "problems": args.problems, "tokens_b": round(tokens / 1e9, 2),
                      "mc_share": round(totals["mc_tokens"] / tokens, 3), "nodes_m": round(totals["step_nodes"] / 1e6, 1),
                      "labels_m": round(totals["labels"] / 1e6, 1), "gpus": args.gpus, "policies": out,
                      "shapes": shapes}))


if __name__ == "__main__":
    main()
