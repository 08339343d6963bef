"""Benchmark: the transformers backend against plain `model.generate`, prompt by prompt.

Same model, prompts, n, token budget and sampling settings on both sides: 64 prompts x 8
samples of one reasoning step (stop at the newline) from the base policy. Prints tokens/s
of each and the ratio; the last line is one JSON object with the figures.

    python bench/generation.py [--model PATH] [--prompts 64] [--n 8] [--threads 2]

Without --model it uses the latest base policy recorded in the store ($QSTAR_HOME, as left
by `make demo`).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from bench_common import default_model  # bench/ is on sys.path when a benchmark runs as a script

from qstar_dagster.generation.base import SamplingParams
from qstar_dagster.generation.hf import TransformersGenerator, load_causal_lm
from qstar_dagster.tasks.problem import policy_prompt
from qstar_dagster.tasks.prompt_sets import builtin_problems


def step_prompts(k: int) -> list[str]:
    """Prompts that end where a step begins, at depths 0..3 of reference solutions, so the
    continuation asked for is one step, as in tree search."""
    prompts = []
    for i, p in enumerate(builtin_problems("arith-test", n=k)):
        steps = p.reference_solution.split("\n")
        depth = i % len(steps)
        prompts.append(policy_prompt(p.problem) + "".join(s + "\n" for s in steps[:depth]))
    return prompts


def run_plain(model, tok, prompts: list[str], params: SamplingParams) -> int:
    """`model.generate` one prompt at a time with n return sequences; returns generated tokens."""
    torch.manual_seed(params.seed)
    total = 0
    for prompt in prompts:
        enc = tok(prompt, return_tensors="pt")
        out = model.generate(**enc, do_sample=True, temperature=params.temperature, top_p=params.top_p,
                             top_k=0, max_new_tokens=params.max_new_tokens, num_return_sequences=params.n,
                             stop_strings=list(params.stop), tokenizer=tok, pad_token_id=tok.pad_token_id)
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            # Count up to and including the token that ended the row, as the backend does.
            ends = [i for i, t in enumerate(row) if t == tok.eos_token_id]
            text_len = len(row) if not ends else ends[0] + 1
            pads = [i for i, t in enumerate(row[:text_len]) if t == tok.pad_token_id]
            total += pads[0] if pads else text_len
    return total


def run_ours(gen: TransformersGenerator, prompts: list[str], params: SamplingParams) -> int:
    return sum(c.n_tokens for cs in gen.generate(prompts, params) for c in cs)


def timed(fn, *args) -> tuple[float, int]:
    started = time.perf_counter()
    tokens = fn(*args)
    return time.perf_counter() - started, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: the latest base policy in the store)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each side; the best is reported")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model_path = args.model or default_model()
    model, tok = load_causal_lm(model_path)
    gen = TransformersGenerator(model, tok)
    prompts = step_prompts(args.prompts)
    params = SamplingParams(n=args.n, temperature=1.0, max_new_tokens=args.max_new_tokens, stop=("\n",), seed=0)

    run_ours(gen, prompts[:2], params)  # warm-up, both sides
    run_plain(model, tok, prompts[:2], params)
    ours, plain = [], []
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both sides alike
        ours.append(timed(run_ours, gen, prompts, params))
        plain.append(timed(run_plain, model, tok, prompts, params))
    (t_ours, n_ours), (t_plain, n_plain) = min(ours), min(plain)
    ours_tps, plain_tps = n_ours / t_ours, n_plain / t_plain
    print(f"model {model_path} ({sum(p.numel() for p in model.parameters()):,} parameters), "
          f"{len(prompts)} prompts x {args.n} samples, <= {args.max_new_tokens} new tokens, stop at newline, "
          f"{args.threads} threads, best of {args.repeats}")
    print(f"plain model.generate, prompt by prompt: {n_plain} tokens in {t_plain:.2f}s = {plain_tps:,.0f} tokens/s")
    print(f"qstar transformers backend:             {n_ours} tokens in {t_ours:.2f}s = {ours_tps:,.0f} tokens/s")
    print(f"speed-up: {ours_tps / plain_tps:.1f}x")
    print(json.dumps({
        "bench": "generation", "model": str(Path(model_path)), "prompts": len(prompts), "n": args.n,
        "max_new_tokens": args.max_new_tokens, "threads": args.threads, "device": "cpu",
        "machine": platform.machine(), "plain_tokens": n_plain, "plain_seconds": round(t_plain, 3),
        "plain_tokens_per_s": round(plain_tps, 1), "ours_tokens": n_ours, "ours_seconds": round(t_ours, 3),
        "ours_tokens_per_s": round(ours_tps, 1), "speedup": round(ours_tps / plain_tps, 2),
    }))


if __name__ == "__main__":
    main()
