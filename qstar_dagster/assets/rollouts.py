"""Tree-of-thoughts rollouts: search over reasoning steps for every problem of a prompt set.

`tot_rollouts` is a graph-backed asset: a plan step fans the rollout's batches out over
`shards` search steps (Dagster's dynamic mapping), which the run's executor runs in
parallel (processes with the multiprocess executor, a pod each with `k8s_job_executor`),
then a record step writes the metadata. A batch's seed and tree ids depend only on its own
problems, so the shards' union is exactly a serial run's trees, and each shard resumes on
its own: a re-run (or Dagster's "re-execute from failure") skips the batches already stored.

(No `from __future__ import annotations`: Dagster reads these annotations.)"""

from dataclasses import replace

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetIn,
    ConfigMapping,
    DynamicOut,
    DynamicOutput,
    In,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    asset_check,
    graph_asset,
    op,
)
from pydantic import Field

from qstar_dagster.assets._config import every_step, spec_config, to_spec
from qstar_dagster.assets._runs import ensure_run, forward_logs, partition_rollout, start_run
from qstar_dagster.assets.prompts import prompt_set_partitions
from qstar_dagster.automation import prompts_changed
from qstar_dagster.generation.backends import check_backend
from qstar_dagster.generation.openai_http import OpenAICompatibleGenerator
from qstar_dagster.lineage import LineageStore
from qstar_dagster.lineage.artifacts import checkpoint_template
from qstar_dagster.lineage.rollouts import rollout_summary, tree_shape, tree_violations
from qstar_dagster.plots import bar_plots_markdown
from qstar_dagster.resources import LineageStoreResource
from qstar_dagster.resources.compute import GPU_OP_TAGS, GPU_POOL, ComputeResource
from qstar_dagster.search.algorithms import SearchSpec
from qstar_dagster.search.rollouts import RolloutPlan, plan_rollout, run_rollout, skip_past
from qstar_dagster.training.prm import PRMScorer

ASSET = "tot_rollouts"
CODE_VERSION = "1"


class RolloutsConfig(spec_config(SearchSpec)):
    policy_checkpoint: str | None = Field(None, description="policy checkpoint id; unset: the base policy (the "
                                          "base_policy asset's latest)")
    backend: str = Field("transformers", description="transformers, or vllm (extra gpu)")
    batch_size: int = Field(64, description="problems searched together; also the unit a killed run resumes by")
    max_problems: int | None = Field(None, description="search only the first n problems of the prompt set (after "
                                     "skip_problems)")
    skip_problems: int = Field(0, description="start at problem n of the prompt set, a multiple of batch_size (its "
                               "batches and trees are then those a search of the whole set makes): e.g. past the "
                               "problems a base policy learned by heart (base_policy's references)")
    shards: int = Field(1, description="search steps the rollout's batches are spread over, run in parallel by the "
                        "run's executor (batch i goes to shard i mod shards); the trees are the same for any value")

    def spec(self) -> SearchSpec:
        return to_spec(self, SearchSpec)


CHECK_TREES_SOUND = "trees_sound"


def _plan(context: OpExecutionContext, lineage: LineageStore, config: RolloutsConfig) -> tuple[RolloutPlan, dict]:
    """The rollout's plan and policy row: the same in every step of the run (the store and
    the config decide them), so each step works it out instead of passing it along."""
    spec = config.spec()  # validates algorithm, value function and budgets before any work
    version, problems = lineage.prompt_set_problems(context.partition_key)
    policy = lineage.checkpoint(config.policy_checkpoint, "policy", prompt_set=context.partition_key)
    if config.skip_problems % config.batch_size or not 0 <= config.skip_problems < len(problems):
        raise ValueError(f"tot_rollouts config skip_problems={config.skip_problems}: prompt set "
                         f"{context.partition_key!r} has {len(problems)} problems, searched in batches of "
                         f"{config.batch_size}; give a multiple of batch_size below {len(problems)}")
    window = problems[config.skip_problems:][: config.max_problems]
    if spec.value == "prm":  # record which PRM guided the search, not "the latest"
        spec = replace(spec, prm_checkpoint=lineage.checkpoint(config.prm_checkpoint, "prm")["checkpoint_id"])
    plan = plan_rollout(context.partition_key, version, window, policy["checkpoint_id"],
                        spec, config.batch_size, checkpoint_template(policy))
    return plan, policy


