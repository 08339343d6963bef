"""Step labels for a prompt set's rollouts, and how far each labeler agrees with the oracle
(or with human labels imported from PRM800K, Math-Shepherd and ProcessBench files).

Monte Carlo (Math-Shepherd) and binary-search labels come from the rollout's policy; judge
labels from the judge resource (the built-in judge, or a large model); oracle labels from
the built-in domain's step checker; consensus keeps Monte Carlo labels the judge confirms.
The core lives in `qstar_dagster/labeling/`; these are its Dagster wrappers.

(No `from __future__ import annotations`: Dagster reads these annotations.)"""

import hashlib
import json
from collections.abc import Iterator

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetRecordsFilter,
    Config,
    ConfigMapping,
    DynamicOut,
    DynamicOutput,
    In,
    MaterializeResult,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    asset,
    asset_check,
    graph_asset,
    op,
)
from pydantic import Field

from qstar_dagster.assets._config import every_step, spec_config, to_spec
from qstar_dagster.assets._runs import (
    ensure_run,
    forward_logs,
    partition_rollout,
    recorded_run,
    start_run,
)
from qstar_dagster.assets.prompts import prompt_set_partitions
from qstar_dagster.automation import follows_inputs
from qstar_dagster.generation.backends import check_backend
from qstar_dagster.labeling import imported, pipeline
from qstar_dagster.lineage import LineageStore
from qstar_dagster.lineage import labels as labels_db
from qstar_dagster.lineage.rollouts import resolve_rollout, step_counts, write_whole_rollout
from qstar_dagster.plots import bar_plots_markdown, heatmaps_markdown, line_plots_markdown
from qstar_dagster.resources import DataDirResource, LineageStoreResource
from qstar_dagster.resources.compute import GPU_OP_TAGS, GPU_POOL, ComputeResource
from qstar_dagster.resources.judge import JudgeResource
from qstar_dagster.search.estimate import EstimatorSpec
from qstar_dagster.tasks.loaders import load_labeled
from qstar_dagster.tasks.process_files import LABELED_FORMATS
from qstar_dagster.tasks.prompt_sets import labeled_inbox_file
from qstar_dagster.training.judge import JudgeTrainSpec, build_judge


def _label_stats(store: LineageStore, rollout_id: str, labeler: str) -> dict:
    row = labels_db.label_stats(store, rollout_id, labeler)
    steps = step_counts(store, rollout_id)
    row["step_nodes"] = steps["steps"]
    row["paths"] = steps["paths"]
    row["tokens_per_labeled_step"] = row["cost_tokens"] / row["labeled_steps"] if row["labeled_steps"] else None
    return row


# --- Monte Carlo and binary search ---------------------------------------------------------


class MonteCarloLabelsConfig(spec_config(EstimatorSpec)):
    rollout_id: str | None = Field(None, description="rollout to label; unset: the one the partition's "
                                   "tot_rollouts last made")
    methods: list[str] = Field(list(pipeline.MC_METHODS), description="mc: every step, N completions each "
                               "(Math-Shepherd); binary_search: each solution's first error in O(log steps)")
    batch_trees: int = Field(32, description="trees labeled together; also the unit a killed run resumes by")
    seed: int = 0
    policy: str | None = Field(None, description="policy checkpoint that completes the steps; unset: the one that "
                               "sampled the rollout (an imported rollout has none: name one)")
    backend: str = Field("transformers", description="transformers, or vllm (extra gpu)")
    replace: bool = Field(False, description="relabel when labels made with other settings exist")
    shards: int = Field(1, description="labeling steps the rollout's tree batches are spread over (batch i to "
                        "shard i mod shards), run in parallel by the run's executor; each resumes on its own")
    min_positive_rate: float = Field(0.02, description="check: warn when fewer steps than this are positive")
    max_positive_rate: float = Field(0.98, description="check: warn when more steps than this are positive")


