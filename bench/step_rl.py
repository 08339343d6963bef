"""Benchmark: step-level RL against outcome-only RL, RFT and step-DPO at one budget.

From one base policy (default: the demo's) on the training problems, each arm trains with
the same budget of sampled solutions (iterations x problems x group) and optimizer steps,
and is measured on the same held-out problems: greedy, pass@8, and the oracle's step
accuracy of its samples (are its steps right, not only its answers?), with wall seconds.

- `outcome GRPO`, `outcome PPO`: the domain's grade at the end only (reward none; credit
  group, or gae with a value head);
- `step-PPO <credit>/<reward>`: step rewards from the PRM (default: the store's latest,
  trained from the policy), the oracle (a ceiling for the PRM) or Monte Carlo values;
  `group-baseline`: credit step without a critic (the group's steps at the same depth);
  `mask`: no policy gradient on a wrong solution's steps after its first one scored wrong
  (`after_error: mask`);
- `RFT`: the same number of samples drawn once from the base policy, the right ones
  deduplicated, fine-tuned for the same optimizer steps;
- `step-DPO`: beam-search trees on the same problems, step pairs by the oracle's labels,
  the same optimizer steps.

    python bench/step_rl.py [--model DIR] [--prm DIR] [--domain arith] [--iterations 20] [--arms A,B]

`--train-problems N --problems N` makes every iteration sample the same N problems: a loop
that works must then raise their right samples (the column "right on train"), whatever it
does on held-out problems (`tests/training/test_step_ppo.py`'s Countdown case and its lr-0
control: `--train-problems 8 --problems 8 --group 8 --iterations 10 --temperature 1
--max-new-tokens 64 --lr 2e-4,0 --arms "step-PPO step/oracle group-baseline"`).
`--curve-every K` logs held-out greedy along training.
`--fresh N` learns on N problems the base never saw (the held-out draw past the measured
problems) instead of the training set, whose written solutions the shipped policies learned.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from bench_common import default_model  # bench/ is on sys.path when a benchmark runs as a script

from qstar_dagster.datasets.build import DatasetSpec, step_pair_rows
from qstar_dagster.evaluation.evaluate import EvalSpec, policy_metrics, sample
from qstar_dagster.generation.base import SamplingParams
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.labeling.oracle import oracle_labels
from qstar_dagster.search.algorithms import SearchSpec, search
from qstar_dagster.search.tree import Tree
from qstar_dagster.search.value import NoValue
from qstar_dagster.tasks.domains import domain
from qstar_dagster.tasks.problem import policy_prompt
from qstar_dagster.tasks.prompt_sets import BUILTIN_PROMPT_SETS, builtin_problems
from qstar_dagster.tasks.steps import step_format
from qstar_dagster.training.base_policy import greedy_accuracy
from qstar_dagster.training.dpo import DPOSpec, train_dpo
from qstar_dagster.training.prm import PRMScorer
from qstar_dagster.training.rft import RFTSpec, train_rft
from qstar_dagster.training.step_ppo import (
    KL_ESTIMATORS,
    SHAPINGS,
    StepPPOSpec,
    iteration_batch,
    mc_scores,
    prm_scores,
    train_step_ppo,
)

SETS = {"arith": ("arith-train", "arith-test"), "countdown": ("countdown-train", "countdown-test")}
PPO_ARMS = {  # name -> (reward, credit, after_error[, baseline of credit step])
    "outcome GRPO": ("none", "group", "keep"),
    "outcome PPO": ("none", "gae", "keep"),
    "step-PPO step/prm": ("prm", "step", "keep"),
    "step-PPO gae/prm": ("prm", "gae", "keep"),
    "step-PPO group/prm": ("prm", "group", "keep"),
    "step-PPO step/oracle": ("oracle", "step", "keep"),
    "step-PPO step/mc": ("mc", "step", "keep"),
    # no policy gradient on a wrong solution's steps after its first one scored wrong
    "step-PPO step/prm mask": ("prm", "step", "mask"),
    "step-PPO group/prm mask": ("prm", "group", "mask"),
    "step-PPO step/oracle mask": ("oracle", "step", "mask"),
    # credit step without a critic: the problem's samples' steps at the same depth are the baseline
    "step-PPO step/prm group-baseline": ("prm", "step", "keep", "group"),
    "step-PPO step/oracle group-baseline": ("oracle", "step", "keep", "group"),
    "step-PPO step/prm group-baseline mask": ("prm", "step", "mask", "group"),
    "step-PPO step/oracle group-baseline mask": ("oracle", "step", "mask", "group"),
}
ARMS = ["base", *PPO_ARMS, "RFT", "step-DPO"]


def default_prm(policy: str) -> str | None:
    """The store's latest PRM trained from `policy` (as left by `make demo`), if any."""
    from qstar_dagster.lineage import LineageStore
    from qstar_dagster.resources import default_store_path

    try:
        store = LineageStore(default_store_path())
        rows = store.records("SELECT c.path FROM checkpoints c JOIN checkpoints b ON b.checkpoint_id = c.base "
                             "WHERE c.kind = 'prm' AND b.path = ? ORDER BY c.created_at DESC", [policy])
        return rows[0]["path"] if rows else None
    except Exception:  # noqa: BLE001 - no store: no default
        return None


