"""The `qstar` command: run the embedded pipeline, query the lineage store."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from qstar_dagster.lineage import queries
from qstar_dagster.resources import default_home, default_store_path
from qstar_dagster.rounds import ROUND_LABELERS, RoundSpec
from qstar_dagster.spec import help_of

WRITTEN_BY = "# Written by `qstar init`"


def instance_yaml(gpus: int, postgres: bool) -> str:
    """The data directory's Dagster instance: telemetry off; the `gpu` pool (every asset that
    loads a model declares it) limited to the machine's GPUs, so steps never share one; with
    `postgres`, runs, events and schedules in PostgreSQL ($QSTAR_DAGSTER_POSTGRES_URL), which
    a webserver, a daemon and many run workers can share, instead of SQLite files here."""
    text = f"""{WRITTEN_BY}: the Dagster instance of this data directory.
telemetry:
  enabled: false
"""
    if gpus:
        text += f"""concurrency:
  pools:
    # the only pool is `gpu`: at most this many model-loading steps run at once
    default_limit: {gpus}
"""
    else:
        text += "# no GPU here: the `gpu` pool has no limit (`qstar init --gpus N` sets one)\n"
    if postgres:
        text += """storage:
  postgres:
    postgres_url:
      env: QSTAR_DAGSTER_POSTGRES_URL
"""
    return text


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _home() -> Path:
    return Path(default_home())


def _store_path() -> str | Path:
    return default_store_path(_home())


def prepare_instance(home: Path, gpus: int | None = None):
    """The Dagster instance under `home`/dagster (instance_yaml; a dagster.yaml someone else
    wrote is left as it is), its `gpu` pool limit set, the built-in prompt sets registered as
    partitions."""
    from dagster import DagsterInstance

    from qstar_dagster.assets.prompts import builtin_partition_keys, prompt_set_partitions
    from qstar_dagster.resources.compute import GPU_POOL

    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home / "dagster")
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    gpus = _gpu_count() if gpus is None else gpus
    instance_db = os.environ.get("QSTAR_DAGSTER_POSTGRES_URL", "")
    if instance_db and not instance_db.startswith("postgresql+psycopg2://"):
        # SQLAlchemy 2.1 reads a plain postgresql:// as psycopg 3, on which dagster-postgres's
        # NOTIFY fails; the lineage store's QSTAR_STORE is the plain form (libpq reads it)
        raise click.ClickException("QSTAR_DAGSTER_POSTGRES_URL must name the psycopg2 driver: "
                                   "postgresql+psycopg2://user:password@host:5432/dagster")
    if not config.exists() or config.read_text().startswith(WRITTEN_BY):
        config.write_text(instance_yaml(gpus, postgres=bool(instance_db)))
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    (home / "inbox").mkdir(parents=True, exist_ok=True)
    instance = DagsterInstance.get()
    if gpus and instance.event_log_storage.get_concurrency_info(GPU_POOL).slot_count != gpus:
        instance.event_log_storage.set_concurrency_slots(GPU_POOL, gpus)
    existing = set(instance.get_dynamic_partitions(prompt_set_partitions.name))
    missing = [k for k in builtin_partition_keys() if k not in existing]
    if missing:
        instance.add_dynamic_partitions(prompt_set_partitions.name, missing)
    return instance


@click.group()
def main() -> None:
    """qstar-dagster: the Q* data factory. Data directory: $QSTAR_HOME (default ./.qstar)."""


@main.command()
@click.option("--gpus", type=int, default=None,
              help="limit of the `gpu` pool: model-loading steps at once (default: this machine's GPUs; none: no limit)")
def init(gpus: int | None) -> None:
    """Create the data directory, its Dagster instance and the lineage store. With
    QSTAR_DAGSTER_POSTGRES_URL set, the instance keeps its runs in that PostgreSQL database;
    with QSTAR_STORE=postgresql://..., the lineage store is the shared one there."""
    from qstar_dagster.lineage import LineageStore

    home = _home()
    instance = prepare_instance(home, gpus)
    store = LineageStore(_store_path())
    click.echo(f"data directory {home}\nDagster instance {os.environ['DAGSTER_HOME']} "
               f"({type(instance.run_storage).__name__}; gpu pool limit "
               f"{instance.event_log_storage.get_concurrency_info('gpu').slot_count or 'none'})\n"
               f"lineage store {store.path}")