CHECK_MC_RATES = "mc_label_rates_sane"
MC_ASSET = "mc_labels"
MC_CODE_VERSION = "1"


def _end_mc_run(lineage: LineageStore, context: OpExecutionContext, status: str) -> None:
    with lineage.transaction() as con:
        lineage.end_run(con, context.run_id, MC_ASSET, context.partition_key, status)


@op(ins={"tot_rollouts": In(Nothing)}, out=DynamicOut(dict))
def plan_label_shards(context: OpExecutionContext, config: MonteCarloLabelsConfig, store: LineageStoreResource):
    """Record the run, check (or with replace, clear) the rollout's labels once, and hand each
    shard its share of the tree batches."""
    lineage = store.store()
    check_backend(config.backend)
    if config.shards < 1:
        raise ValueError(f"mc_labels config shards must be >= 1, got {config.shards}")
    spec = to_spec(config, EstimatorSpec)
    start_run(context, lineage, MC_ASSET, config.model_dump(), MC_CODE_VERSION)
    try:
        rollout_id = partition_rollout(context, lineage, config.rollout_id)
        policy = pipeline.labeling_policy(lineage, rollout_id, config.policy)
        pipeline.guard_monte_carlo(lineage, rollout_id, spec, config.methods, config.replace, policy)
        batches = pipeline.n_batches(lineage, rollout_id, config.batch_trees)
    except BaseException:
        _end_mc_run(lineage, context, "failure")
        raise
    shards = max(1, min(config.shards, batches))  # no shard without a batch
    context.log.info(f"labels of rollout {rollout_id}: {batches} batches of {config.batch_trees} trees over "
                     f"{shards} shard(s)")
    for k in range(shards):
        yield DynamicOutput({"shard": k, "of": shards, "rollout_id": rollout_id, "policy": policy},
                            mapping_key=f"shard_{k}")


@op(pool=GPU_POOL, tags=GPU_OP_TAGS)
def label_shard(context: OpExecutionContext, config: MonteCarloLabelsConfig, store: LineageStoreResource,
                compute: ComputeResource, shard: dict) -> dict:
    """Label this shard's batches that the store does not hold yet."""
    lineage = store.store()
    ensure_run(context, lineage, MC_ASSET, config.model_dump(), MC_CODE_VERSION)
    policy = shard["policy"]
    try:
        with forward_logs(context):
            results = pipeline.label_monte_carlo(
                lineage, shard["rollout_id"],
                lambda: compute.policy_generator(lineage.checkpoint(policy, "policy"), config.backend),
                to_spec(config, EstimatorSpec), config.methods, config.batch_trees, config.seed, False, context.run_id,
                policy=policy, shard=(shard["shard"], shard["of"]))
    except BaseException:
        _end_mc_run(lineage, context, "failure")
        raise
    return {"shard": shard["shard"], "rollout_id": shard["rollout_id"], "batches": sum(r.n_batches for r in results),
            "batches_run": sum(r.n_batches_run for r in results)}