def measure(path: str, problems, k: int = 8) -> dict:
    sampled = sample(TransformersGenerator(path), problems, EvalSpec(ns=(k,), max_new_tokens=96))
    m = policy_metrics(sampled, [k])
    verdicts = [v for s in sampled for steps in s.steps if steps and domain(s.problem.domain).has_oracle
                for v in domain(s.problem.domain).oracle(s.problem, steps).labels]
    return {"greedy": m[("greedy", 1)], f"pass_at_{k}": m[("pass", k)],
            "oracle_step_accuracy": sum(verdicts) / len(verdicts) if verdicts else None}


def choices(path: str, problems) -> dict:
    """Countdown: how the policy chooses its next step along the written solutions
    (`bench/choice_fit.py`): the probability on moves that keep the target in reach."""
    from choice_fit import choice_fit
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return choice_fit(AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), problems)


def rft_rows(policy: str, problems, n: int, temperature: float) -> tuple[list[dict], int]:
    out = TransformersGenerator(policy).generate([policy_prompt(p.problem) for p in problems],
                                                 SamplingParams(n=n, temperature=temperature, max_new_tokens=96))
    rows = {(policy_prompt(p.problem), c.text.strip()) for p, cs in zip(problems, out) for c in cs
            if domain(p.domain).grade(p, c.text)[1]}
    return [{"prompt": q, "completion": a} for q, a in sorted(rows)], sum(c.n_tokens for cs in out for c in cs)


