"""Experiment: round 1 of the loop, through the pipeline, from a base policy with something left
to learn. (Not a speed benchmark.)

`bench/step_rl.py` measured step-PPO's gain from a policy that learned the written solutions
of only 2,000 training problems, with the demo's PRM and offline arms of its own. This runs
the same comparison the way a researcher would: the Dagster assets, in a data directory of
their own, one run of the round job:

1. the prompt sets (the held-out one with `--test` problems, for a tighter measurement);
2. `base_policy` trained from scratch on the first `--references` training problems'
   written solutions (`shipped: false`, `--base-config`);
3. round 1 (`expert_iteration_round`): rollouts of `--train-problems` training problems
   *after* the ones the base learned by heart (`skip_problems`), step labels (`--labeler`),
   datasets, the round's PRM, RFT and step-DPO on the round's datasets, step-PPO with the
   round's PRM (`--step-ppo`), and the round's evaluation of every checkpoint.

It prints `qstar report`'s table and each trained policy against the base side by side; the
last line is one JSON object. One domain per run; a re-run in the same `--home` trains
nothing again (the assets' ids), so a killed run resumes.

    python bench/round_gain.py --domain countdown --home /tmp/rg-countdown [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

# Per domain: the base policy of bench/step_rl.py's data-limited measurements (README, Training)
# and the step-PPO budget that gained +5 there (arithmetic at 300 iterations, Countdown at 600).
BASES = {"arith": {"steps": 4000, "hidden": 64}, "countdown": {"steps": 3000, "hidden": 64}}
STEP_PPO = {"arith": {"iterations": 300}, "countdown": {"iterations": 600}}
STEP_PPO_COMMON = {"problems_per_iteration": 64, "baseline": "group", "eval_every": 100}
# The round's evaluation measures every checkpoint, so the training assets skip their own look.
NO_OWN_LOOK = {"measure": False}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domain", choices=sorted(BASES), required=True)
    ap.add_argument("--home", type=Path, required=True, help="data directory of this run (QSTAR_HOME)")
    ap.add_argument("--references", type=int, default=2000, help="training problems whose written solutions the "
                    "base policy learns")
    ap.add_argument("--base-config", help="JSON overrides of base_policy's config (default: the domain's in BASES)")
    ap.add_argument("--train-problems", type=int, default=1024, help="training problems the round searches")
    ap.add_argument("--labeler", default="mc", help="the round's step labeler: mc (the round's default; binary "
                    "search labels finished solutions only, which leaves step-DPO few pairs) or binary_search")
    ap.add_argument("--step-ppo", help="JSON overrides of step_ppo_policy's config")
    ap.add_argument("--test", type=int, default=1000, help="held-out problems (the built-in set's first N)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    os.environ["QSTAR_HOME"] = str(args.home)
    import torch

    torch.set_num_threads(args.threads)
    from qstar_dagster.assets.rollouts import RolloutsConfig
    from qstar_dagster.cli import prepare_instance
    from qstar_dagster.definitions import make_definitions
    from qstar_dagster.evaluation.report import render, report
    from qstar_dagster.lineage import LineageStore
    from qstar_dagster.resources import default_store_path
    from qstar_dagster.rounds import ROUND_JOB, RoundSpec, make_executor, run_round
    from qstar_dagster.search.rollouts import skip_past
    from qstar_dagster.tasks.prompt_sets import DOMAIN_SETS

    train_set, test_set = DOMAIN_SETS[args.domain]
    args.home.mkdir(parents=True, exist_ok=True)
    defs, instance = make_definitions(str(args.home)), prepare_instance(args.home)
    execute = make_executor(defs.resolve_job_def, instance)
    started, seconds = time.monotonic(), {}

    execute("embedded_pipeline", f"prompt set {train_set}", train_set, "prompt_set", None)
    execute("embedded_pipeline", f"prompt set {test_set}", test_set, "prompt_set", {"n": args.test})
    given = json.loads(args.base_config or "{}")
    shipped = bool(given.get("shipped"))  # then the from-scratch settings do not apply, and are not recorded
    defaults = {} if shipped else {"shipped": False, "references": args.references, **BASES[args.domain]}
    base_config = {**defaults, **given, "train_prompt_set": train_set, "eval_prompt_set": test_set}
    t = time.monotonic()
    base = execute("base_policy_job", "the shipped base policy" if shipped else
                   f"base policy from {args.references} written solutions", None, "base_policy", base_config)
    seconds["base_policy"] = time.monotonic() - t

    batch = RolloutsConfig.model_fields["batch_size"].default  # the window starts on a batch boundary
    skip = skip_past(args.references, batch)  # with a shipped base too, so its rounds' windows stay where they were
    step_ppo = {**STEP_PPO_COMMON, **STEP_PPO[args.domain], **json.loads(args.step_ppo or "{}"), **NO_OWN_LOOK}
    spec = RoundSpec(round=1, train_set=train_set, test_set=test_set, train_problems=args.train_problems,
                     rollouts={"skip_problems": skip, "batch_size": batch}, labeler=args.labeler,
                     training={"prm_model": NO_OWN_LOOK, "rft_policy": NO_OWN_LOOK, "dpo_policy": NO_OWN_LOOK,
                               "step_ppo_policy": step_ppo},
                     evaluation={"ns": [1, 2, 4, 8]})
    store = LineageStore(default_store_path())
    t = time.monotonic()
    done = run_round(store, defs.resolve_job_def(ROUND_JOB), instance, spec)
    seconds["round"] = time.monotonic() - t

    r = report(store, test_set)
    print("\n" + render(r))
    base_greedy = r["base_greedy"]
    learned = ("the shipped base, which learned the whole training set" if shipped
               else f"a base that learned {args.references} written solutions")
    print(f"\n{args.domain}: round 1 from {learned} ({base['checkpoint_id']}); {args.test} held-out problems of "
          f"{test_set}")
    print("| policy | greedy | vs the base (points) | pass@8 | PRM best-of-8 |")
    print("|---|---|---|---|---|")

    def pct(v, spec=".1%"):  # a stage with nothing to learn from (no right solution) trains no checkpoint
        return "–" if v is None else format(v, spec)

    for prefix, name in (("base", "base"), ("round1", "RFT"), ("round1_dpo", "step-DPO"),
                         ("round1_step_ppo", "step-PPO")):
        g = r.get(f"{prefix}_greedy")
        print(f"| {name} | {pct(g)} | {pct(None if g is None else 100 * (g - base_greedy), '+.1f')} | "
              f"{pct(r.get(f'{prefix}_pass_at_8'))} | {pct(r.get(f'{prefix}_prm_best_of_8'))} |")
    datasets = {k: v for k, v in done["datasets"].items() if k.endswith("_rows")}  # the round's dataset sizes
    print(json.dumps({"domain": args.domain, "references": None if shipped else args.references,
                      "train_problems": args.train_problems,
                      "skip_problems": skip, "labeler": args.labeler, "test": args.test, "base_config": base_config,
                      "step_ppo": step_ppo, "report": r, "datasets": datasets, "run_id": done["run_id"],
                      "seconds": {k: round(v, 1) for k, v in seconds.items()},
                      "wall_s": round(time.monotonic() - started, 1), "threads": args.threads,
                      "machine": platform.machine()}, default=str))


if __name__ == "__main__":
    main()
