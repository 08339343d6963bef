"""Prompt sets: the problems every later stage works on, one dynamic partition per set.

(No `from __future__ import annotations` in Dagster-facing modules: Dagster reads the
annotations of asset and resource signatures at definition time.)"""


import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    Config,
    DataVersion,
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    asset,
    sensor,
)
from pydantic import Field

from qstar_dagster.assets._runs import recorded_run
from qstar_dagster.lineage import LineageStore, artifacts
from qstar_dagster.resources import DataDirResource, LineageStoreResource
from qstar_dagster.tasks.grading import is_parseable_answer
from qstar_dagster.tasks.loaders import JsonlFields, ProblemFileError
from qstar_dagster.tasks.prompt_sets import (
    BUILTIN_PROMPT_SETS,
    inbox_files,
    labeled_inbox_file,
    resolve_prompt_set,
)

prompt_set_partitions = DynamicPartitionsDefinition(name="prompt_sets")


class PromptSetConfig(Config):
    n: int | None = Field(None, description="keep only the first n problems (built-in sets: generate n)")
    seed: int | None = Field(None, description="built-in sets: generator seed (default: the set's own)")
    format: str | None = Field(None, description="inbox files: gsm8k, math, jsonl, or a process-supervision "
                               "format (prm800k, math_shepherd, processbench); detected when unset")
    problem_field: str = "problem"
    answer_field: str = "answer"
    solution_field: str | None = "solution"


CHECK_NOT_EMPTY = "not_empty"
CHECK_NO_DUPLICATES = "no_duplicate_prompts"
CHECK_ANSWERS_PARSEABLE = "reference_answers_parseable"


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    severity: AssetCheckSeverity
    description: str
    metadata: dict


def check_prompt_set(store: LineageStore, prompt_set: str) -> list[CheckOutcome]:
    """The prompt-set checks, read back from the store (what later stages will see)."""
    rows = artifacts.prompt_answers(store, prompt_set)
    n_dup = artifacts.prompt_set_duplicates(store, prompt_set)
    # a labeled file may give no answer for a problem it has no right solution of: said, not failed
    unknown = [r for r in rows if r["answer_from"] == "unknown"]
    unparseable = [r for r in rows if r["answer_from"] != "unknown" and not is_parseable_answer(r["reference_answer"])]
    return [
        CheckOutcome(CHECK_NOT_EMPTY, len(rows) > 0, AssetCheckSeverity.ERROR,
                     f"{len(rows)} prompts", {"n": len(rows)}),
        CheckOutcome(CHECK_NO_DUPLICATES, n_dup == 0, AssetCheckSeverity.WARN,
                     f"{n_dup} source rows repeated an earlier problem and were kept once", {"n_duplicates": n_dup}),
        CheckOutcome(CHECK_ANSWERS_PARSEABLE, not unparseable, AssetCheckSeverity.ERROR,
                     f"{len(unparseable)} of {len(rows)} reference answers cannot be parsed" + (
                         f"; {len(unknown)} unknown (the file gives neither an answer nor a right solution)"
                         if unknown else ""),
                     {"n_unparseable": len(unparseable), "n_unknown": len(unknown),
                      "examples": MetadataValue.json([r["reference_answer"] for r in unparseable[:10]])}),
    ]


def _preview(problems, k: int = 5) -> str:
    def cell(s: str | None, width: int) -> str:
        s = (s or "").replace("|", "\\|").replace("\n", " ")
        return s if len(s) <= width else s[: width - 1] + "…"

    lines = ["| # | problem | reference answer |", "|---|---|---|"]
    lines += [f"| {i} | {cell(p.problem, 90)} | {cell(p.reference_answer, 30)} |" for i, p in enumerate(problems[:k])]
    return "\n".join(lines)