@op(out=Out(Nothing))
def record_labels(context: OpExecutionContext, config: MonteCarloLabelsConfig, store: LineageStoreResource,
                  shards: list[dict]) -> None:
    """The labels' figures as the materialization's metadata; the run recorded a success."""
    lineage = store.store()
    ensure_run(context, lineage, MC_ASSET, config.model_dump(), MC_CODE_VERSION)
    rollout_id = shards[0]["rollout_id"]  # the one the plan resolved
    _end_mc_run(lineage, context, "success")
    stats = {name: _label_stats(lineage, rollout_id, name) for name in config.methods}
    soft = labels_db.value_histogram(lineage, rollout_id, "mc", "soft", bins=8)
    metadata = {"rollout_id": rollout_id, "n": config.n, "reuse_tree": config.reuse_tree,
                "methods": MetadataValue.json(list(config.methods)), "shards": len(shards),
                "batches_labeled": sum(s["batches_run"] for s in shards),
                "batches_in_store_before": sum(s["batches"] - s["batches_run"] for s in shards),
                # the check's bounds, which it reads back from here
                "min_positive_rate": config.min_positive_rate, "max_positive_rate": config.max_positive_rate}
    for name, s in stats.items():
        metadata |= {f"{name}_labeled_steps": s["labeled_steps"], f"{name}_positive_rate": s["positive_rate"],
                     f"{name}_cost_tokens": s["cost_tokens"],
                     f"{name}_tokens_per_labeled_step": s["tokens_per_labeled_step"]}
        context.log.info(f"{name}: {s['labeled_steps']} of {s['step_nodes']} steps labeled, "
                         f"{(s['positive_rate'] or 0):.1%} positive, {s['tokens_per_labeled_step'] or 0:.1f} tokens/step")
    metadata["step_nodes"] = next(iter(stats.values()))["step_nodes"]
    metadata["label_distribution"] = MetadataValue.md(bar_plots_markdown([
        ("Monte Carlo soft labels", "steps", {"steps": [(b, n) for b, n in soft]}),
        ("positive (hard) label rate per depth", "share positive",
         {name: labels_db.positive_rate_by_depth(lineage, rollout_id, name) for name in stats}),
    ]))
    context.add_output_metadata(metadata)


@graph_asset(
    partitions_def=prompt_set_partitions,
    group_name="labels",
    code_version=MC_CODE_VERSION,
    kinds={"pytorch", "duckdb"},
    ins={"tot_rollouts": AssetIn(dagster_type=Nothing)},
    config=ConfigMapping(config_fn=every_step("plan_label_shards", "label_shard", "record_labels"),
                         config_schema=MonteCarloLabelsConfig.to_config_schema()),
    automation_condition=follows_inputs(),
    description="Step labels estimated by Monte Carlo completions with the rollout's policy: Math-Shepherd's "
    "(labeler mc; hard: some completion from the step reaches the reference answer; soft: the share that do) "
    "and OmegaPRM-style binary search for the first error with the same estimate (labeler binary_search). "
    "Completions already in the tree are counted before sampling. The tree batches are spread over `shards` "
    "parallel labeling steps.",
)
def mc_labels(tot_rollouts):
    return record_labels(plan_label_shards(tot_rollouts=tot_rollouts).map(label_shard).collect())


@asset_check(asset=mc_labels, name=CHECK_MC_RATES,
             description="every step node has an mc label and the positive rates are neither ~0 nor ~1 (which would "
             "teach a PRM nothing)")
def mc_label_rates_sane(context) -> AssetCheckResult:
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(MC_ASSET), asset_partitions=[context.partition_key]), limit=1).records
    meta = {k: v.value for k, v in records[0].asset_materialization.metadata.items()}
    problems = []
    for name in meta["methods"]:
        rate = meta.get(f"{name}_positive_rate")
        if rate is None or not meta["min_positive_rate"] <= rate <= meta["max_positive_rate"]:
            problems.append(f"{name}: positive rate {rate}")
    if "mc" in meta["methods"] and meta["mc_labeled_steps"] != meta["step_nodes"]:
        problems.append(f"mc: {meta['mc_labeled_steps']} of {meta['step_nodes']} steps labeled")
    return AssetCheckResult(passed=not problems, severity=AssetCheckSeverity.WARN,
                            description="; ".join(problems) or "rates within bounds, every step labeled",
                            metadata={f"{k}_positive_rate": meta.get(f"{k}_positive_rate") for k in meta["methods"]})


# --- imported labels ---------------------------------------------------------------------


class ImportedLabelsConfig(Config):
    format: str | None = Field(None, description=f"{', '.join(LABELED_FORMATS)}; detected from the file's fields "
                               "when unset (as for prompt_set)")