def _json_option(value: str | None, name: str) -> dict:
    try:
        return json.loads(value) if value else {}
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON ({e}); e.g. '{{\"steps\": 300}}'", param_hint=name) from None


# The demo runs each built-in domain in turn. It searches the held-out test set, which it labels
# against the oracle, and a slice of the training set, which the built-in judge learns from and
# round 1 trains on (all 60k training problems would take hours on a CPU).
DEMO_DOMAINS = ("arith", "countdown")
DEMO_TEST_SET = "arith-test"
DEMO_TRAIN_SET = "arith-train"
DEMO_TRAIN_PROBLEMS = 384
LABEL_ASSETS = ("mc_labels", "judge_labels", "oracle_labels", "consensus_labels", "label_agreement")
# Round 1's training budget in the demo, where the assets' defaults train longer: a full epoch
# of the demo's ~1,500 step pairs is ~100 s of step-DPO on 2 cores; 48 steps is half of it.
# Step-PPO: 4 iterations of 16 problems x 4 samples (~30 s) show the stage work, not what it can gain
# (bench/step_rl.py trains longer).
# The round's evaluation measures every checkpoint, so the training assets skip their own look
# (`measure`), and it samples N up to 8, what the summary reads (16 would double its sampling).
DEMO_ROUND_TRAINING = {"prm_model": {"measure": False}, "rft_policy": {"measure": False},
                       "dpo_policy": {"steps": 48, "measure": False},
                       "step_ppo_policy": {"iterations": 4, "problems_per_iteration": 16, "eval_every": 0,
                                           "measure": False}}
DEMO_EVALUATION = {"ns": [1, 2, 4, 8]}
# Round 1 learns from binary-search labels: ~6k generated tokens on the training slice where
# Monte Carlo's are ~1.2M (70-80 s a leg), and the verifier PRM calibrated on them votes within
# a point of the Monte Carlo one (bench/prm.py --backbones). The test set still gets both, for
# their agreement with the oracle.
DEMO_ROUND_LABELER = "binary_search"


def _fmt(value, spec: str) -> str:
    """A figure, or a dash where there is none (e.g. no wrong step to measure recall on)."""
    return "–" if value is None else format(value, spec)


def _dagster(home: Path):
    """The code location's definitions over `home` and its Dagster instance."""
    from qstar_dagster.definitions import make_definitions

    return make_definitions(str(home)), prepare_instance(home)


def _run_round(defs, instance, spec: RoundSpec) -> dict:
    """Round `spec.round` as one run of the round job, in process, in the data directory's instance."""
    from qstar_dagster.rounds import ROUND_JOB, plan_round, run_round

    store = _require_store()
    plan = plan_round(store, spec)
    click.echo(f"== round {spec.round}: one run of {ROUND_JOB} for partition {plan.partition}: rollouts by "
               f"{plan.policy}{f', guided by {plan.prm}' if plan.prm else ''}; {', '.join(plan.assets[1:])}")
    return run_round(store, defs.resolve_job_def(ROUND_JOB), instance, spec, run=plan)


@main.command()
@click.option("--domain", "domains", multiple=True, type=click.Choice(DEMO_DOMAINS),
              help=f"run only these domains (default: {', '.join(DEMO_DOMAINS)}, in that order)")
@click.option("--policy-config", help='JSON config for the base_policy asset, e.g. \'{"shipped": false, "steps": 300}\'')
@click.option("--rollout-config", help='JSON config for the tot_rollouts asset, e.g. \'{"algorithm": "mcts"}\'')
@click.option("--with-judge", is_flag=True, help="also train the built-in judge and label the arithmetic test "
              "rollouts with it (about 4 more minutes on 2 cores)")
