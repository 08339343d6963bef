"""The Dagster code location: `dagster dev -w workspace.yaml` loads `defs` from here."""

from dagster import (
    AssetSelection,
    Definitions,
    OpExecutionContext,
    define_asset_job,
    job,
    op,
)

from qstar_dagster.assets._config import spec_config, to_spec
from qstar_dagster.assets.datasets import step_datasets
from qstar_dagster.assets.evaluation import evaluation
from qstar_dagster.assets.labels import (
    consensus_labels,
    judge_labels,
    judge_model,
    label_agreement,
    mc_labels,
    oracle_labels,
)
from qstar_dagster.assets.policy import base_policy
from qstar_dagster.assets.prompts import prompt_inbox_sensor, prompt_set, prompt_set_partitions
from qstar_dagster.assets.rollouts import tot_rollouts
from qstar_dagster.assets.training import dpo_policy, prm_model, rft_policy
from qstar_dagster.automation import refresh_automation
from qstar_dagster.jobs import refresh_job
from qstar_dagster.resources import DataDirResource, LineageStoreResource, default_store_path
from qstar_dagster.resources.compute import ComputeResource
from qstar_dagster.resources.judge import JudgeResource
from qstar_dagster.rounds import RoundSpec, make_executor, run_round

# The embedded pipeline's stages per prompt set (one partition each). A Dagster job has one
# partitioning, so the unpartitioned models (base policy, judge) have their own jobs; `qstar
# demo` runs prompt sets, the base policy, rollouts, the judge, then the labels.
TRAINED = AssetSelection.assets(prm_model, rft_policy, dpo_policy)
UNPARTITIONED = AssetSelection.assets(base_policy, judge_model, evaluation) | TRAINED
embedded_pipeline = define_asset_job(
    "embedded_pipeline", selection=AssetSelection.all() - UNPARTITIONED,
    partitions_def=prompt_set_partitions,
    description="Every per-prompt-set stage of the factory for one prompt set.",
)
base_policy_job = define_asset_job(
    "base_policy_job", selection=AssetSelection.assets(base_policy),
    description="Train (or load) and evaluate the base policy.",
)
training_job = define_asset_job(
    "training_job", selection=TRAINED,
    description="Train the PRM, RFT and DPO checkpoints on a training prompt set's datasets.",
)
evaluation_job = define_asset_job(
    "evaluation_job", selection=AssetSelection.assets(evaluation),
    description="Evaluate every policy (alone and with every PRM) on the held-out prompt set.",
)
judge_model_job = define_asset_job(
    "judge_model_job", selection=AssetSelection.assets(judge_model),
    description="Train the built-in step judge on a training prompt set's rollouts.",
)


class RoundConfig(spec_config(RoundSpec, exclude=("rollouts", "labels", "training", "evaluation"))):
    pass


@op(description="Run one expert-iteration round: rollouts, labels, datasets, training, evaluation.")
def run_round_op(context: OpExecutionContext, config: RoundConfig, store: LineageStoreResource) -> dict:
    # each stage runs as its own run of this code location's jobs, against this instance
    execute = make_executor(make_definitions().resolve_job_def, context.instance, context.log.info)
    out = run_round(store.store(), execute, to_spec(config, RoundSpec))
    return {"round": out["round"], "policy": out["policy"], "prm": out["prm"]}


@job(description="One full expert-iteration round (each stage runs as its own run of this instance).")
def expert_iteration_round():
    run_round_op()


def make_definitions(data_dir: str | None = None) -> Definitions:
    """Definitions whose resources point at `data_dir` (default: $QSTAR_HOME or ./.qstar)."""
    data = DataDirResource(path=data_dir)
    store = LineageStoreResource(path=str(default_store_path(data_dir)) if data_dir else None)
    return Definitions(
        assets=[prompt_set, base_policy, tot_rollouts, judge_model, mc_labels, judge_labels, oracle_labels,
                consensus_labels, label_agreement, step_datasets, prm_model, rft_policy, dpo_policy, evaluation],
        jobs=[embedded_pipeline, base_policy_job, judge_model_job, training_job, evaluation_job, refresh_job,
              expert_iteration_round],
        sensors=[prompt_inbox_sensor, refresh_automation],
        resources={"data_dir": data, "store": store, "compute": ComputeResource(),
                   "judge": JudgeResource()},
    )


defs = make_definitions()