@asset(
    partitions_def=prompt_set_partitions,
    group_name="labels",
    code_version="1",
    kinds={"duckdb"},
    deps=[AssetKey("prompt_set")],
    description="Human and published step labels from a process-supervision file in the inbox (PRM800K, "
    "Math-Shepherd, ProcessBench): one tree per problem, alternatives and solutions that share a prefix as "
    "siblings, labels under the format's name (prm800k: rating and hard; math_shepherd, processbench: hard). "
    "Other prompt sets have nothing to import. The labels are a reference for label_agreement and PRM evaluation, "
    "and a labeler for step_datasets.",
)
def imported_labels(context: AssetExecutionContext, config: ImportedLabelsConfig, store: LineageStoreResource,
                    data_dir: DataDirResource) -> MaterializeResult:
    lineage = store.store()
    path = labeled_inbox_file(context.partition_key, data_dir.inbox, config.format)
    if path is None:
        context.log.info(f"prompt set {context.partition_key!r} is no process-supervision file: nothing to import")
        return MaterializeResult(metadata={"imported": False})
    with recorded_run(context, lineage, config.model_dump()) as run:
        fmt, solutions = load_labeled(path, config.format)  # checked whole before anything is written
        version, problems = lineage.prompt_set_problems(context.partition_key)
        built = imported.build_import(fmt, solutions, context.partition_key, version, str(path),
                                      hashlib.sha256(path.read_bytes()).hexdigest(), context.run_id)
        missing = {t.problem.prompt_id for t in built.trees} - {p.prompt_id for p in problems}
        if missing:
            raise ValueError(f"{path} holds {len(missing)} problems the current version of prompt set "
                             f"{context.partition_key!r} lacks (the file changed since prompt_set ran); "
                             f"materialize prompt_set for {context.partition_key!r} again first")
        written = write_whole_rollout(lineage, built.rollout_id, built.node_rows, built.label_rows, built.tree_rows)
        with lineage.transaction() as con:
            run.finish(con)
    s = _label_stats(lineage, built.rollout_id, built.labeler)
    sibling_sets = sum(1 for t in built.trees for n in t.nodes.values() if len(n.children) > 1)
    context.log.info(f"{path.name}: {len(built.trees)} trees, {s['labeled_steps']} labeled steps "
                     f"({(s['positive_rate'] or 0):.1%} positive) as rollout {built.rollout_id}"
                     f"{'' if written else ' (already imported)'}")
    return MaterializeResult(metadata={
        "imported": True, "format": fmt, "labeler": built.labeler, "rollout_id": built.rollout_id,
        "written": written, "source": str(path), "solutions": len(solutions), "trees": len(built.trees),
        "nodes": len(built.node_rows), "labeled_steps": s["labeled_steps"], "positive_rate": s["positive_rate"],
        "prefixes_with_alternatives": sibling_sets,
        "positive_rate_by_depth": MetadataValue.md(bar_plots_markdown([
            (f"{built.labeler}: positive rate per depth", "share positive",
             {built.labeler: labels_db.positive_rate_by_depth(lineage, built.rollout_id, built.labeler)})])),
        "query": MetadataValue.md(f"```\nqstar sql \"select * from label_stats where labeler = '{built.labeler}'\"\n```"),
    })


# --- the judge --------------------------------------------------------------------------------


class JudgeModelConfig(spec_config(JudgeTrainSpec)):
    train_prompt_set: str = Field("arith-train", description="prompt set whose rollouts the judge learns from "
                                  "(not the one it will label)")
    rollout_id: str | None = Field(None, description="rollout to learn from; unset: the training set's latest")