@click.option("--judge-config", help='JSON config for the judge_model asset, e.g. \'{"steps": 200}\'; implies '
              '--with-judge')
@click.option("--label-config", help='JSON config for the mc_labels asset, e.g. \'{"n": 4}\'')
@click.option("--round-config", help='JSON overrides of round 1 (qstar_dagster.rounds.RoundSpec), e.g. '
              '\'{"training": {"prm_model": {"epochs": 5}}, "evaluation": {"ns": [1, 4, 16]}}\'')
def demo(domains: tuple[str, ...], policy_config: str | None, rollout_config: str | None, with_judge: bool,
         judge_config: str | None, label_config: str | None, round_config: str | None) -> None:
    """Run the embedded pipeline into the data directory, for each built-in domain: its prompt
    sets, its base policy (shipped with the package), rollouts on the test set and a training
    slice, step labels on the test rollouts with their agreement (and the built-in judge's,
    --with-judge, on arithmetic), then expert-iteration round 1 (labels, datasets, PRM / RFT /
    DPO / step-PPO checkpoints, evaluation) and the summary."""
    from qstar_dagster.rounds import StageFailed, make_executor
    from qstar_dagster.tasks.prompt_sets import DOMAIN_SETS

    home = _home()
    options = {"policy": _json_option(policy_config, "--policy-config"),
               "rollouts": _json_option(rollout_config, "--rollout-config"),
               "judge": _json_option(judge_config, "--judge-config") if with_judge or judge_config else None,
               "labels": _json_option(label_config, "--label-config"),
               "round": _json_option(round_config, "--round-config")}
    defs, instance = _dagster(home)
    execute = make_executor(defs.resolve_job_def, instance, click.echo)
    started, legs = time.monotonic(), []
    try:
        for name in domains or DEMO_DOMAINS:
            leg_started = time.monotonic()
            legs.append(_demo_leg(defs, instance, execute, *DOMAIN_SETS[name], options, judge=name == "arith"))
            legs[-1]["seconds"] = time.monotonic() - leg_started
    except StageFailed as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"\ndone in {time.monotonic() - started:.1f}s ("
               + ", ".join(f"{leg['train_set'].split('-')[0]} {leg['seconds']:.0f}s" for leg in legs)
               + f"); data directory {home}\n")
    _print_sql(queries.PROMPT_SET_SIZES, as_json=False)
    for leg in legs:
        _print_leg(leg)


def _demo_leg(defs, instance, execute, train_set: str, test_set: str, options: dict, judge: bool) -> dict:
    """One domain's part of the demo: its sets, base policy, rollouts, labels and round 1."""
    rollouts, mc, judged = options["rollouts"], options["labels"], None
    click.echo(f"\n=== {train_set.split('-')[0]}: {train_set} / {test_set}")
    for key in (train_set, test_set):
        execute("embedded_pipeline", f"prompt set {key}", key, "prompt_set", None)
    meta = execute("base_policy_job", f"base policy for {train_set} (shipped with the package, then recorded)", None,
                   "base_policy", {"train_prompt_set": train_set, "eval_prompt_set": test_set, **options["policy"]})
    policy = {"policy_checkpoint": meta["checkpoint_id"]}
    searched = {key: execute("embedded_pipeline", f"tree-of-thoughts rollouts, prompt set {key}", key,
                             "tot_rollouts", config) for key, config in [
        (test_set, {**policy, **rollouts}), (train_set, {"max_problems": DEMO_TRAIN_PROBLEMS, **policy, **rollouts})]}
    if judge and options["judge"] is not None:
        judged = execute("judge_model_job", f"built-in judge (trained on {train_set} rollouts)", None,
                         "judge_model", options["judge"])
    test_rollout = {"rollout_id": searched[test_set]["rollout_id"]}
    # Consensus: Monte Carlo labels where binary search agrees (not the judge, which is optional:
    # a later --with-judge run then adds judge labels without relabeling the consensus).
    configs = {"mc_labels": {**test_rollout, **mc}, "consensus_labels": {**test_rollout, "second": "binary_search"}}
    for asset in LABEL_ASSETS:
        if asset != "judge_labels" or judged:
            execute("embedded_pipeline", f"{asset}, prompt set {test_set}", test_set, asset,
                    configs.get(asset, test_rollout))
    # Round 1 learns from the training slice's rollouts (the ones above), so the test set stays held out.
    spec = {"round": 1, "train_set": train_set, "test_set": test_set, "train_problems": DEMO_TRAIN_PROBLEMS,
            "rollouts": rollouts, "labels": mc, "labeler": DEMO_ROUND_LABELER, "training": DEMO_ROUND_TRAINING,
            "evaluation": DEMO_EVALUATION,
            **options["round"]}
    try:
        round_spec = RoundSpec(**spec)
    except (TypeError, ValueError) as e:
        raise click.BadParameter(str(e), param_hint="--round-config") from None
    done = _run_round(defs, instance, round_spec)
    prm = done["prm_model"].get("checkpoint_id")
    if prm:  # the same search on the test set, valued by the round's PRM instead of the likelihood
        searched[f"{test_set}, PRM-guided"] = execute(
            "embedded_pipeline", f"PRM-guided rollouts, prompt set {test_set}", test_set, "tot_rollouts",
            {**policy, **rollouts, "value": "prm", "prm_checkpoint": prm})
    return {"train_set": train_set, "test_set": test_set, "meta": meta, "searched": searched, "judged": judged,
            "round": done}


