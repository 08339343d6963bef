"""Tree-of-thoughts rollouts: search over reasoning steps for every problem of a prompt set.

(No `from __future__ import annotations`: Dagster reads these annotations.)"""

from collections.abc import Iterator
from dataclasses import replace

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from qstar_dagster.assets._config import spec_config, to_spec
from qstar_dagster.assets._runs import forward_logs, recorded_run
from qstar_dagster.assets.prompts import prompt_set_partitions
from qstar_dagster.automation import prompts_changed
from qstar_dagster.generation.backends import check_backend
from qstar_dagster.generation.openai_http import OpenAICompatibleGenerator
from qstar_dagster.lineage.artifacts import checkpoint_template
from qstar_dagster.lineage.rollouts import rollout_summary, tree_shape, tree_violations
from qstar_dagster.plots import bar_plots_markdown
from qstar_dagster.resources import LineageStoreResource
from qstar_dagster.resources.compute import GPU_OP_TAGS, GPU_POOL, ComputeResource
from qstar_dagster.search.algorithms import SearchSpec
from qstar_dagster.search.rollouts import plan_rollout, run_rollout
from qstar_dagster.training.prm import PRMScorer


class RolloutsConfig(spec_config(SearchSpec)):
    policy_checkpoint: str | None = Field(None, description="policy checkpoint id; unset: the base policy (the "
                                          "base_policy asset's latest)")
    backend: str = Field("transformers", description="transformers, or vllm (extra gpu)")
    batch_size: int = Field(64, description="problems searched together; also the unit a killed run resumes by")
    max_problems: int | None = Field(None, description="search only the first n problems of the prompt set")

    def spec(self) -> SearchSpec:
        return to_spec(self, SearchSpec)


CHECK_TREES_SOUND = "trees_sound"


@asset(
    partitions_def=prompt_set_partitions,
    group_name="rollouts",
    code_version="1",
    pool=GPU_POOL, op_tags=GPU_OP_TAGS,
    kinds={"pytorch", "duckdb"},
    deps=[AssetKey("prompt_set"), AssetKey("base_policy")],
    automation_condition=prompts_changed(),
    check_specs=[AssetCheckSpec(CHECK_TREES_SOUND, asset="tot_rollouts", blocking=True,
                                description="every non-root node's parent exists one level up, no terminal "
                                "node has children, every terminal node is graded")],
    description="Trees of reasoning steps sampled from a policy for every problem of a prompt set: best-of-N, "
    "tree-of-thoughts beam/BFS or MCTS (value: policy likelihood, Monte Carlo, or a PRM), all problems of a batch "
    "searched together. Every node goes to the "
    "store's nodes table (with its prompt, policy checkpoint and run); each tree to trees.",
)
def tot_rollouts(context: AssetExecutionContext, config: RolloutsConfig, store: LineageStoreResource,
                 compute: ComputeResource) -> Iterator:
    lineage = store.store()
    spec = config.spec()  # validates algorithm, value function and budgets before any work
    check_backend(config.backend)
    name = context.partition_key
    with recorded_run(context, lineage, config.model_dump()) as run, forward_logs(context):
        version, problems = lineage.prompt_set_problems(name)
        policy = lineage.checkpoint(config.policy_checkpoint, "policy")
        if spec.value == "prm":  # record which PRM guided the search, not "the latest"
            spec = replace(spec, prm_checkpoint=lineage.checkpoint(config.prm_checkpoint, "prm")["checkpoint_id"])
        template = checkpoint_template(policy)
        plan = plan_rollout(name, version, problems[: config.max_problems], policy["checkpoint_id"], spec,
                            config.batch_size, template)
        made = []  # the generator, once run_rollout has asked for one (it does not when nothing is left)
        result = run_rollout(lineage, plan, lambda: made.append(compute.policy_generator(policy, config.backend))
                             or made[-1], context.run_id, load_prm=lambda path: PRMScorer(path, compute.torch_device()))
        with lineage.transaction() as con:
            run.finish(con)
    summary = rollout_summary(lineage, plan.rollout_id)
    shape = tree_shape(lineage, plan.rollout_id)
    context.log.info(f"rollout {plan.rollout_id}: {summary['trees']} trees, {summary['nodes']} nodes, "
                     f"selected-path accuracy {summary['selected_accuracy']:.1%}, any path {summary['pass_at_k']:.1%}, "
                     f"{summary['tokens_per_second']:.0f} tokens/s")
    served = {}
    if made and isinstance(made[0], OpenAICompatibleGenerator):  # through policy servers
        served = {"policy_server_requests": MetadataValue.json(dict(zip(made[0].base_urls, made[0].requests))),
                  "policy_server_failovers": made[0].failovers}
    yield MaterializeResult(metadata={
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
        "batches_searched": result.n_batches_run,
        "batches_in_store_before": result.n_batches - result.n_batches_run,
        "tree_shape": MetadataValue.md(bar_plots_markdown([
            ("nodes per depth", "nodes", {"all": shape["nodes"], "terminal": shape["terminals"]}),
            ("branching (non-terminal nodes)", "nodes with b children", {"b children": shape["branching"]}),
            ("terminal nodes correct, per depth", "share correct", {"correct": shape["correct_share"]}),
        ])),
        "walk_a_tree": MetadataValue.md(
            "```\nqstar sql \"select steps, answer, is_correct from rollout_paths "
            f"where rollout_id = '{plan.rollout_id}' limit 5\"\n```"),
    })
    bad = tree_violations(lineage, plan.rollout_id)
    yield AssetCheckResult(check_name=CHECK_TREES_SOUND, passed=not any(bad.values()),
                           severity=AssetCheckSeverity.ERROR,
                           description=", ".join(f"{k}: {v}" for k, v in bad.items()), metadata=bad)