@asset(
    group_name="labels",
    code_version="1",
    pool=GPU_POOL, op_tags=GPU_OP_TAGS,
    kinds={"pytorch"},
    deps=[AssetKey("tot_rollouts")],
    description="The built-in step judge (checkpoint kind judge): the policy fine-tuned to answer the PRM800K "
    "judge template on oracle-rated rollout paths of a training prompt set. For real models, point the judge "
    "resource at a large model instead; this asset is then not needed.",
)
def judge_model(context: AssetExecutionContext, config: JudgeModelConfig, store: LineageStoreResource,
                data_dir: DataDirResource, compute: ComputeResource) -> MaterializeResult:
    lineage = store.store()
    spec = to_spec(config, JudgeTrainSpec)
    with recorded_run(context, lineage, config.model_dump()) as run, forward_logs(context):
        rollout_id = resolve_rollout(lineage, config.train_prompt_set, config.rollout_id)
        built = build_judge(lineage, data_dir.subdir("checkpoints"), data_dir.subdir("datasets"), rollout_id, spec,
                            compute.torch_device(), context.run_id)
        with lineage.transaction() as con:
            if built.dataset_row:
                lineage.insert(con, "datasets", [built.dataset_row])
                lineage.insert(con, "dataset_members", built.member_rows)
            if built.checkpoint.row:
                lineage.insert(con, "checkpoints", [built.checkpoint.row])
            run.finish(con)
    ck, held = built.checkpoint, built.checkpoint.metrics
    return MaterializeResult(metadata={
        "checkpoint_id": ck.checkpoint_id, "path": str(ck.path), "reused": ck.reused,
        "trained_on_rollout": rollout_id, "heldout_paths": held["n_paths"], "heldout_parsed_rate": held["parsed_rate"],
        "heldout_step_accuracy": held["step_accuracy"], "heldout_negative_recall": held["negative_recall"],
        "heldout_first_error_f1": held["first_error_f1"],
        "loss_curve": MetadataValue.md(line_plots_markdown([
            ("judge training loss", "loss", {"loss": [tuple(p) for p in ck.training.get("loss_curve", [])[::10]]})])),
    })


class JudgeLabelsConfig(Config):
    rollout_id: str | None = Field(None, description="rollout to label; unset: the one the partition's "
                                   "tot_rollouts last made")
    labeler: str = Field("judge", description="name of these labels (give each judge model its own to compare)")
    batch_trees: int = Field(64, description="trees judged together; also the unit a killed run resumes by")
    replace: bool = Field(False, description="relabel when labels from another judge exist under this name")
    max_unparsed_rate: float = Field(0.05, description="check: warn above this share of unparsed judgements")


CHECK_UNPARSED = "judge_unparsed_rate"


@asset(
    partitions_def=prompt_set_partitions,
    group_name="labels",
    code_version="1",
    pool=GPU_POOL, op_tags=GPU_OP_TAGS,
    kinds={"pytorch", "duckdb"},
    deps=[AssetKey("tot_rollouts"), AssetKey("judge_model")],
    check_specs=[AssetCheckSpec(CHECK_UNPARSED, asset="judge_labels",
                                description="share of judgements the strict parser could not read")],
    description="AI-judge step labels following the PRM800K guideline (positive / neutral / negative, stop at "
    "the first negative) for every root-to-leaf path; unparseable answers are stored as unparsed with their "
    "raw text. The judge is the judge resource: the built-in checkpoint or any large model.",
)
def judge_labels(context: AssetExecutionContext, config: JudgeLabelsConfig, store: LineageStoreResource,
                 judge: JudgeResource, compute: ComputeResource) -> Iterator:
    lineage = store.store()
    with recorded_run(context, lineage, config.model_dump()) as run, forward_logs(context):
        rollout_id = partition_rollout(context, lineage, config.rollout_id)
        judge_id, load = judge.resolve(lineage, compute.torch_device(), compute.torch_dtype())
        pipeline.label_judge(lineage, rollout_id, load, judge_id, config.labeler, config.batch_trees,
                             config.replace, context.run_id)
        with lineage.transaction() as con:
            run.finish(con)
    s = _label_stats(lineage, rollout_id, config.labeler)
    unparsed_rate = s["unparsed"] / s["paths"] if s["paths"] else 0.0
    context.log.info(f"{config.labeler}: {s['labeled_steps']} steps labeled, {(s['positive_rate'] or 0):.1%} positive, "
                     f"{s['unparsed']} of {s['paths']} paths unparsed")
    yield MaterializeResult(metadata={
        "rollout_id": rollout_id, "judge": judge_id, "labeled_steps": s["labeled_steps"],
        "positive_rate": s["positive_rate"], "paths": s["paths"], "unparsed": s["unparsed"],
        "unparsed_rate": unparsed_rate, "cost_tokens": s["cost_tokens"],
        "positive_rate_by_depth": MetadataValue.md(bar_plots_markdown([
            ("judge: positive rate per depth", "share positive",
             {config.labeler: labels_db.positive_rate_by_depth(lineage, rollout_id, config.labeler)})])),
    })
    yield AssetCheckResult(check_name=CHECK_UNPARSED, passed=unparsed_rate <= config.max_unparsed_rate,
                           severity=AssetCheckSeverity.WARN,
                           description=f"{unparsed_rate:.1%} of judgements unparsed (threshold "
                           f"{config.max_unparsed_rate:.0%}); read them with qstar sql \"select raw from step_labels "
                           f"where labeler = '{config.labeler}' and kind = 'unparsed' limit 5\"",
                           metadata={"unparsed_rate": unparsed_rate})