def _end_run(lineage: LineageStore, context: OpExecutionContext, status: str) -> None:
    with lineage.transaction() as con:
        lineage.end_run(con, context.run_id, ASSET, context.partition_key, status)


@op(ins={"prompt_set": In(Nothing), "base_policy": In(Nothing)}, out=DynamicOut(dict))
def plan_rollout_shards(context: OpExecutionContext, config: RolloutsConfig, store: LineageStoreResource):
    """Record the run, plan the rollout, hand each shard its share of the batches."""
    lineage = store.store()
    config.spec()
    check_backend(config.backend)
    if config.shards < 1:
        raise ValueError(f"tot_rollouts config shards must be >= 1, got {config.shards}")
    start_run(context, lineage, ASSET, config.model_dump(), CODE_VERSION)
    try:
        plan, policy = _plan(context, lineage, config)
        learned = lineage.learned_solutions(policy["checkpoint_id"])
    except BaseException:
        _end_run(lineage, context, "failure")
        raise
    searched = f"{plan.prompt_set}@{plan.prompt_set_version}"
    if learned and learned[0] == searched and config.skip_problems < learned[1]:
        n = min(learned[1], config.skip_problems + plan.n_problems) - config.skip_problems
        context.log.warning(f"{n} of the {plan.n_problems} problems searched are among the first {learned[1]} of "
                            f"{searched}, whose written solutions policy {policy['checkpoint_id']} (or its base) "
                            "learned by heart: their trees teach it little; set skip_problems to "
                            f"{skip_past(learned[1], config.batch_size)} to search past them")
    shards = min(config.shards, len(plan.batches))  # no shard without a batch
    context.log.info(f"rollout {plan.rollout_id}: {len(plan.batches)} batches of {config.batch_size} problems "
                     f"over {shards} shard(s)")
    for k in range(shards):
        yield DynamicOutput({"shard": k, "of": shards, "rollout_id": plan.rollout_id}, mapping_key=f"shard_{k}")


@op(pool=GPU_POOL, tags=GPU_OP_TAGS)
def search_rollout_shard(context: OpExecutionContext, config: RolloutsConfig, store: LineageStoreResource,
                         compute: ComputeResource, shard: dict) -> dict:
    """Search this shard's batches that the store does not hold yet, and write their trees."""
    lineage = store.store()
    ensure_run(context, lineage, ASSET, config.model_dump(), CODE_VERSION)
    try:
        plan, policy = _plan(context, lineage, config)
        if plan.rollout_id != shard["rollout_id"]:  # the store changed under the run (a new prompt-set version)
            raise RuntimeError(f"rollout {shard['rollout_id']} was planned, but the store now gives "
                               f"{plan.rollout_id}; run tot_rollouts again")
        mine = replace(plan, batches=tuple(b for b in plan.batches if b.index % shard["of"] == shard["shard"]))
        made = []  # the generator, once run_rollout has asked for one (it does not when nothing is left)
        with forward_logs(context):
            result = run_rollout(lineage, mine, lambda: made.append(compute.policy_generator(policy, config.backend))
                                 or made[-1], context.run_id,
                                 load_prm=lambda path: PRMScorer(path, compute.torch_device()))
    except BaseException:
        _end_run(lineage, context, "failure")
        raise
    served = made[0] if made and isinstance(made[0], OpenAICompatibleGenerator) else None
    return {"shard": shard["shard"], "batches": result.n_batches, "batches_run": result.n_batches_run,
            "requests": dict(zip(served.base_urls, served.requests)) if served else {},
            "failovers": served.failovers if served else 0}


