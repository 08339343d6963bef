"""The base policy: the model every search starts from, trained here or given.

(No `from __future__ import annotations`: Dagster reads these annotations.)"""

from dagster import AssetExecutionContext, AssetKey, MaterializeResult, MetadataValue, asset
from pydantic import Field

from qstar_dagster.assets._config import spec_config, to_spec
from qstar_dagster.assets._runs import forward_logs, recorded_run
from qstar_dagster.evaluation.evaluate import evaluate_policy
from qstar_dagster.generation.backends import check_backend, make_generator
from qstar_dagster.plots import line_plots_markdown
from qstar_dagster.resources import DataDirResource, LineageStoreResource
from qstar_dagster.resources.compute import GPU_OP_TAGS, GPU_POOL, ComputeResource
from qstar_dagster.tasks.problem import DEFAULT_PROMPT_TEMPLATE
from qstar_dagster.training.base_policy import (
    BasePolicyConfig,
    PolicyEvalSpec,
    build_base_policy,
)


class BasePolicyAssetConfig(spec_config(BasePolicyConfig, base=spec_config(PolicyEvalSpec, prefix="eval_"))):
    model_path: str | None = Field(
        None, description="use this model instead of training the built-in one: a local directory, or a "
        "Hugging Face id already in the local cache (e.g. a 1.5B math model on a GPU)")
    shipped: bool = Field(True, description="start from the policy shipped with the package that was trained "
                          "on train_prompt_set (one per built-in domain, trained by this asset's trainer with its "
                          "defaults; the config is in its manifest); false: train the built-in policy from scratch "
                          "as set here")
    backend: str = Field("transformers", description="evaluation backend: transformers, or vllm (extra gpu)")
    prompt_template: str = Field(DEFAULT_PROMPT_TEMPLATE, description="how the policy is prompted; {problem}")
    train_prompt_set: str = Field("arith-train", description="built-in policy: prompt set whose reference "
                                  "solutions it learns from")


@asset(
    group_name="policy",
    code_version="1",
    pool=GPU_POOL, op_tags=GPU_OP_TAGS,
    kinds={"pytorch"},
    deps=[AssetKey("prompt_set")],
    description="The policy checkpoint that search starts from: the built-in character-level Llama shipped "
    "with the package for the training prompt set's domain, or trained from scratch on its reference "
    "solutions (shipped: false), or a given Hugging Face model. Recorded in the "
    "store's checkpoints table with its config, training data and metrics on the evaluation set.",
)
def base_policy(context: AssetExecutionContext, config: BasePolicyAssetConfig, store: LineageStoreResource,
                data_dir: DataDirResource, compute: ComputeResource) -> MaterializeResult:
    lineage = store.store()
    train_cfg = to_spec(config, BasePolicyConfig)
    check_backend(config.backend)
    spec = to_spec(config, PolicyEvalSpec, prefix="eval_")

    def evaluate(path, problems) -> dict:
        gen = make_generator(config.backend, str(path), compute.torch_device(), compute.torch_dtype())
        return evaluate_policy(gen, problems, k=spec.k, seed=spec.seed, max_new_tokens=spec.max_new_tokens,
                               template=config.prompt_template, temperature=spec.temperature)

    with recorded_run(context, lineage, config.model_dump()) as run, forward_logs(context):
        result = build_base_policy(
            lineage, data_dir.subdir("checkpoints"), cfg=train_cfg, train_prompt_set=config.train_prompt_set,
            evaluation=spec, evaluate=evaluate, model_path=config.model_path, template=config.prompt_template,
            shipped=config.shipped and not config.model_path, run_id=context.run_id,
        )
        with lineage.transaction() as con:
            lineage.insert(con, "checkpoints", [result.checkpoint_row] if result.checkpoint_row else [])  # no-op if there
            lineage.insert(con, "evaluations", result.evaluation_rows)
            run.finish(con)
    m, k = result.metrics, config.eval_k
    context.log.info(f"base policy {result.checkpoint_id}{' (already recorded)' if result.reused else ''}: "
                     f"greedy {m['greedy']:.1%}, pass@{k} {m[f'pass_at_{k}']:.1%}, "
                     f"majority@{k} {_pct(m[f'majority_at_{k}'])} on {config.eval_prompt_set}")
    metadata = {
        "checkpoint_id": result.checkpoint_id,
        "path": MetadataValue.path(str(result.path)),
        "reused": result.reused,
        "shipped": bool(config.shipped and not config.model_path),
        "eval_prompt_set": config.eval_prompt_set,
        "greedy_accuracy": m["greedy"],
        f"pass_at_{k}": m[f"pass_at_{k}"],
        f"majority_at_{k}": m[f"majority_at_{k}"],
    }
    if result.training:
        t = result.training
        metadata |= {
            "train_prompt_set": config.train_prompt_set,
            "n_parameters": t["n_parameters"],
            "n_train_examples": t["n_train_examples"],
            "train_seconds": round(t["train_seconds"], 1),
            "final_loss": round(t["final_loss"], 4),
            "training_curves": MetadataValue.md(line_plots_markdown([
                ("training loss", "loss (solution tokens)", {"loss": _smooth(t["loss_curve"])}),
                ("greedy accuracy (first 100 eval problems)", "accuracy", {"greedy": t["accuracy_curve"]}),
            ])),
        }
    return MaterializeResult(metadata=metadata)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.1%}"  # majority@k is None where votes do not apply (Countdown)


def _smooth(points: list, window: int = 25) -> list[tuple[int, float]]:
    """Means over windows of steps: the raw per-batch loss is too noisy to read."""
    return [(points[min(i + window, len(points)) - 1][0],
             sum(y for _, y in points[i: i + window]) / len(points[i: i + window]))
            for i in range(0, len(points), window)]