def _print_leg(leg: dict) -> None:
    from qstar_dagster.evaluation.report import render, report

    meta, train_set, test_set = leg["meta"], leg["train_set"], leg["test_set"]
    click.echo(f"\n=== {train_set.split('-')[0]} ({leg['seconds']:.0f}s)")
    k = next(key.removeprefix("pass_at_") for key in meta if key.startswith("pass_at_"))
    trained = (f"trained in {meta['train_seconds']:.0f}s, {meta['n_parameters']:,} parameters"
               if "train_seconds" in meta else "")
    how = ("shipped with the package" + (f", {trained}" if trained else "")) if meta.get("shipped") else \
        trained or "given model"
    click.echo(f"base policy {meta['checkpoint_id']} ({how}{'; already recorded' if meta['reused'] else ''})\n"
               f"  on {meta['eval_prompt_set']}: greedy {meta['greedy_accuracy']:.1%}, "
               f"pass@{k} {meta[f'pass_at_{k}']:.1%}, majority@{k} {_fmt(meta.get(f'majority_at_{k}'), '.1%')}")
    for key, r in leg["searched"].items():
        click.echo(f"rollouts {r['rollout_id']} on {key}: {r['algorithm']} (value {r['value_function']}), "
                   f"{r['trees']} trees, {r['nodes']} nodes, {r['tokens_per_second']:.0f} tokens/s; "
                   f"selected path right {r['selected_accuracy']:.1%}, some path right {r['pass_at_k']:.1%}")
    if judged := leg["judged"]:
        click.echo(f"judge {judged['checkpoint_id']}: on held-out training paths, step accuracy "
                   f"{_fmt(judged['heldout_step_accuracy'], '.1%')}, first-error F1 "
                   f"{_fmt(judged['heldout_first_error_f1'], '.3f')}")
    click.echo(f"step labels on {test_set} against the oracle (qstar sql \"{queries.LABEL_AGREEMENT}\"):")
    _print_sql(queries.agreement_with_oracle(leg["searched"][test_set]["rollout_id"]), as_json=False)
    done = leg["round"]
    data = done["datasets"]
    click.echo(f"round 1 datasets from {train_set}: " + ", ".join(
        f"{kind} {data[f'{kind}_rows']} rows" for kind in ("rft", "prm", "step_pairs", "pairs")))
    for asset in ("prm_model", "rft_policy", "dpo_policy", "step_ppo_policy"):
        t = done[asset]
        if "skipped" in t:
            click.echo(f"{asset}: {t['skipped']}")
            continue
        line = f"{asset} {t['checkpoint_id']} (loss {_fmt(t['final_loss'], '.3f')}, {t['train_seconds']:.0f}s)"
        if t.get("step_accuracy") is not None:
            line += (f": on {test_set} steps vs the oracle, accuracy {_fmt(t['step_accuracy'], '.1%')} (chance "
                     f"{_fmt(t['chance_accuracy'], '.1%')}), first-error F1 {_fmt(t['first_error_f1'], '.3f')}, "
                     f"right over wrong sibling step {_fmt(t.get('sibling_accuracy'), '.1%')} (chance 50%)")
        click.echo(line)
    trained = next((done[a]["checkpoint_id"] for a in ("prm_model", "rft_policy") if "checkpoint_id" in done[a]), None)
    if trained:
        click.echo(f"  trace a checkpoint: qstar lineage {trained}")
    click.echo(f"\nsummary (qstar report --prompt-set {test_set}; add --json):\n"
               f"{render(report(_require_store(), test_set))}")


