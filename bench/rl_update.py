"""Benchmark: does one RL update generalize? Its effect on the problems it sampled against
other problems of the same set.

From one base policy, each arm samples `--group` solutions of `--problems` training problems,
scores them as step_ppo would (the domain's grade; the oracle's steps for the step arms) and
takes one iteration of the trainer's own update (`_update`: PPO's clipped objective, the KL
penalty, the value head where the credit needs one). The same problems are then sampled
again (a fresh seed, the same for the base), and `--other` training problems it never saw:
the share of right samples at T=0.7 and greedy accuracy, before and after, side by side.

A sign error in the update shows as the seen problems getting worse; an update that fits its
problems without learning the task shows as the seen problems getting better and the others
worse (issue 17: why every step-PPO arm of `bench/step_rl.py` loses held-out accuracy).

    python bench/rl_update.py [--model DIR] [--domain arith] [--lr 2e-5,1e-4] [--problems 64]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
from dataclasses import replace

import torch
from bench_common import default_model  # bench/ is on sys.path when a benchmark runs as a script

from qstar_dagster.generation.base import SamplingParams
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.tasks.domains import domain
from qstar_dagster.tasks.problem import policy_prompt
from qstar_dagster.tasks.prompt_sets import builtin_problems
from qstar_dagster.training.step_ppo import (
    Sample,
    StepPPOSpec,
    _update,
    make_optimizer,
    make_samples,
    oracle_scores,
    reward_samples,
)

SETS = {"arith": "arith-train", "countdown": "countdown-train"}
ARMS = {  # name -> (reward, credit, after_error)
    "outcome GRPO": ("none", "group", "keep"),
    "step-PPO step/oracle": ("oracle", "step", "keep"),
    "step-PPO step/oracle mask": ("oracle", "step", "mask"),
}


def samples_of(model, tok, problems, n: int, seed: int) -> list[Sample]:
    prompts = [policy_prompt(p.problem) for p in problems]
    out = TransformersGenerator(model, tok).generate(prompts, SamplingParams(n=n, temperature=0.7, max_new_tokens=96,
                                                                             seed=seed, logprobs=True))
    return make_samples(tok, problems, prompts, out)


def rates(model, tok, problems, n: int, seed: int) -> dict:
    sampled = samples_of(model, tok, problems, n, seed)
    greedy = TransformersGenerator(model, tok).generate([policy_prompt(p.problem) for p in problems],
                                                        SamplingParams(n=1, temperature=0, max_new_tokens=96))
    return {"sample": sum(s.correct for s in sampled) / max(1, len(sampled)),
            "greedy": sum(domain(p.domain).grade(p, cs[0].text)[1] for p, cs in zip(problems, greedy)) / len(problems)}


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="base policy directory (default: the demo's)")
    ap.add_argument("--domain", choices=sorted(SETS), default="arith")
    ap.add_argument("--problems", type=int, default=64, help="problems the update samples")
    ap.add_argument("--group", type=int, default=8, help="samples per problem")
    ap.add_argument("--other", type=int, default=128, help="other training problems, never sampled for the update")
    ap.add_argument("--lr", default="2e-5,1e-4", help="comma-separated learning rates")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    policy = args.model or default_model()
    tok = AutoTokenizer.from_pretrained(policy)
    base = AutoModelForCausalLM.from_pretrained(policy).eval()
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    train = builtin_problems(SETS[args.domain])
    chosen = random.Random(0).sample(range(len(train)), args.problems + args.other)
    seen, other = [train[i] for i in chosen[: args.problems]], [train[i] for i in chosen[args.problems:]]
    batch = samples_of(base, tok, seen, args.group, seed=1)
    before = {"seen": rates(base, tok, seen, args.group, seed=2), "other": rates(base, tok, other, args.group, seed=3)}
    print(f"base: {len(batch)} samples, right {sum(s.correct for s in batch) / len(batch):.1%}; "
          f"seen {before['seen']}, other {before['other']}", flush=True)
    figures = {"base": before}
    for name, (reward, credit, after_error) in ARMS.items():
        for lr in (float(x) for x in args.lr.split(",")):
            spec = StepPPOSpec(reward=reward, credit=credit, after_error=after_error, group_size=args.group, lr=lr,
                               minibatch_size=32)
            samples = [replace(s) for s in batch]
            reward_samples(samples, oracle_scores(samples) if reward == "oracle" else [[] for _ in samples], spec)
            torch.manual_seed(0)
            model = copy.deepcopy(base)
            head, opt = make_optimizer(model, spec)
            stats = _update(model, base, head, opt, samples, spec, pad_id)
            after = {"seen": rates(model, tok, seen, args.group, seed=2),
                     "other": rates(model, tok, other, args.group, seed=3), "kl": stats["kl"]}
            figures[f"{name} lr {lr:g}"] = after
            print(f"{name} lr {lr:g}: seen {after['seen']}, other {after['other']}", flush=True)

    print(f"\n{args.domain}: one update ({args.problems} problems x {args.group} samples, "
          f"{StepPPOSpec().ppo_epochs} epochs of minibatches of 32); right samples at T=0.7 and greedy, "
          f"on the {args.problems} problems it sampled and {args.other} others")
    print(f"{'arm':36}{'seen sample':>12}{'seen greedy':>12}{'other sample':>13}{'other greedy':>13}")
    for arm, f in figures.items():
        print(f"{arm:36}{f['seen']['sample']:>12.1%}{f['seen']['greedy']:>12.1%}"
              f"{f['other']['sample']:>13.1%}{f['other']['greedy']:>13.1%}")
    print(json.dumps({"bench": "rl_update", "machine": platform.machine(), "threads": args.threads,
                      "domain": args.domain, "policy": policy, "problems": args.problems, "group": args.group,
                      "other": args.other, "arms": figures}))


if __name__ == "__main__":
    main()
