"""Evaluation of every policy checkpoint, alone and with every PRM checkpoint, on a held-out
prompt set; results in the store's evaluations table. Core: `qstar_dagster/evaluation/`.

(No `from __future__ import annotations`: Dagster reads these annotations.)"""


from dagster import AssetExecutionContext, AssetKey, MaterializeResult, MetadataValue, asset
from pydantic import Field

from qstar_dagster.assets._config import spec_config, to_spec
from qstar_dagster.assets._runs import forward_logs, recorded_run
from qstar_dagster.assets.prompts import prompt_set_partitions
from qstar_dagster.evaluation.evaluate import (
    AGGREGATIONS,
    EvalSpec,
    policy_metrics,
    prm_metrics,
    sample,
    score_samples,
)
from qstar_dagster.generation.backends import check_backend
from qstar_dagster.lineage import artifacts
from qstar_dagster.lineage import labels as labels_db
from qstar_dagster.lineage.rollouts import held_out_rollout, imported_rollouts
from qstar_dagster.plots import line_plots_markdown
from qstar_dagster.resources import LineageStoreResource
from qstar_dagster.resources.compute import GPU_OP_TAGS, GPU_POOL, ComputeResource
from qstar_dagster.search.rollouts import load_trees
from qstar_dagster.tasks.domains import domain, votes_apply
from qstar_dagster.training.prm import PRMScorer, evaluate_prm


class EvaluationConfig(spec_config(EvalSpec)):
    eval_prompt_set: str = Field("arith-test", description="held-out prompt set")
    policies: list[str] | None = Field(None, description="policy checkpoint ids; unset: the partition's (those "
                                       "trained on the training prompt set, and the base policies they started from)")
    prms: list[str] | None = Field(None, description="PRM checkpoint ids; unset: those trained on the partition's "
                                   "prompt set")
    label_sets: list[str] = Field([], description="imported prompt sets (PRM800K, Math-Shepherd, ProcessBench files) "
                                  "to score every PRM on against their labels: ProcessBench's first-error accuracies "
                                  "and F1, step accuracy and AUC, sibling accuracy")
    backend: str = Field("transformers", description="transformers, or vllm (extra gpu)")


# a PRM's figures against reference step labels (evaluate_prm), as evaluations methods prm_<figure>
PRM_FIGURES = ("step_accuracy", "step_auc", "first_error_f1", "first_error_accuracy_erroneous",
               "first_error_accuracy_correct", "sibling_accuracy")


def method_name(method: str, n: int) -> str:
    """The evaluations table's method names: 'greedy', 'pass@8', 'majority@8',
    'prm_best_of_8:min', 'prm_vote@8' (its `n` column is the number of problems)."""
    if method == "greedy":
        return "greedy"
    if method.startswith("prm_best_of:"):
        return f"prm_best_of_{n}:{method.split(':')[1]}"
    return f"{method}@{n}"


def _rows(checkpoints: list[str], figures: dict, key: dict, n: int, run_id: str) -> list[dict]:
    """figures: method name -> accuracy; key: the prompt set, its version and the spec."""
    return artifacts.evaluation_rows(checkpoints, figures, stage="evaluation", prompt_set=key["prompt_set"],
                                     version=key["version"], settings=key["spec"], n=n, run_id=run_id)


def _named(metrics: dict) -> dict:
    """(method, N) -> accuracy, as method name -> accuracy."""
    return {method_name(m, k): acc for (m, k), acc in metrics.items()}