@asset(
    partitions_def=prompt_set_partitions,
    group_name="prompts",
    code_version="1",
    kinds={"duckdb"},
    check_specs=[
        AssetCheckSpec(CHECK_NOT_EMPTY, asset="prompt_set", blocking=True, description="the set has prompts"),
        AssetCheckSpec(CHECK_NO_DUPLICATES, asset="prompt_set", description="no problem appears twice"),
        AssetCheckSpec(CHECK_ANSWERS_PARSEABLE, asset="prompt_set",
                       description="every reference answer parses as a number or as math"),
    ],
    description="Problems of one prompt set (built-in arithmetic, or a JSONL file from the inbox), "
    "written to the lineage store as a new version when their content changes.",
)
def prompt_set(context: AssetExecutionContext, config: PromptSetConfig, store: LineageStoreResource,
               data_dir: DataDirResource) -> Iterator:
    name = context.partition_key
    lineage = store.store()
    with recorded_run(context, lineage, config.model_dump()) as run:
        fields = JsonlFields(config.problem_field, config.answer_field, config.solution_field)
        fields = None if fields == JsonlFields() else fields
        # Load and validate the whole source before writing anything.
        problems, source = resolve_prompt_set(name, data_dir.inbox, format=config.format, fields=fields,
                                              n=config.n, seed=config.seed)
        with lineage.transaction() as con:
            written = lineage.write_prompt_set(con, name, source, problems, run.run_id)
            run.finish(con)
    outcomes = check_prompt_set(lineage, name)
    answers = next(o.metadata for o in outcomes if o.name == CHECK_ANSWERS_PARSEABLE)
    context.log.info(f"prompt set {name}: {written.n} prompts from {source}, version {written.version}"
                     f"{' (new)' if written.new_version else ' (unchanged)'}")
    # the content hash: automation and staleness see an unchanged set as unchanged
    yield MaterializeResult(data_version=DataVersion(written.version), metadata={
        "n": written.n,
        "version": written.version,
        "new_version": written.new_version,
        "n_new_prompts": written.n_new_prompts,
        "n_duplicates": written.n_duplicates,
        "source": source,
        "domain": problems[0].domain,
        "answer_parse_rate": 1 - (answers["n_unparseable"] + answers["n_unknown"]) / written.n,
        "preview": MetadataValue.md(_preview(problems)),
    })
    for outcome in outcomes:
        yield AssetCheckResult(check_name=outcome.name, passed=outcome.passed, severity=outcome.severity,
                               description=outcome.description, metadata=outcome.metadata)


def builtin_partition_keys() -> list[str]:
    return list(BUILTIN_PROMPT_SETS)


def _file_sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@sensor(asset_selection=AssetSelection.assets("prompt_set", "imported_labels"), minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description="Adds a prompt-set partition for each new .jsonl file in the inbox (and the built-in "
        "sets) and materializes it, with its imported_labels when it is a PRM800K, Math-Shepherd or ProcessBench "
        "file; a changed file is materialized again as a new version.")
def prompt_inbox_sensor(context: SensorEvaluationContext, data_dir: DataDirResource) -> SensorResult:
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    existing = set(context.instance.get_dynamic_partitions(prompt_set_partitions.name))
    new_keys = [k for k in builtin_partition_keys() if k not in existing]
    run_requests = []
    for key, path in inbox_files(data_dir.inbox).items():
        sha = _file_sha(path)
        if key not in existing:
            new_keys.append(key)
        if seen.get(key) != sha:
            seen[key] = sha
            try:
                labeled = labeled_inbox_file(key, data_dir.inbox) is not None
            except ProblemFileError:  # a broken file: prompt_set's run says what is wrong with it
                labeled = False
            assets = [AssetKey("prompt_set")] + ([AssetKey("imported_labels")] if labeled else [])
            run_requests.append(RunRequest(partition_key=key, run_key=f"{key}:{sha}", asset_selection=assets))
    return SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[prompt_set_partitions.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps(seen, sort_keys=True),
    )