def step_dpo_rows(policy: str, problems) -> tuple[list[dict], int]:
    spec = SearchSpec(algorithm="beam", k=4, beam_width=4, value="none")
    trees = [Tree(f"t{i}", p, policy_prompt(p.problem), step_format(p.domain), spec.max_depth)
             for i, p in enumerate(problems)]
    search(trees, spec, TransformersGenerator(policy), NoValue(), seed=0)
    hard = {n: prefix_ok for n, (_, prefix_ok) in oracle_labels(trees).items()}
    return step_pair_rows(trees, hard, DatasetSpec(kind="step_pairs")), sum(t.generated_tokens for t in trees)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="base policy directory (default: the demo's)")
    ap.add_argument("--prm", help="PRM directory for the prm arms (default: the store's latest from the policy)")
    ap.add_argument("--domain", choices=sorted(SETS), default="arith")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--problems", type=int, default=32, help="problems per iteration")
    ap.add_argument("--group", type=int, default=4, help="samples per problem")
    ap.add_argument("--minibatch", type=int, default=StepPPOSpec().minibatch_size, help="sequences per optimizer step")
    ap.add_argument("--epochs", type=int, default=StepPPOSpec().ppo_epochs, help="PPO passes over each iteration's samples")
    ap.add_argument("--adam-eps", type=float, default=StepPPOSpec().adam_eps, help="the PPO arms' AdamW epsilon")
    ap.add_argument("--kl-estimator", choices=KL_ESTIMATORS, default=StepPPOSpec().kl_estimator,
                    help="the PPO arms' KL penalty term (StepPPOSpec.kl_estimator)")
    ap.add_argument("--lr", default=str(StepPPOSpec().lr),
                    help="the PPO arms' learning rate; a comma-separated list runs each PPO arm at each (a sweep)")
    ap.add_argument("--test", type=int, default=200,
                    help="held-out problems (beyond the built-in held-out set's size: more of the same draw)")
    ap.add_argument("--train-problems", type=int, default=0,
                    help="learn on the first N training problems only (0: all); with N = --problems every "
                         "iteration samples the same problems, so 'right on train' shows whether the loop fits them")
    ap.add_argument("--fresh", type=int, default=0,
                    help="learn on N problems the base never saw instead: the held-out set's draw past the --test "
                         "problems measured (disjoint from both; the shipped policies learned the whole training "
                         "set, so its problems are ones they have seen solved)")
    ap.add_argument("--fit", type=int, default=0,
                    help="also measure each arm on N of the problems it learns on (a seeded draw): does the "
                         "policy fit its own training problems, or only as well as new ones? (0: not measured)")
    ap.add_argument("--choices", action="store_true",
                    help="Countdown: also measure each arm's choice of the next step along the held-out problems' "
                         "written solutions (bench/choice_fit.py): the probability on moves that keep the target "
                         "in reach, first steps and all")
    ap.add_argument("--arms", help=f"comma-separated subset of: {', '.join(ARMS)}")
    ap.add_argument("--kl-coef", type=float, default=StepPPOSpec().kl_coef,
                    help="the PPO arms' KL penalty weight against the starting policy")
    ap.add_argument("--rft-epochs", type=float, default=0.0,
                    help="RFT: this many passes over its rows instead of the PPO arms' optimizer steps (a "
                         "diagnostic of how much of RFT's gain is repetition; 0: the same steps)")
    ap.add_argument("--sft-coef", type=float, default=StepPPOSpec().sft_coef,
                    help="the PPO arms' supervised term: weight of the NLL of each iteration's right samples")
    ap.add_argument("--shaping", choices=SHAPINGS, default=StepPPOSpec().shaping,
                    help="the PPO arms' step-reward shaping (StepPPOSpec.shaping)")
    ap.add_argument("--lam", type=float, default=StepPPOSpec().lam, help="GAE's lambda (credit gae)")
    ap.add_argument("--vf-lr", type=float, default=StepPPOSpec().vf_lr, help="the value head's lr (0: the PPO lr)")
    ap.add_argument("--curve-every", type=int, default=0,
                    help="PPO arms: held-out greedy on the first 100 --test problems every N iterations (0: none)")
    ap.add_argument("--temperature", default=str(StepPPOSpec().temperature),
                    help="the PPO arms' sampling temperature; a comma-separated list runs each PPO arm at each "
                         "(at a lower one the samples, and so the objective, sit nearer the greedy decode)")
    ap.add_argument("--max-new-tokens", type=int, default=StepPPOSpec().max_new_tokens,
                    help="the PPO arms' tokens per solution")
    ap.add_argument("--seed", default=str(StepPPOSpec().seed),
                    help="the trained arms' seed (problems, samples); a comma-separated list runs each arm at each "
                         "and adds the arm's mean over them (the seed moves an arm by more than 200 problems' noise)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # each PPO iteration's line (reward, oracle step accuracy, samples right, KL) on stderr, and
    # the RFT and DPO trainers' progress lines (step, loss, rate, ETA)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("qstar_dagster.training").setLevel(logging.INFO)
    policy = args.model or default_model()
    prm = args.prm or default_prm(policy)
    arms = [a.strip() for a in args.arms.split(",")] if args.arms else ARMS
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise SystemExit(f"--arms: unknown {', '.join(sorted(unknown))}; choose from {', '.join(ARMS)}")
    if prm is None:
        arms = [a for a in arms if not a.endswith("/prm")]
        print("no PRM (pass --prm, or run make demo): the prm arms are left out")
    if args.choices and args.domain != "countdown":
        raise SystemExit("--choices measures Countdown's moves; pass --domain countdown or leave it out")
    train_set, test_set = SETS[args.domain]
    train = builtin_problems(train_set)
    drawn = builtin_problems(test_set, n=max(args.test + args.fresh, BUILTIN_PROMPT_SETS[test_set].n))
    test = drawn[: args.test]
    if args.fresh:  # the held-out draw is the same for any n, so these follow the measured ones
        train = drawn[args.test: args.test + args.fresh]
    if args.train_problems:
        train = train[: args.train_problems]
    fit = random.Random(0).sample(train, min(args.fit, len(train))) if args.fit else []
    lrs = [float(x) for x in args.lr.split(",")]
    temperatures = [float(x) for x in args.temperature.split(",")]
    seeds = [int(x) for x in args.seed.split(",")]
    base_spec = StepPPOSpec(iterations=args.iterations, problems_per_iteration=args.problems, group_size=args.group,
                            lr=lrs[0], minibatch_size=args.minibatch, ppo_epochs=args.epochs,
                            adam_eps=args.adam_eps, kl_estimator=args.kl_estimator, kl_coef=args.kl_coef,
                            sft_coef=args.sft_coef, shaping=args.shaping, lam=args.lam, vf_lr=args.vf_lr,
                            seed=seeds[0], temperature=temperatures[0], max_new_tokens=args.max_new_tokens,
                            eval_every=args.curve_every)
    per_iteration = math.ceil(args.problems * args.group / base_spec.minibatch_size) * base_spec.ppo_epochs
    opt_steps, samples = args.iterations * per_iteration, args.iterations * args.problems * args.group
    by_text = {p.problem: p for p in train}

    def offline_problems(seed: int) -> list:
        """The problems the PPO arms of `seed` see (the same seeded draws), for the offline arms."""
        seeded = replace(base_spec, seed=seed)
        seen = dict.fromkeys(p.problem for it in range(1, args.iterations + 1)
                             for p in iteration_batch(train, seeded, it))
        return [by_text[t] for t in seen]

    figures: dict[str, dict] = {}
    work = Path(tempfile.mkdtemp(prefix="step_rl-"))

    def run_name(arm: str, lr: float, temperature: float, seed: int | None) -> str:
        """The arm's name in the tables; seed None: its mean over the seeds."""
        return (arm + (f" lr {lr:g}" if len(lrs) > 1 and arm in PPO_ARMS else "")
                + (f" T {temperature:g}" if len(temperatures) > 1 and arm in PPO_ARMS else "")
                + (f" seed {seed}" if seed is not None and len(seeds) > 1 and arm != "base" else ""))

    def settings(arm: str) -> list[tuple[float, float]]:
        """The (lr, temperature) pairs an arm runs at: the sweeps apply to the PPO arms."""
        return [(lr, t) for lr in lrs for t in temperatures] if arm in PPO_ARMS else [(lrs[0], temperatures[0])]

    runs = [(run_name(a, lr, t, seed), a, lr, t, seed) for a in arms for lr, t in settings(a)
            for seed in (seeds if a != "base" else seeds[:1])]
    for name, arm, lr, temperature, seed in runs:
        started = time.monotonic()
        out = work / name.replace(" ", "_").replace("/", "_")
        info: dict = {}
        if arm == "base":
            path = policy
        elif arm in PPO_ARMS:
            reward, credit, after_error, *baseline = PPO_ARMS[arm]
            spec = replace(base_spec, reward=reward, credit=credit, after_error=after_error, lr=lr, seed=seed,
                           temperature=temperature, baseline=baseline[0] if baseline else base_spec.baseline)
            score = {"prm": lambda: prm_scores(PRMScorer(prm)), "mc": lambda: mc_scores(4, 0.7, 96)}.get(
                reward, lambda: None)()
            summary = train_step_ppo(policy, train, out, spec, score=score,
                                     evaluate=(lambda m, t: greedy_accuracy(TransformersGenerator(m, t), test[:100]))
                                     if args.curve_every else None)
            right = [v for _, v in summary["curves"]["sample_accuracy"]]  # the training problems' right samples
            info = {"sampled_tokens": summary["sampled_tokens"], "final_kl": round(summary["final_kl"], 4),
                    "train_oracle_step_accuracy": summary["final_oracle_step_accuracy"],
                    "train_right_first_10": sum(right[:10]) / len(right[:10]),
                    "train_right_last_10": sum(right[-10:]) / len(right[-10:]),
                    "heldout_curve": summary["curves"]["heldout_greedy"],
                    "value_explained_last": summary["curves"]["value_explained"][-1][1] if spec.needs_critic else None}
            path = str(out)
        else:  # the offline arms: a dataset from the same problems, then the same optimizer steps
            offline = offline_problems(seed)
            if arm == "RFT":
                rows, tokens = rft_rows(policy, offline, max(1, samples // len(offline)), 0.7)
            else:
                rows, tokens = step_dpo_rows(policy, offline)
            info, path = {"sampled_tokens": tokens, "rows": len(rows)}, str(out)
            if not rows:  # nothing to learn from: the base policy is what this arm ends with
                path = policy
            elif arm == "RFT":
                steps = (math.ceil(args.rft_epochs * len(rows) / base_spec.minibatch_size) if args.rft_epochs
                         else opt_steps)
                info["optimizer_steps"] = steps
                train_rft(policy, rows, out, RFTSpec(steps=steps, batch_size=base_spec.minibatch_size))
            else:
                train_dpo(policy, rows, out, DPOSpec(steps=opt_steps),
                          completion_end=step_format(offline[0].domain).separator)
        train_s = time.monotonic() - started
        figures[name] = {**measure(path, test), **info, "train_seconds": round(train_s, 1)}
        f = figures[name]
        if args.choices:
            f["choices"] = choices(path, test)
            print(f"{name}: probability on next steps that keep the target in reach, first / all steps "
                  f"{f['choices']['first']['keep_mass']:.1%} / {f['choices']['all']['keep_mass']:.1%} "
                  f"(a legal move at random {f['choices']['first']['uniform_keep']:.1%} / "
                  f"{f['choices']['all']['uniform_keep']:.1%})", flush=True)
        if fit:
            f["on_train"] = measure(path, fit)
            print(f"{name}: on {len(fit)} of its training problems greedy {f['on_train']['greedy']:.1%}, pass@8 "
                  f"{f['on_train']['pass_at_8']:.1%}", flush=True)
        if f.get("heldout_curve"):
            print(f"{name}: held-out greedy along training (first 100 problems): "
                  + ", ".join(f"{it}: {g:.0%}" for it, g in f["heldout_curve"]), flush=True)
        print(f"{name}: greedy {f['greedy']:.1%}, pass@8 {f['pass_at_8']:.1%}, oracle step accuracy "
              f"{f['oracle_step_accuracy']:.1%} ({train_s:.0f}s)", flush=True)

    print(f"\n{args.domain}: {args.test} held-out problems of {test_set}; every trained arm: {samples} sampled "
          f"solutions' budget, {opt_steps} optimizer steps (PPO lr {args.lr}, T {args.temperature})")
    print(f"{'arm':48}{'greedy':>9}{'pass@8':>9}{'step acc':>10}{'tokens':>10}{'train s':>9}"
          f"{'right on train, first/last 10 it.':>36}" + (f"{'greedy, train':>15}" if fit else "")
          + (f"{'in reach, 1st':>15}" if args.choices else ""))
    for arm, f in figures.items():
        trend = (f"{f['train_right_first_10']:.1%} -> {f['train_right_last_10']:.1%}"
                 if "train_right_first_10" in f else "")
        print(f"{arm:48}{f['greedy']:>9.1%}{f['pass_at_8']:>9.1%}{f['oracle_step_accuracy'] or 0:>10.1%}"
              f"{f.get('sampled_tokens', 0):>10}{f['train_seconds']:>9.0f}{trend:>36}"
              + (f"{f['on_train']['greedy']:>15.1%}" if fit else "")
              + (f"{f['choices']['first']['keep_mass']:>15.1%}" if args.choices else ""))
    print(f"(the trained arms' policies are kept in {work})")
    means = {}
    if len(seeds) > 1:  # each trained arm over its seeds
        for arm in (a for a in arms if a != "base"):
            for lr, t in settings(arm):
                runs_of = [figures[run_name(arm, lr, t, seed)] for seed in seeds]
                means[run_name(arm, lr, t, None)] = {
                    key: sum(f[key] or 0 for f in runs_of) / len(runs_of)
                    for key in ("greedy", "pass_at_8", "oracle_step_accuracy")} | {
                    "greedy_per_seed": [f["greedy"] for f in runs_of]}
        print(f"\nmean over seeds {args.seed}")
        print(f"{'arm':48}{'greedy':>9}{'pass@8':>9}{'step acc':>10}   greedy per seed")
        for arm, m in means.items():
            print(f"{arm:48}{m['greedy']:>9.1%}{m['pass_at_8']:>9.1%}{m['oracle_step_accuracy']:>10.1%}   "
                  + " / ".join(f"{g:.1%}" for g in m["greedy_per_seed"]))
    print(json.dumps({"bench": "step_rl", "machine": platform.machine(), "threads": args.threads,
                      "domain": args.domain, "policy": policy, "prm": prm, "iterations": args.iterations,
                      "problems": args.problems, "group": args.group, "lr": lrs, "temperature": temperatures,
                      "adam_eps": args.adam_eps,
                      "kl_estimator": args.kl_estimator, "kl_coef": args.kl_coef,
                      "sft_coef": args.sft_coef, "shaping": args.shaping, "rft_epochs": args.rft_epochs,
                      "lam": args.lam, "vf_lr": args.vf_lr,
                      "train_problems": args.train_problems or len(train), "fresh": args.fresh, "fit": len(fit),
                      "seed": args.seed, "optimizer_steps": opt_steps,
                      "arms": figures, "means_over_seeds": means}))


if __name__ == "__main__":
    main()