@main.command("ship-policy")
@click.option("--domain", required=True, type=click.Choice(DEMO_DOMAINS),
              help="the built-in domain whose base policy to rebuild")
@click.option("--policy-config", help='JSON config for the base_policy asset over its defaults, e.g. \'{"steps": 300}\'')
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path),
              help="where to write it (default: the package's qstar_dagster/policies/<domain>)")
def ship_policy(domain: str, policy_config: str | None, dest: Path | None) -> None:
    """Rebuild a shipped base policy: train it from scratch with the base_policy asset in the
    data directory (the domain's built-in training set, the config of the policy shipped now), then write it
    with its manifest (sha256 of each file, config, training set, figures) into the package."""
    from qstar_dagster.rounds import StageFailed, make_executor
    from qstar_dagster.tasks.prompt_sets import DOMAIN_SETS
    from qstar_dagster.training.base_policy import rebuild_config
    from qstar_dagster.training.shipped import REBUILD, SHIPPED_ROOT, write_shipped

    train_set, test_set = DOMAIN_SETS[domain]
    overrides = _json_option(policy_config, "--policy-config")
    defs, instance = _dagster(_home())
    execute = make_executor(defs.resolve_job_def, instance, click.echo)
    try:
        for key in (train_set, test_set):
            execute("embedded_pipeline", f"prompt set {key}", key, "prompt_set", None)
        meta = execute("base_policy_job", f"base policy on {train_set}, from scratch", None, "base_policy",
                       {"train_prompt_set": train_set, "eval_prompt_set": test_set, **rebuild_config(train_set),
                        **overrides, "shipped": False})
    except StageFailed as e:
        raise click.ClickException(str(e)) from None
    row = _require_store().checkpoint(meta["checkpoint_id"])
    command = REBUILD.format(domain=domain) + (f" --policy-config '{policy_config}'" if policy_config else "")
    shipped = write_shipped(Path(row["path"]), dest or SHIPPED_ROOT / domain, domain=domain,
                            train_prompt_set=train_set, train_version=row["trained_on_prompt_set"].split("@", 1)[1],
                            config=json.loads(row["config"]), metrics=json.loads(row["metrics"])["evaluation"],
                            trained_by=command)
    size = sum((shipped.path / f).stat().st_size for f in shipped.files)
    click.echo(f"shipped {domain} policy {row['checkpoint_id']} to {shipped.path} ({size / 1e6:.1f} MB): greedy "
               f"{meta['greedy_accuracy']:.1%} on {test_set}; commit that directory")


@main.command("round")
@click.option("--round", "k", type=int, required=True, help=help_of(RoundSpec, "round"))
@click.option("--train-set", default=DEMO_TRAIN_SET, show_default=True, help=help_of(RoundSpec, "train_set"))
@click.option("--test-set", default=DEMO_TEST_SET, show_default=True, help=help_of(RoundSpec, "test_set"))
@click.option("--train-problems", default=DEMO_TRAIN_PROBLEMS, show_default=True,
              help=help_of(RoundSpec, "train_problems"))
@click.option("--labeler", type=click.Choice(ROUND_LABELERS), default=ROUND_LABELERS[0], show_default=True,
              help=help_of(RoundSpec, "labeler"))
