"""Benchmark: how the test suite's small arithmetic policy (tests/conftest.py `arith_policy_dir`)
should be trained so that search tests see it right about half the time on EASY_ARITH.

Trains each variant (training problems, steps) from the same seed and prints greedy accuracy
and pass@6 (temperature 1.0, the search tests' best-of-n) on 100 held-out problems, side by
side, with the training time. Last line: JSON.

    python bench/fixture_policy.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qstar_dagster.generation.base import SamplingParams
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.tasks.arith import generate_problems
from qstar_dagster.tasks.grading import extract_answer
from qstar_dagster.training.base_policy import BasePolicyConfig, train_base_policy
from tests.conftest import EASY_ARITH

VARIANTS = [(1500, 700), (1500, 1200), (1500, 2000)]  # (training problems, steps); the first is today's


def measure(path: Path, problems) -> dict:
    gen = TransformersGenerator(str(path))
    prompts = [p.problem + "\n" for p in problems]
    greedy = gen.generate(prompts, SamplingParams(max_new_tokens=48, temperature=0))
    sampled = gen.generate(prompts, SamplingParams(max_new_tokens=48, temperature=1.0, n=6, seed=0))

    def right(p, c):
        return extract_answer(c.text) == p.reference_answer

    return {"greedy": sum(right(p, g[0]) for p, g in zip(problems, greedy)) / len(problems),
            "pass_at_6": sum(any(right(p, c) for c in s) for p, s in zip(problems, sampled)) / len(problems)}


def main() -> None:
    held_out = generate_problems(100, seed=99, spec=EASY_ARITH)
    out = {}
    print(f"{'problems':>8} {'steps':>6} {'seconds':>8} {'greedy':>7} {'pass@6':>7}")
    for n, steps in VARIANTS:
        cfg = BasePolicyConfig(hidden=64, layers=2, heads=2, steps=steps, batch_size=32, lr=5e-3, warmup=20,
                               eval_every=0)
        with tempfile.TemporaryDirectory() as d:
            t = time.monotonic()
            train_base_policy(generate_problems(n, seed=5, spec=EASY_ARITH), Path(d), cfg)
            seconds = time.monotonic() - t
            m = measure(Path(d), held_out)
        out[f"{n}x{steps}"] = {"seconds": round(seconds, 1), **m}
        print(f"{n:>8} {steps:>6} {seconds:>8.0f} {m['greedy']:>7.1%} {m['pass_at_6']:>7.1%}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
