"""Ship a policy that bench/base_plateau.py trained (the base_policy asset's trainer on the
built-in training set, as the asset trains it with the domain's defaults) into the package,
with its manifest. This is how the shipped policies of 2 December 2026 were written; the
asset's own path is `qstar ship-policy --domain D`.

    python bench/ship_trained.py arith /tmp/plateau/arith_max_operand=99_max_multiplier=9-3000 3000 \
        "how it was trained" '{"greedy": 0.625, ...}'
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from qstar_dagster.lineage.store import prompt_set_version
from qstar_dagster.tasks.problem import DEFAULT_PROMPT_TEMPLATE
from qstar_dagster.tasks.prompt_sets import DOMAIN_SETS, builtin_problems
from qstar_dagster.training.base_policy import BasePolicyConfig
from qstar_dagster.training.shipped import SHIPPED_ROOT, write_shipped


def main() -> None:
    domain, model_dir, steps, trained_by, metrics = sys.argv[1:6]
    train_set, _ = DOMAIN_SETS[domain]
    # the bench's config: the asset's defaults with its schedule and curve interval
    config = {**asdict(BasePolicyConfig(steps=int(steps), eval_every=250)), "template": DEFAULT_PROMPT_TEMPLATE,
              "architecture": "char-llama"}
    shipped = write_shipped(Path(model_dir), SHIPPED_ROOT / domain, domain=domain, train_prompt_set=train_set,
                            train_version=prompt_set_version(builtin_problems(train_set)), config=config,
                            metrics=json.loads(metrics), trained_by=trained_by)
    print(json.dumps({"shipped": str(shipped.path), "version": shipped.train_version,
                      "bytes": sum((shipped.path / f).stat().st_size for f in shipped.files)}))


if __name__ == "__main__":
    main()