@click.option("--round-config", help="JSON overrides of the round (qstar_dagster.rounds.RoundSpec: rollouts, labels, "
              'training, evaluation), e.g. \'{"rollouts": {"skip_problems": 2048}, "training": {"step_ppo_policy": '
              '{"iterations": 300}}}\'')
@click.option("--print-config", is_flag=True, help="print the run's partition, tags and config (YAML, for the "
              "UI's launchpad) instead of running it")
def round_(k: int, train_set: str, test_set: str, train_problems: int, labeler: str, round_config: str | None,
           print_config: bool) -> None:
    """Run one expert-iteration round: one run of the `expert_iteration_round` job, partition
    TRAIN_SET, tagged qstar/round=K, with round K-1's checkpoints in its config."""
    from qstar_dagster.evaluation.report import render, report
    from qstar_dagster.rounds import ROUND_JOB, StageFailed, plan_round

    overrides = _json_option(round_config, "--round-config")
    try:
        spec = RoundSpec(**{"round": k, "train_set": train_set, "test_set": test_set, "train_problems": train_problems,
                            "labeler": labeler, **overrides})
    except TypeError as e:  # a key RoundSpec does not have
        raise click.BadParameter(str(e), param_hint="--round-config") from None
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    try:
        if print_config:
            import yaml

            plan = plan_round(_require_store(), spec)
            click.echo(f"# job {ROUND_JOB}, partition {plan.partition}, tags "
                       f"{', '.join(f'{t}={v}' for t, v in plan.tags.items())}\n"
                       + yaml.safe_dump(plan.run_config, sort_keys=False))
            return
        done = _run_round(*_dagster(_home()), spec)
    except (StageFailed, LookupError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    def made(asset: str) -> str:  # a checkpoint id, or why the stage trained none (e.g. no right solution)
        return done[asset].get("checkpoint_id") or f"none ({done[asset].get('skipped', 'not trained')})"

    click.echo(f"round {k}: policy {made('rft_policy')} (from {done['policy']}), "
               f"PRM {made('prm_model')}; rollouts guided by {done['prm'] or 'likelihood'}\n"
               f"rounds of every artifact: qstar sql \"select * from rounds order by round\"\n"
               f"{render(report(_require_store(), test_set))}")


def _require_store():
    """The store of the data directory, migrated; a clear error when there is none."""
    from qstar_dagster.lineage import LineageStore

    path = _store_path()
    if isinstance(path, Path) and not path.exists():
        raise click.ClickException(f"no lineage store at {path}; run `make demo` (or `qstar init`) first, "
                                   "or set QSTAR_HOME to your data directory")
    return LineageStore(path)


def _print_sql(query: str, as_json: bool, max_rows: int = 100) -> None:
    import duckdb

    # opening the store applies pending migrations; the query then reads through a
    # read-only connection (a shared store's is attached read-only)
    with _require_store().connect(read_only=True) as con:
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


@main.command()
@click.argument("query")
@click.option("--json", "as_json", is_flag=True, help="print rows as a JSON list of objects")
@click.option("--max-rows", default=100, show_default=True)
def sql(query: str, as_json: bool, max_rows: int) -> None:
    """Run a read-only SQL QUERY on the lineage store and print the result."""
    _print_sql(query, as_json, max_rows)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print the figures as one JSON object")
@click.option("--prompt-set", default="arith-test", show_default=True, help="the held-out set evaluated on")
def report(as_json: bool, prompt_set: str) -> None:
    """The round's summary: base policy against the round's trained policies (greedy,
    majority@8, PRM best-of-8) and label agreement with the oracle."""
    from qstar_dagster.evaluation.report import render
    from qstar_dagster.evaluation.report import report as figures

    try:
        r = figures(_require_store(), prompt_set)
    except LookupError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(r, indent=2) if as_json else render(r))


@main.command()
@click.argument("artifact_id")
@click.option("--json", "as_json", is_flag=True, help="print the edges as JSON")
@click.option("--max-per-relation", default=3, show_default=True,
              help="tree view: parents shown per relation of one artifact (a dataset has thousands of nodes)")
