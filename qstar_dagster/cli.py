"""The `qstar` command: run the embedded pipeline, query the lineage store."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from qstar_dagster.resources import default_home, default_store_path

DAGSTER_YAML = """\
# Written by `qstar init`: the Dagster instance of this data directory.
telemetry:
  enabled: false
"""


def _home() -> Path:
    return Path(default_home())


def _store_path() -> Path:
    return default_store_path(_home())


def prepare_instance(home: Path):
    """The Dagster instance under `home`/dagster, with telemetry off and the built-in
    prompt sets registered as partitions."""
    from dagster import DagsterInstance

    from qstar_dagster.assets.prompts import builtin_partition_keys, prompt_set_partitions

    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home / "dagster")
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():
        (dagster_home / "dagster.yaml").write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    (home / "inbox").mkdir(parents=True, exist_ok=True)
    instance = DagsterInstance.get()
    existing = set(instance.get_dynamic_partitions(prompt_set_partitions.name))
    missing = [k for k in builtin_partition_keys() if k not in existing]
    if missing:
        instance.add_dynamic_partitions(prompt_set_partitions.name, missing)
    return instance


@click.group()
def main() -> None:
    """qstar-dagster: the Q* data factory. Data directory: $QSTAR_HOME (default ./.qstar)."""


@main.command()
def init() -> None:
    """Create the data directory, its Dagster instance and the lineage store."""
    from qstar_dagster.lineage import LineageStore

    home = _home()
    prepare_instance(home)
    LineageStore(_store_path())
    click.echo(f"data directory {home}\nDagster instance {os.environ['DAGSTER_HOME']}\nlineage store {_store_path()}")


def _json_option(value: str | None, name: str) -> dict:
    try:
        return json.loads(value) if value else {}
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON ({e}); e.g. '{{\"steps\": 300}}'", param_hint=name) from None


# The prompt sets the demo searches: the held-out test set, which the demo labels, and a
# slice of the training set, which the built-in judge learns from (all 60k training
# problems would take hours on a CPU).
DEMO_TEST_SET = "arith-test"
DEMO_TRAIN_SET = "arith-train"
DEMO_TRAIN_PROBLEMS = 384
LABEL_ASSETS = ("mc_labels", "judge_labels", "oracle_labels", "consensus_labels", "label_agreement")


@main.command()
@click.option("--prompt-set", "prompt_sets", multiple=True, help="materialize only these sets (default: built-in)")
@click.option("--policy-config", help='JSON config for the base_policy asset, e.g. \'{"steps": 300}\'')
@click.option("--rollout-config", help='JSON config for the tot_rollouts asset, e.g. \'{"algorithm": "mcts"}\'')
@click.option("--judge-config", help='JSON config for the judge_model asset, e.g. \'{"steps": 200}\'')
@click.option("--label-config", help='JSON config for the mc_labels asset, e.g. \'{"n": 4}\'')
def demo(prompt_sets: tuple[str, ...], policy_config: str | None, rollout_config: str | None,
         judge_config: str | None, label_config: str | None) -> None:
    """Run the embedded pipeline into the data directory: the built-in prompt sets, the base
    policy, tree-of-thoughts rollouts (test set, and a training slice for the judge), the
    built-in judge, then step labels on the test rollouts and their agreement."""
    from dagster import AssetKey

    from qstar_dagster.assets.prompts import builtin_partition_keys
    from qstar_dagster.definitions import make_definitions

    home = _home()
    policy = _json_option(policy_config, "--policy-config")
    rollouts = _json_option(rollout_config, "--rollout-config")
    judge = _json_option(judge_config, "--judge-config")
    mc = _json_option(label_config, "--label-config")
    instance = prepare_instance(home)
    defs = make_definitions(str(home))
    run_config = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    started = time.monotonic()

    def execute(job_name: str, what: str, partition_key: str | None = None, asset: str | None = None,
                config: dict | None = None):
        click.echo(f"== {what}")
        ops = {asset: {"config": config}} if config else {}
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, partition_key=partition_key, raise_on_error=False,
            asset_selection=[AssetKey(asset)] if asset else None, run_config={**run_config, "ops": ops})
        if not result.success:
            click.echo(f"run {result.run_id} ({what}) failed; see its logs above or in `make ui`", err=True)
            sys.exit(1)
        return {k: v.value for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()}

    for key in list(prompt_sets) or builtin_partition_keys():
        execute("embedded_pipeline", f"prompt set {key}", key, "prompt_set")
    meta = execute("base_policy_job", "base policy (trained on the first run, then loaded)", asset="base_policy",
                   config=policy)
    searched = {key: execute("embedded_pipeline", f"tree-of-thoughts rollouts, prompt set {key}", key, "tot_rollouts",
                             config) for key, config in [
        (DEMO_TEST_SET, rollouts), (DEMO_TRAIN_SET, {"max_problems": DEMO_TRAIN_PROBLEMS, **rollouts})]}
    judged = execute("judge_model_job", f"built-in judge (trained on {DEMO_TRAIN_SET} rollouts)", asset="judge_model",
                     config=judge)
    for asset in LABEL_ASSETS:
        execute("embedded_pipeline", f"{asset}, prompt set {DEMO_TEST_SET}", DEMO_TEST_SET, asset,
                mc if asset == "mc_labels" else None)
    click.echo(f"\ndone in {time.monotonic() - started:.1f}s; data directory {home}\n")
    _print_sql("SELECT prompt_set, domain, count(*) AS prompts FROM prompts GROUP BY ALL ORDER BY 1", as_json=False)
    k = next(key.removeprefix("pass_at_") for key in meta if key.startswith("pass_at_"))
    trained = (f"trained in {meta['train_seconds']:.0f}s, {meta['n_parameters']:,} parameters"
               if "train_seconds" in meta else "given model")
    click.echo(f"base policy {meta['checkpoint_id']} ({trained}{'; already recorded' if meta['reused'] else ''})\n"
               f"  on {meta['eval_prompt_set']}: greedy {meta['greedy_accuracy']:.1%}, "
               f"pass@{k} {meta[f'pass_at_{k}']:.1%}, majority@{k} {meta[f'majority_at_{k}']:.1%}\n"
               f"  all evaluations: qstar sql \"SELECT * FROM evaluations\"")
    for key, r in searched.items():
        click.echo(f"rollouts {r['rollout_id']} on {key}: {r['algorithm']} (value {r['value_function']}), "
                   f"{r['trees']} trees, {r['nodes']} nodes, {r['tokens_per_second']:.0f} tokens/s\n"
                   f"  selected-path accuracy {r['selected_accuracy']:.1%}, any path correct {r['pass_at_k']:.1%}\n"
                   f"  walk the trees: qstar sql \"SELECT steps, answer, is_correct FROM rollout_paths "
                   f"WHERE rollout_id = '{r['rollout_id']}' LIMIT 5\"")
    click.echo(f"judge {judged['checkpoint_id']}: on held-out training paths, step accuracy "
               f"{judged['heldout_step_accuracy']:.1%}, first-error F1 {judged['heldout_first_error_f1']:.3f}\n"
               f"step labels on {DEMO_TEST_SET}, against the oracle (qstar sql \"SELECT * FROM label_agreement\"):")
    _print_sql(f"""SELECT labeler, n_steps, accuracy, negative_precision, negative_recall, kappa, first_error_f1,
                          labeled_steps, tokens_per_step
                   FROM label_agreement WHERE reference = 'oracle' AND rollout_id = '{searched[DEMO_TEST_SET]['rollout_id']}'
                   ORDER BY labeler""", as_json=False)


def _require_store():
    """The store of the data directory, migrated; a clear error when there is none."""
    from qstar_dagster.lineage import LineageStore

    path = _store_path()
    if not path.exists():
        raise click.ClickException(f"no lineage store at {path}; run `make demo` (or `qstar init`) first, "
                                   "or set QSTAR_HOME to your data directory")
    return LineageStore(path)


def _open_read_only():
    import duckdb

    _require_store()  # applies any pending migrations before reading
    return duckdb.connect(str(_store_path()), read_only=True)


def _print_sql(query: str, as_json: bool, max_rows: int = 100) -> None:
    import duckdb

    con = _open_read_only()
    try:
        rel = con.sql(query)
        if rel is None:
            return
        if as_json:
            columns = rel.columns
            click.echo(json.dumps([dict(zip(columns, r)) for r in rel.fetchall()], indent=2, default=str))
        else:
            rel.show(max_rows=max_rows, max_width=200)
    except duckdb.Error as e:
        raise click.ClickException(f"{type(e).__name__}: {e}") from None
    finally:
        con.close()


@main.command()
@click.argument("query")
@click.option("--json", "as_json", is_flag=True, help="print rows as a JSON list of objects")
@click.option("--max-rows", default=100, show_default=True)
def sql(query: str, as_json: bool, max_rows: int) -> None:
    """Run a read-only SQL QUERY on the lineage store and print the result."""
    _print_sql(query, as_json, max_rows)


@main.command()
@click.argument("artifact_id")
@click.option("--json", "as_json", is_flag=True, help="print the edges as JSON")
def lineage(artifact_id: str, as_json: bool) -> None:
    """Print the ancestry of ARTIFACT_ID: a prompt, node, step label, dataset, checkpoint,
    evaluation, or a prompt set as 'name@version'."""
    edges = _require_store().lineage(artifact_id)
    if not edges:
        raise click.ClickException(f"{artifact_id!r} has no recorded lineage (unknown id?); "
                                   "try `qstar sql \"select * from lineage_edges limit 20\"`")
    if as_json:
        click.echo(json.dumps([e.__dict__ for e in edges], indent=2))
        return
    parents: dict[str, list] = {}
    kinds = {artifact_id: edges[0].child_kind}
    for e in edges:
        parents.setdefault(e.child_id, []).append(e)
        kinds.setdefault(e.parent_id, e.parent_kind)
    click.echo(f"{artifact_id} ({kinds[artifact_id]})")

    def walk(node: str, indent: int, seen: frozenset) -> None:
        for e in parents.get(node, []):
            again = " (see above)" if e.parent_id in seen else ""
            click.echo(f"{'  ' * indent}└─ {e.relation} → {e.parent_id} ({e.parent_kind}){again}")
            if not again:
                walk(e.parent_id, indent + 1, seen | {e.parent_id})

    walk(artifact_id, 1, frozenset({artifact_id}))


@main.command()
@click.argument("model_path")
@click.option("--host", default="127.0.0.1", show_default=True, help="bind address (loopback by default)")
@click.option("--port", default=8000, show_default=True)
@click.option("--name", default=None, help="model name served in /v1/models (default: the path's last part)")
@click.option("--device", default="cpu", show_default=True)
def serve(model_path: str, host: str, port: int, name: str | None, device: str) -> None:
    """Serve a local model over an OpenAI-compatible API (/v1/completions, /v1/chat/completions,
    /v1/models) through the transformers backend."""
    import uvicorn

    from qstar_dagster.generation.hf import ModelNotFoundError, TransformersGenerator
    from qstar_dagster.generation.server import make_app

    try:
        gen = TransformersGenerator(model_path, device=device)
    except ModelNotFoundError as e:
        raise click.ClickException(str(e)) from None
    uvicorn.run(make_app(gen, name or Path(model_path).name), host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