@asset(
    partitions_def=prompt_set_partitions,  # the training prompt set whose checkpoints it measures
    group_name="evaluation", code_version="1", pool=GPU_POOL, op_tags=GPU_OP_TAGS, kinds={"pytorch", "duckdb"},
    deps=[AssetKey("base_policy"), AssetKey("prm_model"), AssetKey("rft_policy"), AssetKey("dpo_policy"),
          AssetKey("step_ppo_policy")],
    description="The checkpoints of a training prompt set (its partition) on a held-out prompt set: greedy, "
    "pass@N and majority@N, and with every PRM: best-of-N (min / prod / last of step scores) and PRM-weighted "
    "vote, for N in 1..16; every PRM against the oracle's step labels (accuracy, first-error F1, sibling "
    "accuracy), and against the labels of imported prompt sets (label_sets: ProcessBench's metric). Rows in the "
    "evaluations table; accuracy-vs-N plots.",
)
def evaluation(context: AssetExecutionContext, config: EvaluationConfig, store: LineageStoreResource,
               compute: ComputeResource) -> MaterializeResult:
    lineage = store.store()
    check_backend(config.backend)
    spec = to_spec(config, EvalSpec, ns=tuple(sorted(set(config.ns))))
    with recorded_run(context, lineage, config.model_dump()) as run, forward_logs(context):
        version, problems = lineage.prompt_set_problems(config.eval_prompt_set)
        key = {"prompt_set": config.eval_prompt_set, "version": version, "spec": spec.__dict__}
        policies = [lineage.checkpoint(c, "policy") for c in config.policies] if config.policies else \
            artifacts.checkpoints_of_prompt_set(lineage, "policy", context.partition_key)
        prms = [lineage.checkpoint(c, "prm") for c in config.prms] if config.prms else \
            artifacts.checkpoints_of_prompt_set(lineage, "prm", context.partition_key)
        scorers = {p["checkpoint_id"]: PRMScorer(p["path"], compute.torch_device()) for p in prms}
        for prm in prms:  # the PRM against the oracle on the held-out rollout of the policy it started from
            rollout = held_out_rollout(lineage, config.eval_prompt_set, prm["base"])
            trees = load_trees(lineage, rollout) if rollout else []
            if trees and all(domain(t.problem.domain).has_oracle for t in trees):
                m = evaluate_prm(scorers[prm["checkpoint_id"]], trees)
                rows = _rows([prm["checkpoint_id"]], {f"prm_{f}": m[f] for f in PRM_FIGURES}, key, m["n_steps"],
                             context.run_id)
                with lineage.transaction() as con:
                    lineage.insert(con, "evaluations", rows)
        for name in config.label_sets:  # every PRM against an imported file's labels
            rows = _label_set_rows(lineage, name, prms, scorers, context)
            with lineage.transaction() as con:
                lineage.insert(con, "evaluations", rows)
        voting = votes_apply(problems)
        for policy in policies:
            pid = policy["checkpoint_id"]
            # the figures a sweep writes (no votes where the domain has none, e.g. Countdown)
            alone = ("pass", "random") + (("majority",) if voting else ())
            with_prm = [f"prm_best_of:{a}" for a in AGGREGATIONS] + (["prm_vote"] if voting else [])
            wanted = _rows([pid], _named({(m, n): 0 for m in alone for n in spec.ns} | {("greedy", 1): 0}), key, 0, "")
            wanted += [r for prm in prms for r in _rows([pid, prm["checkpoint_id"]], _named({
                (m, n): 0 for m in with_prm for n in spec.ns}), key, 0, "")]
            have = {r["eval_id"] for r in artifacts.evaluations_by_id(lineage, [r["eval_id"] for r in wanted])}
            if len(have) == len(wanted):
                context.log.info(f"{pid}: already evaluated on {config.eval_prompt_set}")
                continue
            template = artifacts.checkpoint_template(policy)
            gen = compute.policy_generator(policy, config.backend)
            sampled = sample(gen, problems, spec, template)
            rows = _rows([pid], _named(policy_metrics(sampled, spec.ns)), key, len(problems), context.run_id)
            for prm in prms:
                scores = score_samples(scorers[prm["checkpoint_id"]], sampled)
                rows += _rows([pid, prm["checkpoint_id"]], _named(prm_metrics(sampled, scores, spec.ns)), key,
                              len(problems), context.run_id)
            with lineage.transaction() as con:
                lineage.insert(con, "evaluations", rows)
            context.log.info(f"{pid}: evaluated on {config.eval_prompt_set} ({len(rows)} figures)")
        with lineage.transaction() as con:
            run.finish(con)
    table = results_table(lineage, config.eval_prompt_set, version)
    panels = []
    for pid, curves in accuracy_curves(lineage, config.eval_prompt_set, version).items():
        panels.append((f"{pid}", "accuracy", curves))
    return MaterializeResult(metadata={
        "policies": len(policies), "prms": len(prms), "eval_prompt_set": config.eval_prompt_set,
        "summary": MetadataValue.md(table),
        "accuracy_vs_n": MetadataValue.md(line_plots_markdown(panels)),
        "query": MetadataValue.md("```\nqstar sql \"select checkpoint_ids, method, accuracy from evaluations "
                                  f"where prompt_set = '{config.eval_prompt_set}' order by 1, 2\"\n```"),
    })


