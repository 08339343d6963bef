"""Trained checkpoints from the factory's datasets: a PRM (step scorer), an RFT policy and a
DPO / step-DPO policy, and from the policy's own samples a step-PPO policy, each recorded with the dataset it learned from, the checkpoint it
started from, its training metrics and its evaluation on a held-out prompt set.

(No `from __future__ import annotations`: Dagster reads these annotations.)"""

import random
from pathlib import Path

from dagster import AssetExecutionContext, AssetKey, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from qstar_dagster.assets._config import spec_config, to_spec
from qstar_dagster.assets._runs import forward_logs, partition_rollout, recorded_run
from qstar_dagster.assets.prompts import prompt_set_partitions
from qstar_dagster.datasets.build import read_rows
from qstar_dagster.evaluation.evaluate import evaluate_policy
from qstar_dagster.generation.backends import make_generator
from qstar_dagster.generation.hf import TransformersGenerator, resolve_model_dir
from qstar_dagster.lineage import artifacts
from qstar_dagster.lineage.files import weights_sha256
from qstar_dagster.lineage.rollouts import held_out_rollout
from qstar_dagster.plots import line_plots_markdown
from qstar_dagster.resources import DataDirResource, LineageStoreResource
from qstar_dagster.resources.compute import GPU_OP_TAGS, GPU_POOL, ComputeResource
from qstar_dagster.search.rollouts import load_trees
from qstar_dagster.spec import id_settings
from qstar_dagster.tasks.steps import step_format
from qstar_dagster.training.base_policy import greedy_accuracy
from qstar_dagster.training.checkpoints import (
    build_checkpoint,
    fine_tune,
    name_checkpoint,
    progress_path,
)
from qstar_dagster.training.dpo import DPO_REVISION, DPOSpec, train_dpo
from qstar_dagster.training.prm import (
    PRM_SEPARATOR,
    PRMScorer,
    PRMTrainSpec,
    evaluate_prm,
    train_prm,
)
from qstar_dagster.training.rft import RFTSpec, train_rft
from qstar_dagster.training.shipped import prm_backbone
from qstar_dagster.training.step_ppo import (
    STEP_PPO_REVISION,
    STEP_PPO_TRAINER,
    StepPPOSpec,
    mc_scores,
    prm_scores,
    train_step_ppo,
)

# The evaluation asset measures every checkpoint in full; a checkpoint's own figures are a
# quick look at materialization time, which a run that evaluates anyway (the demo) can skip.
MEASURE_DESCRIPTION = ("measure the checkpoint on eval_prompt_set when it is trained (its metadata; the evaluation "
                       "asset measures it in full either way)")


def _not_measured(path) -> dict:
    return {}


class TrainConfig(Config):
    eval_prompt_set: str = Field("arith-test", description="held-out prompt set it is measured on")
    measure: bool = Field(True, description=MEASURE_DESCRIPTION)
    base_checkpoint: str | None = Field(None, description="policy checkpoint to start from; unset: the base policy")
    rollout_id: str | None = Field(None, description="learn from the datasets built from this rollout; unset: "
                                   "from the one the partition's tot_rollouts last made")


def _nothing_to_learn(context, lineage, run, dataset) -> MaterializeResult | None:
    """A dataset with no rows trains nothing: say so, record the run, make no checkpoint."""
    if dataset["n_rows"]:
        return None
    why = f"dataset {dataset['dataset_id']} ({dataset['kind']}) has no rows: nothing to learn from"
    context.log.warning(why)
    with lineage.transaction() as con:
        run.finish(con)
    return MaterializeResult(metadata={"skipped": why, "trained_on_dataset": dataset["dataset_id"]})