@op(out=Out(Nothing))
def record_rollout(context: OpExecutionContext, config: RolloutsConfig, store: LineageStoreResource,
                   shards: list[dict]) -> None:
    """The rollout's figures as the materialization's metadata; the run recorded a success."""
    lineage = store.store()
    ensure_run(context, lineage, ASSET, config.model_dump(), CODE_VERSION)
    plan, policy = _plan(context, lineage, config)
    _end_run(lineage, context, "success")
    summary = rollout_summary(lineage, plan.rollout_id)
    shape = tree_shape(lineage, plan.rollout_id)
    context.log.info(f"rollout {plan.rollout_id}: {summary['trees']} trees, {summary['nodes']} nodes, "
                     f"selected-path accuracy {summary['selected_accuracy']:.1%}, any path {summary['pass_at_k']:.1%}, "
                     f"{summary['tokens_per_second']:.0f} tokens/s")
    served = {}
    requests: dict[str, int] = {}
    for s in shards:
        for url, n in s["requests"].items():
            requests[url] = requests.get(url, 0) + n
    if requests:  # through policy servers
        served = {"policy_server_requests": MetadataValue.json(requests),
                  "policy_server_failovers": sum(s["failovers"] for s in shards)}
    spec = plan.spec
    context.add_output_metadata({
        "rollout_id": plan.rollout_id,
        "policy_checkpoint": policy["checkpoint_id"],
        **served,
        "algorithm": spec.algorithm,
        "value_function": f"prm:{spec.prm_checkpoint}" if spec.value == "prm" else spec.value,
        "trees": summary["trees"],
        "nodes": summary["nodes"],
        "generated_tokens": summary["generated_tokens"],
        "value_tokens": summary["value_tokens"],
        "tokens_per_second": round(summary["tokens_per_second"], 1),
        "selected_accuracy": summary["selected_accuracy"],
        "pass_at_k": summary["pass_at_k"],
        "shards": len(shards),
        "batches_searched": sum(s["batches_run"] for s in shards),
        "batches_in_store_before": sum(s["batches"] - s["batches_run"] for s in shards),
        "tree_shape": MetadataValue.md(bar_plots_markdown([
            ("nodes per depth", "nodes", {"all": shape["nodes"], "terminal": shape["terminals"]}),
            ("branching (non-terminal nodes)", "nodes with b children", {"b children": shape["branching"]}),
            ("terminal nodes correct, per depth", "share correct", {"correct": shape["correct_share"]}),
        ])),
        "walk_a_tree": MetadataValue.md(
            "```\nqstar sql \"select steps, answer, is_correct from rollout_paths "
            f"where rollout_id = '{plan.rollout_id}' limit 5\"\n```"),
    })


@graph_asset(
    partitions_def=prompt_set_partitions,
    group_name="rollouts",
    code_version=CODE_VERSION,
    kinds={"pytorch", "duckdb"},
    ins={"prompt_set": AssetIn(dagster_type=Nothing), "base_policy": AssetIn(dagster_type=Nothing)},
    config=ConfigMapping(config_fn=every_step("plan_rollout_shards", "search_rollout_shard", "record_rollout"),
                         config_schema=RolloutsConfig.to_config_schema()),
    automation_condition=prompts_changed(),
    description="Trees of reasoning steps sampled from a policy for every problem of a prompt set: best-of-N, "
    "tree-of-thoughts beam/BFS or MCTS (value: policy likelihood, Monte Carlo, or a PRM), all problems of a batch "
    "searched together, the batches spread over `shards` parallel search steps. Every node goes to the "
    "store's nodes table (with its prompt, policy checkpoint and run); each tree to trees.",
)
def tot_rollouts(prompt_set, base_policy):
    return record_rollout(plan_rollout_shards(prompt_set=prompt_set, base_policy=base_policy)
                          .map(search_rollout_shard).collect())


@asset_check(asset=tot_rollouts, name=CHECK_TREES_SOUND, blocking=True,
             description="every non-root node's parent exists one level up, no terminal node has children, every "
             "terminal node is graded")
def trees_sound(context, store: LineageStoreResource) -> AssetCheckResult:
    lineage = store.store()
    bad = tree_violations(lineage, partition_rollout(context, lineage, None))
    return AssetCheckResult(passed=not any(bad.values()), severity=AssetCheckSeverity.ERROR,
                            description=", ".join(f"{k}: {v}" for k, v in bad.items()), metadata=bad)
