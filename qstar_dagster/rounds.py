"""Expert iteration: one round of the factory's loop is one run of the `expert_iteration_round`
job, partitioned by the training prompt set and tagged with the round number.

Round k samples rollouts on the training prompt set with round k-1's policy (round 0: the
base policy), guided by round k-1's PRM when there is one; labels them (Math-Shepherd Monte
Carlo by default, or binary search: it agrees with the oracle more for a fraction of the
tokens, but labels only each finished solution's path up to its first error, so the datasets
come out several times smaller and with almost no step pairs); builds the datasets; trains
round k's PRM, RFT policy and DPO policy from round k-1's policy, then step-PPO from the same
policy with the new PRM's step scores as rewards; and evaluates the training
set's checkpoints on the held-out set. Every asset of the run is a materialization of the
`train_set` partition, so the UI shows a round as one run and the asset graph shows what each
stage was built from; which round an artifact belongs to is read off the checkpoint chain
(the store's `rounds` view), and the run's `qstar/round` tag says which round it ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qstar_dagster.labeling import binary_search, montecarlo
from qstar_dagster.lineage.artifacts import trained_from
from qstar_dagster.lineage.store import LineageStore
from qstar_dagster.spec import option

ROUND_JOB = "expert_iteration_round"
ROUND_TAG = "qstar/round"
# the round's assets in the order they run, and the name each one's metadata has in a round's result
ROUND_ASSETS = {"tot_rollouts": "rollouts", "mc_labels": "labels", "step_datasets": "datasets",
                "prm_model": "prm_model", "rft_policy": "rft_policy", "dpo_policy": "dpo_policy",
                "step_ppo_policy": "step_ppo_policy", "evaluation": "evaluation"}
TRAINING_ASSETS = ("prm_model", "rft_policy", "dpo_policy", "step_ppo_policy")

# the mc_labels asset's methods (the labeling pipeline's MC_METHODS, whose import loads torch)
ROUND_LABELERS = (montecarlo.LABELER, binary_search.LABELER)


@dataclass(frozen=True)
class RoundSpec:
    round: int = option(1, "round to run; round k uses round k-1's policy and PRM")
    train_set: str = option("arith-train", "prompt set the round samples, labels and trains on (the run's partition)")
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
        if self.round < 1:
            raise ValueError(f"rounds are numbered from 1, got {self.round}")
        unknown = set(self.training) - set(TRAINING_ASSETS)
        if unknown:
            raise ValueError(f"a round's training overrides are keyed by {', '.join(TRAINING_ASSETS)}; got "
                             f"{', '.join(sorted(unknown))}")


def round_policy(store: LineageStore, k: int, train_set: str | None = None) -> tuple[str, str | None]:
    """(round k's policy, round k's PRM): round 0 is the base policy (of `train_set`'s domain)
    and no PRM; round k >= 1 the latest RFT policy and PRM trained from round k-1's policy."""
    if k == 0:
        return store.checkpoint(None, "policy", prompt_set=train_set)["checkpoint_id"], None
    previous, _ = round_policy(store, k - 1, train_set)
    found = trained_from(store, previous)
    if "rft" not in found:
        raise LookupError(f"round {k} has no RFT policy yet; run round {k} first (qstar round --round {k})")
    return found["rft"], found.get("prm")


@dataclass(frozen=True)
class RoundRun:
    """What one run of the round job needs: its partition, tags, asset selection and config
    (round k-1's checkpoints resolved to ids, so the run's config says what it started from)."""
    partition: str
    tags: dict[str, str]
    assets: tuple[str, ...]
    run_config: dict
    policy: str
    prm: str | None


def plan_round(store: LineageStore, spec: RoundSpec) -> RoundRun:
    """The run of round `spec.round` (the rounds before it must exist)."""
    policy, prm = round_policy(store, spec.round - 1, spec.train_set)
    guided = {"value": "prm", "prm_checkpoint": prm} if prm else {}
    config = {
        "tot_rollouts": {"max_problems": spec.train_problems, "policy_checkpoint": policy, **guided, **spec.rollouts},
        "mc_labels": {"methods": [spec.labeler], **spec.labels},
        "step_datasets": {"labeler": spec.labeler},
    }
    for asset in TRAINING_ASSETS:
        labeled = {"labeler": spec.labeler} if asset in ("prm_model", "dpo_policy") else {}  # rft needs no labels
        config[asset] = {"eval_prompt_set": spec.test_set, "base_checkpoint": policy, **labeled,
                         **spec.training.get(asset, {})}
    if spec.evaluation is not None:
        config["evaluation"] = {"eval_prompt_set": spec.test_set, **spec.evaluation}
    tags = {ROUND_TAG: str(spec.round), "qstar/policy": policy, **({"qstar/prm": prm} if prm else {})}
    return RoundRun(spec.train_set, tags, tuple(a for a in ROUND_ASSETS if a in config),
                    {"ops": {a: {"config": c} for a, c in config.items()}}, policy, prm)


class StageFailed(RuntimeError):
    pass


def run_round(store: LineageStore, job_def, instance, spec: RoundSpec, log_level: str = "INFO",
              run: RoundRun | None = None) -> dict:
    """Run round `spec.round` as one run of `job_def` (the round job, with the code location's
    resources) in `instance`, in this process; `run`: its plan, when already made. Returns the
    round's checkpoints and each asset's metadata under `ROUND_ASSETS`' names."""
    from dagster import AssetKey

    run = run or plan_round(store, spec)
    result = job_def.execute_in_process(
        instance=instance, partition_key=run.partition, tags=run.tags, raise_on_error=False,
        asset_selection=[AssetKey(a) for a in run.assets],
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}, **run.run_config})
    if not result.success:
        raise StageFailed(f"run {result.run_id} (round {spec.round} on {run.partition}) failed; see its logs above "
                          "or in the Dagster UI")
    out = {"round": spec.round, "policy": run.policy, "prm": run.prm, "run_id": result.run_id}
    for asset in run.assets:
        [event] = result.asset_materializations_for_node(asset)
        out[ROUND_ASSETS[asset]] = {k: v.value for k, v in event.metadata.items()}
    return out


def make_executor(job_def, instance, echo=print, log_level: str = "INFO"):
    """execute(job name, what (for the log), partition key, asset, config) -> the asset's
    metadata: one asset materialized in process against `instance`, as a run of its own (the
    demo's stages before the round). `job_def(name)`: the job of that name
    (`Definitions.resolve_job_def`)."""
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