def _train_checkpoint(context, config, store, data_dir, *, kind: str, dataset_kind: str,
                      labeler: str | None, train_config: dict, train, evaluate, extra: dict) -> MaterializeResult:
    """What the three training assets share: find the dataset of the partition's (the training
    prompt set's) rollout (a clear error if there is none; a recorded skip if it is empty),
    start from `config.base_checkpoint`, train into a new checkpoint or reuse the one these
    inputs already made, evaluate it, record it.
    `train(lineage, base, rows, out_dir)` trains; `evaluate(lineage, base)` returns `path -> metrics`."""
    lineage = store.store()
    with recorded_run(context, lineage, config.model_dump()) as run, forward_logs(context):
        rollout_id = partition_rollout(context, lineage, config.rollout_id)
        dataset = artifacts.latest_dataset(lineage, context.partition_key, dataset_kind, labeler, rollout_id)
        if skipped := _nothing_to_learn(context, lineage, run, dataset):
            return skipped
        base = lineage.checkpoint(config.base_checkpoint, "policy", prompt_set=context.partition_key)
        built = fine_tune(lineage, data_dir.subdir("checkpoints"), kind, base, dataset["dataset_id"], train_config,
                          lambda path: train(lineage, base, read_rows(dataset), path),
                          evaluate(lineage, base) if config.measure else _not_measured, context.run_id)
        with lineage.transaction() as con:
            if built.row:
                lineage.insert(con, "checkpoints", [built.row])
            run.finish(con)
    return MaterializeResult(metadata=_metadata(built, dataset, extra))


def _metadata(built, dataset, extra: dict) -> dict:
    curve = [tuple(p) for p in built.training.get("loss_curve", [])]
    return {"checkpoint_id": built.checkpoint_id, "path": str(built.path), "reused": built.reused,
            "trained_on_dataset": dataset["dataset_id"], "train_rows": dataset["n_rows"],
            "final_loss": built.training.get("final_loss"), "train_seconds": built.training.get("train_seconds"),
            **{k: v for k, v in built.metrics.items() if isinstance(v, (int, float)) or v is None}, **extra,
            "loss_curve": MetadataValue.md(line_plots_markdown([("training loss", "loss", {"loss": curve})])),
            "lineage": MetadataValue.md(f"```\nqstar lineage {built.checkpoint_id}\n```")}


class PRMConfig(spec_config(PRMTrainSpec, base=TrainConfig)):
    labeler: str = Field("mc", description="whose labels the PRM learns (the prm dataset's labeler)")
    lm_references: int = Field(20000, description="with lm_weight: how many reference solutions (a seeded sample "
                               "of the training prompt set's)")
    backbone: str = Field("auto", description="the LM the PRM reads steps with: auto (the verifier shipped with "
                          "the package for the training prompt set, a longer-trained model than the policy, where "
                          "there is one; else the policy), verifier, policy (the starting policy's own LM), or a "
                          "model directory")


