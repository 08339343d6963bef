"""Expert iteration: one round of the factory's loop, as a sequence of asset materializations.

Round k samples rollouts on the training prompt set with round k-1's policy (round 0: the
base policy), guided by round k-1's PRM when there is one; labels them (Math-Shepherd Monte
Carlo by default, or binary search: it agrees with the oracle more for a fraction of the
tokens, but labels only each finished solution's path up to its first error, so the datasets
come out several times smaller and with almost no step pairs); builds the datasets; trains
round k's PRM, RFT policy and DPO policy from round k-1's policy; and evaluates every
checkpoint on the held-out set. Which round an artifact belongs to is read off the
checkpoint chain (the store's `rounds` view).

The stages have different partitionings (rollouts, labels and datasets per prompt set;
checkpoints and evaluation not), which one Dagster asset job cannot hold, so a round runs
them in order through `execute` (the CLI's in-process runner, or the `expert_iteration_round`
job's op); each stage is a run of its own in the instance, with its logs and metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from qstar_dagster.labeling import binary_search, montecarlo
from qstar_dagster.lineage.artifacts import trained_from
from qstar_dagster.lineage.store import LineageStore
from qstar_dagster.spec import option

# execute(job name, what (for the log), partition key, asset, config) -> the asset's metadata
Execute = Callable[[str, str, str | None, str, dict | None], dict]

TRAINING_ASSETS = ("prm_model", "rft_policy", "dpo_policy")


# the mc_labels asset's methods (the labeling pipeline's MC_METHODS, whose import loads torch)
ROUND_LABELERS = (montecarlo.LABELER, binary_search.LABELER)


@dataclass(frozen=True)
class RoundSpec:
    round: int = option(1, "round to run; round k uses round k-1's policy and PRM")
    train_set: str = option("arith-train", "prompt set the round samples, labels and trains on")
    test_set: str = option("arith-test", "held-out prompt set the round is evaluated on")
    train_problems: int = option(384, "rollouts on the first n training problems")
    rollouts: dict = field(default_factory=dict)  # tot_rollouts config overrides
    labeler: str = option("mc", f"{' or '.join(ROUND_LABELERS)}: whose step labels the PRM and the step pairs "
                          "learn from")
    labels: dict = field(default_factory=dict)  # mc_labels config overrides
    training: dict = field(default_factory=dict)  # asset name -> config overrides
    evaluation: dict | None = field(default_factory=dict)  # evaluation config overrides; None: no evaluation

    def __post_init__(self) -> None:
        if self.labeler not in ROUND_LABELERS:
            raise ValueError(f"a round labels its rollouts with {' or '.join(ROUND_LABELERS)}, got labeler "
                             f"{self.labeler!r}; other labelers' datasets can be built with step_datasets directly")


def round_policy(store: LineageStore, k: int) -> tuple[str, str | None]:
    """(round k's policy, round k's PRM): round 0 is the base policy and no PRM; round k >= 1
    the latest RFT policy and PRM trained from round k-1's policy."""
    if k == 0:
        return store.checkpoint(None, "policy")["checkpoint_id"], None
    previous, _ = round_policy(store, k - 1)
    found = trained_from(store, previous)
    if "rft" not in found:
        raise LookupError(f"round {k} has no RFT policy yet; run round {k} first (qstar round --round {k})")
    return found["rft"], found.get("prm")


def run_round(store: LineageStore, execute: Execute, spec: RoundSpec) -> dict:
    """Run round `spec.round` (rounds before it must exist). Returns each stage's metadata."""
    if spec.round < 1:
        raise ValueError(f"rounds are numbered from 1, got {spec.round}")
    policy, prm = round_policy(store, spec.round - 1)
    guided = {"value": "prm", "prm_checkpoint": prm} if prm else {}
    out = {"round": spec.round, "policy": policy, "prm": prm}
    tag = f"round {spec.round}"
    out["rollouts"] = execute("embedded_pipeline", f"{tag}: rollouts on {spec.train_set} by {policy}"
                              f"{f', guided by {prm}' if prm else ''}", spec.train_set, "tot_rollouts",
                              {"max_problems": spec.train_problems, "policy_checkpoint": policy, **guided,
                               **spec.rollouts})
    rollout = out["rollouts"]["rollout_id"]
    out["labels"] = execute("embedded_pipeline", f"{tag}: {spec.labeler} labels", spec.train_set, "mc_labels",
                            {"rollout_id": rollout, "methods": [spec.labeler], **spec.labels})
    out["datasets"] = execute("embedded_pipeline", f"{tag}: datasets", spec.train_set, "step_datasets",
                              {"rollout_id": rollout, "labeler": spec.labeler})
    for asset in TRAINING_ASSETS:
        labeled = {"labeler": spec.labeler} if asset in ("prm_model", "dpo_policy") else {}  # rft needs no labels
        out[asset] = execute("training_job", f"{tag}: {asset}", None, asset,
                             {"train_prompt_set": spec.train_set, "eval_prompt_set": spec.test_set,
                              "base_checkpoint": policy, "rollout_id": rollout, **labeled,
                              **spec.training.get(asset, {})})
    if spec.evaluation is not None:
        out["evaluation"] = execute("evaluation_job", f"{tag}: evaluation on {spec.test_set}", None, "evaluation",
                                    {"eval_prompt_set": spec.test_set, **spec.evaluation})
    return out


class StageFailed(RuntimeError):
    pass


def make_executor(job_def: Callable[[str], object], instance, echo: Callable[[str], None] = print,
                  log_level: str = "INFO") -> Execute:
    """An `Execute` that runs each stage in process against `instance`, as its own run.
    `job_def(name)`: the job of that name (`Definitions.resolve_job_def`, or an op's
    `context.repository_def.get_job`: the code location's jobs with its resources)."""
    from dagster import AssetKey

    def execute(job_name: str, what: str, partition_key: str | None, asset: str, config: dict | None) -> dict:
        echo(f"== {what}")
        ops = {asset: {"config": config}} if config else {}
        result = job_def(job_name).execute_in_process(
            instance=instance, partition_key=partition_key, raise_on_error=False, asset_selection=[AssetKey(asset)],
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}}, "ops": ops})
        if not result.success:
            raise StageFailed(f"run {result.run_id} ({what}) failed; see its logs above or in the Dagster UI")
        return {k: v.value for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()}

    return execute