def _label_set_rows(lineage, name: str, prms: list[dict], scorers: dict, context) -> list[dict]:
    imports = imported_rollouts(lineage, name)
    if not imports:
        raise LookupError(f"evaluation.label_sets: prompt set {name!r} has no imported labels; put its PRM800K, "
                          f"Math-Shepherd or ProcessBench file in the inbox and materialize imported_labels for it")
    rollout, labeler = imports[0]["rollout_id"], imports[0]["format"]
    reference = labels_db.as_positive(labels_db.label_values(lineage, rollout, ("hard",), labeler)[(labeler, "hard")])
    trees = load_trees(lineage, rollout)
    version, _ = lineage.prompt_set_problems(name)
    key = {"prompt_set": name, "version": version, "spec": {"reference": labeler, "rollout_id": rollout}}
    rows = []
    for prm in prms:
        m = evaluate_prm(scorers[prm["checkpoint_id"]], trees, reference=reference)
        rows += _rows([prm["checkpoint_id"]], {f"prm_{f}": m[f] for f in PRM_FIGURES}, key, m["n_steps"],
                      context.run_id)
        context.log.info(f"{prm['checkpoint_id']} on {name} ({labeler} labels): ProcessBench F1 "
                         f"{m['first_error_f1']}, step accuracy {m['step_accuracy']}, sibling accuracy "
                         f"{m['sibling_accuracy']} ({m['sibling_pairs']} pairs)")
    return rows


def accuracy_curves(store, prompt_set: str, version: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """policy id -> method (with the PRM's id) -> [(N, accuracy)]."""
    out: dict[str, dict[str, list]] = {}
    for r in artifacts.latest_sweep(store, prompt_set, version):
        ids, method = r["checkpoint_ids"], r["method"]
        if method == "greedy" or "@" not in method and "_of_" not in method:
            continue
        if "_of_" in method:
            n, agg = method.removeprefix("prm_best_of_").split(":")
            name = f"PRM best-of-N ({agg})"
        else:
            name, n = method.split("@")
        if len(ids) > 1:
            name += f" [{ids[1]}]"
        out.setdefault(ids[0], {}).setdefault(name, []).append((int(n), r["accuracy"]))
    return {p: {m: sorted(v) for m, v in curves.items()} for p, curves in out.items()}


def results_table(store, prompt_set: str, version: str, n: int = 8) -> str:
    figures: dict[str, dict[str, float]] = {}
    for r in artifacts.latest_sweep(store, prompt_set, version):
        figures.setdefault(r["checkpoint_ids"][0], {})[r["method"] if len(r["checkpoint_ids"]) == 1 else
                                                       f"{r['method']}|{r['checkpoint_ids'][1]}"] = r["accuracy"]
    lines = [f"| policy | greedy | majority@{n} | PRM best-of-{n} (min) | PRM vote@{n} | pass@{n} |", "|---|---|---|---|---|---|"]

    def pct(v):
        return "–" if v is None else f"{100 * v:.1f}%"

    for pid, f in figures.items():
        best = max((v for k, v in f.items() if k.startswith(f"prm_best_of_{n}:min|")), default=None)
        vote = max((v for k, v in f.items() if k.startswith(f"prm_vote@{n}|")), default=None)
        lines.append(f"| {pid} | {pct(f.get('greedy'))} | {pct(f.get(f'majority@{n}'))} | {pct(best)} | {pct(vote)} | "
                     f"{pct(f.get(f'pass@{n}'))} |")
    return "\n".join(lines)