@asset(
    partitions_def=prompt_set_partitions,  # the training prompt set
    group_name="training", code_version="1", pool=GPU_POOL, op_tags=GPU_OP_TAGS, kinds={"pytorch"},
    deps=[AssetKey("step_datasets"), AssetKey("base_policy")],
    description="A process reward model from the policy: by default generative (a step's score is the LM's own "
    "likelihood of it, with a bias fitted to a prm dataset's hard or soft labels; optionally fine-tuned with BCE, "
    "pairwise and LM losses), or a one-logit classifier head; measured against the oracle on the held-out set's "
    "rollouts. Checkpoint kind prm; PRMScorer(path).score_steps(problem, steps).",
)
def prm_model(context: AssetExecutionContext, config: PRMConfig, store: LineageStoreResource,
              data_dir: DataDirResource, compute: ComputeResource) -> MaterializeResult:
    spec = to_spec(config, PRMTrainSpec)
    verifier, why = prm_backbone(config.backbone, context.partition_key,
                                 store.store().prompt_set_head(context.partition_key))
    # recorded in the checkpoint's identity: another backbone is another PRM (none: the policy's, as before)
    if verifier:
        backbone_dir = str(verifier.path)
        backbone = {"backbone": {"verifier": verifier.domain, "sha256": verifier.files["model.safetensors"]}}
    elif config.backbone not in ("auto", "policy"):
        backbone_dir = str(resolve_model_dir(config.backbone))
        backbone = {"backbone": {"path": backbone_dir, "sha256": weights_sha256(Path(backbone_dir))}}
    else:
        backbone_dir, backbone = None, {}
    context.log.info(f"prm_model reads steps with {backbone_dir or 'the starting policy'} ({why})")

    def train(lineage, base, rows, path):
        references = []
        if spec.lm_weight:
            _, problems = lineage.prompt_set_problems(context.partition_key)
            solved = [p for p in problems if p.reference_solution]
            if not solved:
                raise ValueError(f"prm_model.lm_weight needs reference solutions, and prompt set "
                                 f"{context.partition_key!r} has none; set lm_weight to 0")
            # the PRM's own input format: the problem, the separator, the steps
            references = [(p.problem + PRM_SEPARATOR, p.reference_solution)
                          for p in random.Random(spec.seed).sample(solved, min(config.lm_references, len(solved)))]
        return train_prm(backbone_dir or base["path"], rows, path, spec, lm_pairs=references)

    def evaluate(lineage, base):
        # the held-out set's rollout by the same starting policy (the steps the PRM will judge), else any
        held_out_id = held_out_rollout(lineage, config.eval_prompt_set, base["checkpoint_id"])
        held_out = load_trees(lineage, held_out_id) if held_out_id else []
        if not held_out:
            context.log.warning(f"no rollout of {config.eval_prompt_set} to measure the PRM on; materialize "
                                f"tot_rollouts for it")
        return lambda path: evaluate_prm(PRMScorer(path, compute.torch_device()), held_out) if held_out else {}

    return _train_checkpoint(
        context, config, store, data_dir, kind="prm", dataset_kind="prm", labeler=config.labeler,
        train_config={"trainer": "qstar.prm", **spec.__dict__,
                      **({"lm_references": config.lm_references} if spec.lm_weight else {}), **backbone},
        train=train, evaluate=evaluate,
        extra={"head": config.head, "target": config.target, "backbone": backbone_dir or "the starting policy"})


def _policy_eval(lineage, prompt_set: str, compute):
    """path -> greedy, pass_at_8, majority_at_8 and n on the held-out problems."""
    _, problems = lineage.prompt_set_problems(prompt_set)
    return lambda path: evaluate_policy(
        make_generator("transformers", str(path), compute.torch_device(), compute.torch_dtype()), problems, k=8)


class RFTConfig(spec_config(RFTSpec, base=TrainConfig)):
    pass


@asset(
    partitions_def=prompt_set_partitions,  # the training prompt set
    group_name="training", code_version="1", pool=GPU_POOL, op_tags=GPU_OP_TAGS, kinds={"pytorch"},
    deps=[AssetKey("step_datasets"), AssetKey("base_policy")],
    description="Rejection-sampling fine-tuning: the policy fine-tuned on the rft dataset (right, deduplicated "
    "solutions). Checkpoint kind policy; greedy / pass@8 / majority@8 on the held-out set.",
)
def rft_policy(context: AssetExecutionContext, config: RFTConfig, store: LineageStoreResource,
               data_dir: DataDirResource, compute: ComputeResource) -> MaterializeResult:
    spec = to_spec(config, RFTSpec)
    return _train_checkpoint(
        context, config, store, data_dir, kind="policy", dataset_kind="rft", labeler=None,
        train_config={"trainer": "rft", **spec.__dict__},
        train=lambda _, base, rows, path: train_rft(base["path"], rows, path, spec),
        evaluate=lambda lineage, _: _policy_eval(lineage, config.eval_prompt_set, compute), extra={})


class DPOConfig(spec_config(DPOSpec, base=TrainConfig)):
    pairs: str = Field("step_pairs", description="step_pairs (step-DPO) or pairs (whole-solution DPO)")
    labeler: str = Field("mc", description="step_pairs: whose labels chose the pairs (the step_pairs dataset's "
                         "labeler); whole-solution pairs need none")