# --- oracle, consensus, agreement ------------------------------------------------------------


class RolloutRefConfig(Config):
    rollout_id: str | None = Field(None, description="rollout; unset: the one the partition's tot_rollouts "
                                   "last made")


@asset(
    partitions_def=prompt_set_partitions,
    group_name="labels",
    code_version="1",
    kinds={"duckdb"},
    deps=[AssetKey("tot_rollouts")],
    automation_condition=follows_inputs(),
    description="Ground-truth step labels from the built-in domain's step checker: hard (step-correct, PRM800K's "
    "sense) and prefix (prefix-correct). Other domains have no oracle: nothing is written for them.",
)
def oracle_labels(context: AssetExecutionContext, config: RolloutRefConfig,
                  store: LineageStoreResource) -> MaterializeResult:
    lineage = store.store()
    with recorded_run(context, lineage, config.model_dump()) as run:
        rollout_id = partition_rollout(context, lineage, config.rollout_id)
        result = pipeline.label_oracle(lineage, rollout_id, context.run_id)
        with lineage.transaction() as con:
            run.finish(con)
    s = _label_stats(lineage, rollout_id, "oracle")
    return MaterializeResult(metadata={"rollout_id": rollout_id, "labeled_steps": s["labeled_steps"],
                                       "positive_rate": s["positive_rate"], "rows_written": result.n_rows_written})


class ConsensusConfig(RolloutRefConfig):
    first: str = Field("mc", description="labeler whose labels are kept")
    second: str = Field("judge", description="labeler that must agree")


@asset(
    partitions_def=prompt_set_partitions,
    group_name="labels",
    code_version="1",
    kinds={"duckdb"},
    deps=[AssetKey("mc_labels"), AssetKey("judge_labels")],
    description="Consensus filtering: a Monte Carlo hard label kept only where the judge gives the same label "
    "(labeler consensus). Fewer labels, fewer wrong ones.",
)
def consensus_labels(context: AssetExecutionContext, config: ConsensusConfig,
                     store: LineageStoreResource) -> MaterializeResult:
    lineage = store.store()
    with recorded_run(context, lineage, config.model_dump()) as run:
        rollout_id = partition_rollout(context, lineage, config.rollout_id)
        pipeline.label_consensus(lineage, rollout_id, config.first, config.second, context.run_id)
        with lineage.transaction() as con:
            run.finish(con)
    s = _label_stats(lineage, rollout_id, pipeline.CONSENSUS)
    first = _label_stats(lineage, rollout_id, config.first)
    return MaterializeResult(metadata={
        "rollout_id": rollout_id, "labeled_steps": s["labeled_steps"], "positive_rate": s["positive_rate"],
        f"kept_share_of_{config.first}": s["labeled_steps"] / first["labeled_steps"] if first["labeled_steps"] else None})