def lineage(artifact_id: str, as_json: bool, max_per_relation: int) -> None:
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
        shown: dict[str, int] = {}
        for e in parents.get(node, []):
            shown[e.relation] = shown.get(e.relation, 0) + 1
            if shown[e.relation] > max_per_relation:
                continue
            again = " (see above)" if e.parent_id in seen else ""
            click.echo(f"{'  ' * indent}└─ {e.relation} → {e.parent_id} ({e.parent_kind}){again}")
            if not again:
                walk(e.parent_id, indent + 1, seen | {e.parent_id})
        for relation, n in shown.items():
            if n > max_per_relation:
                click.echo(f"{'  ' * indent}└─ … and {n - max_per_relation} more {relation} (--max-per-relation)")

    walk(artifact_id, 1, frozenset({artifact_id}))


@main.group()
def store() -> None:
    """The lineage store: the data directory's DuckDB file, or a shared PostgreSQL store
    (QSTAR_STORE=postgresql://user@host:port/db)."""


@store.command("copy")
@click.argument("target")
@click.option("--from", "source", default=None,
              help="the store to copy (default: the data directory's, $QSTAR_STORE or lineage.duckdb)")
def store_copy(target: str, source: str | None) -> None:
    """Copy every row of a store into TARGET (a postgresql:// URL or a DuckDB file), for example
    a local store into the shared one. Rows TARGET has already are skipped: copying again adds
    nothing, and a copy that was stopped resumes."""
    from qstar_dagster.lineage import LineageStore, copy_store
    from qstar_dagster.lineage.shared import is_shared

    if source and not is_shared(source) and not Path(source).exists():
        raise click.ClickException(f"no lineage store at {source}")
    src = LineageStore(source) if source else _require_store()
    dst = LineageStore(target)
    started = time.monotonic()

    def progress(table: str, read: int, new: int) -> None:
        click.echo(f"  {table}: {read:,} rows read, {new:,} new ({read / (time.monotonic() - started):,.0f} rows/s)",
                   err=True)

    done = copy_store(src, dst, progress=progress)
    for table, (read, new) in done.items():
        click.echo(f"{table}: {read} rows, {new} new")
    click.echo(f"copied {src.path} -> {dst.path}: {sum(n for _, n in done.values())} new rows "
               f"in {time.monotonic() - started:.1f} s")


@main.command()
@click.argument("model_path")
@click.option("--host", default="127.0.0.1", show_default=True, help="bind address (loopback by default)")
@click.option("--port", default=8000, show_default=True)
@click.option("--name", default=None, help="model name served in /v1/models (default: the path's last part; "
              "for the factory's policy servers: the checkpoint id)")
@click.option("--device", default="cpu", show_default=True)
@click.option("--max-n", default=16, show_default=True, help="most completions per prompt a request may ask for")
@click.option("--max-prompts", default=64, show_default=True, help="most prompts per request")
@click.option("--batching/--no-batching", default=True, show_default=True,
              help="generate requests that arrive together in one batch (off: one request at a time)")
def serve(model_path: str, host: str, port: int, name: str | None, device: str, max_n: int, max_prompts: int,
          batching: bool) -> None:
    """Serve a local model over an OpenAI-compatible API (/v1/completions, /v1/chat/completions,
    /v1/models; streaming too) through the transformers backend."""
    import uvicorn

    from qstar_dagster.generation.hf import (
        ModelNotFoundError,
        TransformersGenerator,
        resolve_model_dir,
    )
    from qstar_dagster.generation.server import ServeLimits, make_app
    from qstar_dagster.lineage.files import weights_sha256

    try:
        gen = TransformersGenerator(model_path, device=device)
    except ModelNotFoundError as e:
        raise click.ClickException(str(e)) from None
    limits = ServeLimits(max_n=max_n, max_prompts=max_prompts, batching=batching)
    app = make_app(gen, name or Path(model_path).name, limits, weights_sha256(resolve_model_dir(model_path)))
    uvicorn.run(app, host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