@asset(
    partitions_def=prompt_set_partitions,  # the training prompt set
    group_name="training", code_version=str(DPO_REVISION), pool=GPU_POOL, op_tags=GPU_OP_TAGS, kinds={"pytorch"},
    deps=[AssetKey("step_datasets"), AssetKey("base_policy")],
    description="DPO (whole-solution pairs) or step-DPO (step pairs) with TRL's DPOTrainer, the starting policy "
    "as reference. Checkpoint kind policy; greedy / pass@8 / majority@8 on the held-out set.",
)
def dpo_policy(context: AssetExecutionContext, config: DPOConfig, store: LineageStoreResource,
               data_dir: DataDirResource, compute: ComputeResource) -> MaterializeResult:
    if config.pairs not in ("step_pairs", "pairs"):
        raise ValueError(f"dpo_policy.pairs must be step_pairs or pairs, got {config.pairs!r}")
    spec = to_spec(config, DPOSpec)
    step_pairs = config.pairs == "step_pairs"

    def train(lineage, base, rows, path):
        separator = step_format(artifacts.prompt_set_domain(lineage, context.partition_key)).separator
        return train_dpo(base["path"], rows, path, spec, completion_end=separator if step_pairs else None)

    return _train_checkpoint(
        context, config, store, data_dir, kind="policy", dataset_kind=config.pairs,
        labeler=config.labeler if step_pairs else None,  # whole-solution pairs come from answers, not labels
        train_config={"trainer": "trl.DPOTrainer", "revision": DPO_REVISION, "pairs": config.pairs, **spec.__dict__},
        train=train, evaluate=lambda lineage, _: _policy_eval(lineage, config.eval_prompt_set, compute),
        extra={"pairs": config.pairs})


class StepPPOConfig(spec_config(StepPPOSpec)):
    eval_prompt_set: str = Field("arith-test", description="held-out prompt set it is measured on")
    measure: bool = Field(True, description=MEASURE_DESCRIPTION)
    base_checkpoint: str | None = Field(None, description="policy checkpoint to start from; unset: the base policy")
    prm_checkpoint: str | None = Field(None, description="reward=prm: the PRM whose step scores are the rewards; "
                                       "unset: the latest PRM trained from the starting policy (in a round, the "
                                       "round's)")
    curve_problems: int = Field(100, description="held-out problems behind the greedy curve along training")