class AgreementConfig(RolloutRefConfig):
    references: list[str] = Field(list(pipeline.REFERENCE_LABELERS), description="labelers the others are measured "
                                  "against, where the rollout has them (the oracle; human labels of an imported file; "
                                  "or any labeler)")


def agreement_markdown(rows: list[dict]) -> str:
    head = "| labeler | reference | steps | accuracy | neg. precision | neg. recall | kappa | first-error F1 | tokens/step |\n"
    head += "|---|---|---|---|---|---|---|---|---|\n"

    def f(v, pct=True):
        return "–" if v is None else (f"{100 * v:.1f}%" if pct else f"{v:.3f}")

    for r in rows:
        per_step = r["cost_tokens"] / r["labeled_steps"] if r["labeled_steps"] else None
        head += (f"| {r['labeler']} | {r['reference']} | {r['n_steps']} | {f(r['accuracy'])} | "
                 f"{f(r['negative_precision'])} | {f(r['negative_recall'])} | {f(r['kappa'], False)} | "
                 f"{f(r['first_error_f1'], False)} | {'–' if per_step is None else f'{per_step:.1f}'} |\n")
    return head


@asset(
    partitions_def=prompt_set_partitions,
    group_name="labels",
    code_version="1",
    kinds={"duckdb"},
    deps=[AssetKey("mc_labels"), AssetKey("judge_labels"), AssetKey("oracle_labels"), AssetKey("consensus_labels"),
          AssetKey("imported_labels")],
    automation_condition=follows_inputs(),
    description="Every labeler against the oracle (up to each solution's first error) or an imported file's human "
    "labels, and against each other: "
    "accuracy, precision and recall of negative steps, Cohen's kappa, ProcessBench first-error F1, with "
    "confusion matrices. Query it with: qstar sql \"select * from label_agreement\".",
)
def label_agreement(context: AssetExecutionContext, config: AgreementConfig,
                    store: LineageStoreResource) -> MaterializeResult:
    lineage = store.store()
    with recorded_run(context, lineage, config.model_dump()) as run:
        rollout_id = partition_rollout(context, lineage, config.rollout_id)
        rows = pipeline.agreement_rows(lineage, rollout_id, context.run_id, config.references)
        labels_db.replace_agreements(lineage, rollout_id, rows)
        with lineage.transaction() as con:
            run.finish(con)
    # the metadata's figures are against the first reference the rollout has (the oracle's, where it has one)
    primary = rows[0]["reference"] if rows and rows[0]["reference"] in config.references else None
    vs_ref = [r for r in rows if r["reference"] == primary]
    for r in rows:
        context.log.info(f"{r['labeler']} vs {r['reference']}: accuracy {r['accuracy']}, F1 {r['first_error_f1']}")
    shown = vs_ref or rows
    return MaterializeResult(metadata={
        "rollout_id": rollout_id,
        "agreement": MetadataValue.md(agreement_markdown(rows)),
        "confusion_matrices": MetadataValue.md(heatmaps_markdown(
            [(f"{r['labeler']} vs {r['reference']}", r["confusion"]) for r in shown],
            ("reference wrong", "reference right"), ("says wrong", "says right"))),
        "reference": primary,
        **{f"{r['labeler']}_accuracy": r["accuracy"] for r in vs_ref},
        **{f"{r['labeler']}_first_error_f1": r["first_error_f1"] for r in vs_ref},
        "query": MetadataValue.md(f"```\nqstar sql \"select * from label_agreement where rollout_id = "
                                  f"'{rollout_id}'\"\n```"),
        "rows": MetadataValue.json(json.loads(json.dumps(rows, default=str))),
    })
