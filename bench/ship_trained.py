"""Ship a model that a bench trained into the package, with its manifest: a base policy that
bench/base_plateau.py trained (the base_policy asset's trainer on the built-in training set,
with the domain's defaults), or, with `--role verifier`, a verifier backbone (written beside
it as `<domain>-verifier`) that bench/verifier_backbone.py continued from the shipped policy
or that bench/base_plateau.py trained from scratch on reference solutions alone
(`--practice 0`). This is how the shipped models were written; a policy's asset path is
`qstar ship-policy --domain D`.

    python bench/ship_trained.py arith /tmp/plateau/arith_max_operand=99_max_multiplier=9-3000 3000 \
        "how it was trained" '{"greedy": 0.625, ...}'
    python bench/ship_trained.py --role verifier arith /tmp/verifiers/arith-lr0.001-s1-1500-lr0.001-s1-1500 \
        1500,1500 "how it was trained" '{"greedy": 0.81, ...}'
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from qstar_dagster.lineage.store import prompt_set_version
from qstar_dagster.tasks.problem import DEFAULT_PROMPT_TEMPLATE
from qstar_dagster.tasks.prompt_sets import DOMAIN_SETS, builtin_problems
from qstar_dagster.training.base_policy import BasePolicyConfig
from qstar_dagster.training.checkpoints import read_summary
from qstar_dagster.training.shipped import ROLES, SHIPPED_ROOT, write_shipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", choices=ROLES, default="policy")
    ap.add_argument("domain", choices=sorted(DOMAIN_SETS))
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("steps", help="its training steps; a verifier's schedules, comma-separated (1500,1500: two "
                    "warm-up + cosine schedules of 1,500 steps, the second from the first's end)")
    ap.add_argument("trained_by", help="one sentence: what trained it, with which command")
    ap.add_argument("metrics", help="its figures, a JSON object")
    ap.add_argument("--continued-from", default=None, help="a verifier: what its training continued (default: "
                    "the shipped policy of the domain; none for one trained from scratch)")
    ap.add_argument("--half", action="store_true", help="store the weights in float16 (loaded in float32)")
    args = ap.parse_args()
    train_set, _ = DOMAIN_SETS[args.domain]
    schedules = [int(n) for n in args.steps.split(",")]
    summary = read_summary(args.model_dir) or {}
    if args.role == "policy":  # the config the bench trained it with (older summaries: the defaults, its schedule)
        trained = summary.get("config") or asdict(BasePolicyConfig(steps=sum(schedules), eval_every=250))
        config = {**trained, "template": DEFAULT_PROMPT_TEMPLATE, "architecture": "char-llama"}
    elif "config" in summary:  # a verifier the base policy's trainer made from scratch (bench/base_plateau.py)
        config = {**summary["config"], "continued_from": args.continued_from,
                  "template": DEFAULT_PROMPT_TEMPLATE, "architecture": "char-llama"}
    else:  # a verifier continued from the shipped policy (bench/verifier_backbone.py's loop)
        config = {"continued_from": args.continued_from or f"the shipped {args.domain} policy", "steps": sum(schedules),
                  "schedules": schedules, "lr": summary["lr"], "seed": summary["seed"], "batch_size": 64,
                  "warmup": 100, "template": DEFAULT_PROMPT_TEMPLATE, "architecture": "char-llama"}
    dest = SHIPPED_ROOT / (args.domain if args.role == "policy" else f"{args.domain}-verifier")
    shipped = write_shipped(args.model_dir, dest, domain=args.domain, train_prompt_set=train_set,
                            train_version=prompt_set_version(builtin_problems(train_set)), config=config,
                            metrics=json.loads(args.metrics), trained_by=args.trained_by, role=args.role,
                            half=args.half)
    print(json.dumps({"shipped": str(shipped.path), "role": shipped.role, "version": shipped.train_version,
                      "bytes": sum((shipped.path / f).stat().st_size for f in shipped.files)}))


if __name__ == "__main__":
    main()