@asset(
    partitions_def=prompt_set_partitions,  # the training prompt set
    group_name="training", code_version=str(STEP_PPO_REVISION), pool=GPU_POOL, op_tags=GPU_OP_TAGS,
    kinds={"pytorch"}, deps=[AssetKey("prm_model"), AssetKey("base_policy")],
    description="Step-level PPO: the policy trained online on its own samples of the training prompt set, each "
    "step rewarded by the PRM (or Monte Carlo values, the oracle, or the outcome alone), credit by step, gae or "
    "group. Checkpoint kind policy; greedy / pass@8 / majority@8 on the held-out set; reward, KL and accuracy "
    "curves in the metadata.",
)
def step_ppo_policy(context: AssetExecutionContext, config: StepPPOConfig, store: LineageStoreResource,
                    data_dir: DataDirResource, compute: ComputeResource) -> MaterializeResult:
    spec = to_spec(config, StepPPOSpec)
    lineage = store.store()
    device = compute.torch_device()
    with recorded_run(context, lineage, config.model_dump()) as run, forward_logs(context):
        base = lineage.checkpoint(config.base_checkpoint, "policy", prompt_set=context.partition_key)
        prm = None
        if spec.reward == "prm":
            prm_id = config.prm_checkpoint or artifacts.trained_from(lineage, base["checkpoint_id"]).get("prm")
            if prm_id is None:
                raise LookupError(f"step_ppo_policy reward=prm needs a PRM trained from {base['checkpoint_id']}: "
                                  f"materialize prm_model[{context.partition_key}] first, set prm_checkpoint, or "
                                  "choose reward oracle, mc or none")
            prm = lineage.checkpoint(prm_id, "prm")
        version, problems = lineage.prompt_set_problems(context.partition_key)
        _, held_out = lineage.prompt_set_problems(config.eval_prompt_set)
        template = artifacts.checkpoint_template(base)
        trained_on = f"{context.partition_key}@{version}"
        train_config = {"trainer": STEP_PPO_TRAINER, "revision": STEP_PPO_REVISION, **id_settings(spec),
                        "reward_checkpoint": prm and prm["checkpoint_id"]}
        identity = (base["checkpoint_id"], trained_on, train_config)
        checkpoints_dir = data_dir.subdir("checkpoints")
        progress = progress_path(checkpoints_dir, name_checkpoint("policy", identity))
        curve = held_out[: config.curve_problems]

        def train(path):
            if spec.reward == "prm":
                score = prm_scores(PRMScorer(prm["path"], device))
            elif spec.reward == "mc":
                score = mc_scores(spec.mc_n, spec.temperature, spec.max_new_tokens, spec.seed)
            else:
                score = None
            return train_step_ppo(
                base["path"], problems, path, spec, score=score, progress_dir=progress, template=template,
                identity={"checkpoint": progress.name}, device=device,
                evaluate=lambda model, tok: greedy_accuracy(TransformersGenerator(model, tok, device), curve,
                                                            spec.max_new_tokens, template))

        built = build_checkpoint(
            lineage, checkpoints_dir, "policy", identity,
            {"base": base["checkpoint_id"], "trained_on_prompt_set": trained_on,
             "config": {"template": template, **train_config}},
            train=train, evaluate=_policy_eval(lineage, config.eval_prompt_set, compute) if config.measure
            else _not_measured, evaluated_on=config.eval_prompt_set if config.measure else None, run_id=context.run_id)
        with lineage.transaction() as con:
            if built.row:
                lineage.insert(con, "checkpoints", [built.row])
            run.finish(con)
    curves = built.training.get("curves") or {}
    series = {k: [tuple(p) for p in curves.get(k, []) if p[1] is not None] for k in curves}
    plots = line_plots_markdown([
        ("reward and accuracy per iteration", "", {"reward": series.get("reward", []),
                                                   "step score (reward source)": series.get("step_score", []),
                                                   "oracle step accuracy": series.get("oracle_step_accuracy", []),
                                                   "samples right": series.get("sample_accuracy", [])}),
        ("KL to the starting policy", "KL", {"KL": series.get("kl", [])}),
        (f"held-out greedy ({len(curve)} of {config.eval_prompt_set})", "accuracy",
         {"greedy": series.get("heldout_greedy", [])}),
        *([("the critic: share of the returns' variance its values explain", "explained",
            {"value head": series["value_explained"]})] if series.get("value_explained") else []),
    ])
    return MaterializeResult(metadata={
        "checkpoint_id": built.checkpoint_id, "path": str(built.path), "reused": built.reused,
        "trained_on_prompt_set": trained_on, "reward": spec.reward, "credit": spec.credit,
        "baseline": spec.baseline if spec.credit == "step" else None,
        "reward_checkpoint": prm and prm["checkpoint_id"], "iterations": spec.iterations,
        "sampled_tokens": built.training.get("sampled_tokens"), "final_loss": built.training.get("final_loss"),
        "train_seconds": built.training.get("train_seconds"), "final_reward": built.training.get("final_reward"),
        "final_kl": built.training.get("final_kl"),
        "final_oracle_step_accuracy": built.training.get("final_oracle_step_accuracy"),
        **{k: v for k, v in built.metrics.items() if isinstance(v, (int, float)) or v is None},
        "curves": MetadataValue.md(plots),
        "lineage": MetadataValue.md(f"```\nqstar lineage {built.checkpoint_id}\n```")})
