"""Train the built-in base policy from scratch on reference solutions, and measure it.

Pure core: plain torch over `Problem`s; `assets/policy.py` wraps it for Dagster.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from qstar_dagster.generation.base import Generator, SamplingParams
from qstar_dagster.generation.hf import TransformersGenerator, resolve_model_dir
from qstar_dagster.lineage import artifacts
from qstar_dagster.lineage.store import LineageStore
from qstar_dagster.spec import id_settings, option
from qstar_dagster.tasks.domains import domain, votes_apply
from qstar_dagster.tasks.problem import DEFAULT_PROMPT_TEMPLATE, Problem, policy_prompt
from qstar_dagster.training.charlm import char_tokenizer, tiny_llama
from qstar_dagster.training.checkpoints import build_checkpoint, weights_sha256
from qstar_dagster.training.sft import FitSpec, encode_pairs, encode_pieces, fit_causal_lm
from qstar_dagster.training.shipped import check_fits, copy_files, shipped_policies, shipped_policy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BasePolicyConfig:
    """Training from scratch: 3,000 steps at hidden 128, about 30-50 minutes on one CPU core.
    The shipped policies' own settings are in their manifests, which `rebuild_config` reads
    (README, "Base policy"). `practice` adds Countdown's practice walks (a third of the rows
    at 0.5): without them the policy writes the target as its last step's result whatever the
    arithmetic (README, "Practice walks")."""

    hidden: int = option(128, "width of the character-level Llama")
    layers: int = option(3, "transformer layers")
    heads: int = option(4, "attention heads")
    steps: int = option(3000, "optimizer steps")
    batch_size: int = option(64, "reference solutions per step")
    lr: float = option(3e-3, "peak learning rate (warm-up, then cosine)")
    warmup: int = option(100, "warm-up steps")
    seed: int = option(0, "seed of the weights and the batches")
    eval_every: int = option(250, "steps between points of the accuracy curve; 0: none")
    practice: float = option(0.5, "practice walks per training problem where the domain has them (Countdown: "
                             "random legal moves, trained on what follows from each choice, not the choice)")
    references: int = option(0, "learn from the first N training problems only (0: all): a policy that has seen few "
                             "written solutions, the rest of the prompt set left to RL and its checker (README, "
                             "\"Arithmetic from few written solutions\")", added=True)

    def problems(self, train: Sequence[Problem]) -> Sequence[Problem]:
        """The training problems this config learns from."""
        if self.references < 0 or self.references > len(train):
            raise ValueError(f"base policy: references={self.references}, but the training prompt set has "
                             f"{len(train)} problems; give 0 (all) up to {len(train)}")
        return train[: self.references] if self.references else train


def rebuild_config(train_prompt_set: str, root: Path | None = None) -> dict:
    """The trainer settings in the manifest of the policy shipped for `train_prompt_set` (none
    shipped: {}), so that `qstar ship-policy` rebuilds what ships, not the defaults above."""
    policy = shipped_policies(root).get(train_prompt_set)
    names = {f.name for f in fields(BasePolicyConfig)}
    return {k: v for k, v in (policy.config if policy else {}).items() if k in names}


def train_base_policy(train: Sequence[Problem], out_dir: Path, cfg: BasePolicyConfig = BasePolicyConfig(),
                      on_eval: Callable[[object, object], float] | None = None) -> dict:
    """Train a character-level Llama on `train`'s reference solutions and save it (with its
    tokenizer) to `out_dir`. `on_eval(model, tokenizer)` is called every `cfg.eval_every`
    steps and should return an accuracy; the points make the training curve."""
    if not train:
        raise ValueError("base policy: the training prompt set is empty")
    train = cfg.problems(train)
    tok = char_tokenizer()
    model = tiny_llama(tok, cfg.hidden, cfg.layers, cfg.heads, seed=cfg.seed)
    examples = encode_pairs(tok, [(policy_prompt(p.problem), p.reference_solution) for p in train])
    examples += practice_examples(tok, train, cfg.practice, cfg.seed)
    spec = FitSpec(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup=cfg.warmup, seed=cfg.seed,
                   eval_every=cfg.eval_every)
    summary = fit_causal_lm(model, tok, examples, spec, "base policy", on_eval)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {**summary, "config": asdict(cfg)}


def greedy_accuracy(gen: Generator, problems: Sequence[Problem], max_new_tokens: int = 96,
                    template: str = DEFAULT_PROMPT_TEMPLATE) -> float:
    out = gen.generate([policy_prompt(p.problem, template) for p in problems],
                       SamplingParams(n=1, temperature=0, max_new_tokens=max_new_tokens))
    return sum(domain(p.domain).grade(p, c.text)[1] for p, [c] in zip(problems, out)) / len(out)


# --- the base_policy stage: train (or take a given model), evaluate, record ----------------


@dataclass(frozen=True)
class PolicyEvalSpec:
    """What every policy checkpoint is measured with when it is made: greedy, pass@k, majority@k."""

    prompt_set: str = option("arith-test", "prompt set for greedy / pass@k / majority@k")
    k: int = option(8, "samples per problem behind pass@k and majority@k")
    max_new_tokens: int = option(96, "tokens per solution")
    seed: int = option(0, "seed of the samples")
    # at 1.0 an undertrained policy's samples are mostly noise
    temperature: float = option(0.7, "temperature of the k samples behind pass@k and majority@k")


@dataclass
class BasePolicyResult:
    checkpoint_id: str
    path: Path
    reused: bool  # this checkpoint and its evaluation were already recorded: nothing was trained or run
    training: dict | None  # the trainer's summary with its curves; None for a given model
    metrics: dict  # greedy, pass_at_k, majority_at_k on the evaluation set
    checkpoint_row: dict | None  # the row to record; None when reused
    evaluation_rows: list[dict]


def practice_examples(tok, train: Sequence[Problem], per_problem: float, seed: int) -> list[tuple]:
    """`per_problem` practice walks per problem on average (a fraction: that share of the
    problems get one), for the problems whose domain has them; seeded."""
    rng, out = random.Random(seed + 1), []
    for p in train:
        walk = domain(p.domain).practice
        n = int(per_problem) + (rng.random() < per_problem % 1)
        for _ in range(n if walk else 0):
            out.append(encode_pieces(tok, policy_prompt(p.problem), walk(p.problem, rng)))
    return out


def build_base_policy(store: LineageStore, checkpoints_dir: Path, *, cfg: BasePolicyConfig = BasePolicyConfig(),
                      train_prompt_set: str = "arith-train", evaluation: PolicyEvalSpec = PolicyEvalSpec(),
                      evaluate: Callable[[Path, Sequence[Problem]], dict],
                      model_path: str | None = None, template: str = DEFAULT_PROMPT_TEMPLATE,
                      shipped: bool = False, run_id: str | None = None) -> BasePolicyResult:
    """Train the built-in policy on `train_prompt_set` (or take `model_path`, or with `shipped`
    the policy shipped with the package that was trained on `train_prompt_set`), evaluate it on
    `evaluation.prompt_set`, and return the rows to record. `evaluate(path, problems)` returns
    greedy, pass_at_k, majority_at_k and n (the evaluation stage's `evaluate_policy`, sampling
    as `evaluation` says). Idempotent: a checkpoint is named by what made it (config,
    training-set version, template), so asking again for one that is recorded and still on
    disk trains and evaluates nothing."""
    eval_version, eval_problems = store.prompt_set_problems(evaluation.prompt_set)
    if model_path:
        given = resolve_model_dir(model_path)
        identity = ("given", model_path, weights_sha256(given), template)
        record = {"base": model_path, "trained_on_prompt_set": None,
                  "config": {"model_path": model_path, "template": template}}
    elif shipped:
        given, policy = None, shipped_policy(train_prompt_set)
        train_version, _ = store.prompt_set_problems(train_prompt_set)
        check_fits(policy, train_version)
        if template != policy.config["template"]:
            raise ValueError(f"the shipped {policy.domain} policy was trained on the prompt template "
                             f"{policy.config['template']!r}, not {template!r}; leave prompt_template at its default, "
                             f"or set `shipped: false` to train one with yours")
        trained_on = f"{train_prompt_set}@{train_version}"
        # the weights' hash in the name: a rebuilt policy is another checkpoint, never the old id
        identity = ("shipped", policy.config, trained_on, policy.files)
        record = {"base": None, "trained_on_prompt_set": trained_on,
                  "config": {**policy.config, "shipped": policy.domain}}
    else:
        given = None
        train_version, train_problems = store.prompt_set_problems(train_prompt_set)
        trained_on = f"{train_prompt_set}@{train_version}"
        cfg.problems(train_problems)  # a bad `references` fails before anything is recorded
        config = {**id_settings(cfg), "template": template, "architecture": "char-llama"}
        identity = ("builtin", config, trained_on)
        record = {"base": None, "trained_on_prompt_set": trained_on, "config": config}
    votes = votes_apply(eval_problems)

    def evaluated(row: dict) -> dict | None:
        """The figures recorded for this evaluation, or None: evaluate (again)."""
        wanted = _evaluation_rows(row["checkpoint_id"], evaluation, eval_version, None, run_id, votes)
        have = artifacts.evaluations_by_id(store, [r["eval_id"] for r in wanted])
        return _metrics_from_rows(have, evaluation.k) if len(have) == len(wanted) else None

    def train(directory: Path) -> dict:
        if shipped:
            log.info("base policy: the %s policy shipped with the package (%s)", policy.domain, policy.path)
            return copy_files(policy, directory)
        curve_problems = list(eval_problems[:100])  # a fixed slice keeps the curve cheap

        def on_eval(model, tok) -> float:
            return greedy_accuracy(TransformersGenerator(model, tok), curve_problems, evaluation.max_new_tokens,
                                   template)

        return train_base_policy(train_problems, directory, cfg, on_eval=on_eval if cfg.eval_every else None)

    def measure(path: Path) -> dict:
        log.info("base policy %s: evaluating on %s (%d problems, k=%d)", path.name, evaluation.prompt_set,
                 len(eval_problems), evaluation.k)
        return evaluate(path, eval_problems)

    built = build_checkpoint(store, checkpoints_dir, "policy", identity, record, train=train, evaluate=measure,
                             given=given, evaluated=evaluated,
                             evaluated_on=f"{evaluation.prompt_set}@{eval_version}", run_id=run_id)
    rows = [] if built.reused else _evaluation_rows(built.checkpoint_id, evaluation, eval_version, built.metrics,
                                                   run_id, votes)
    return BasePolicyResult(built.checkpoint_id, built.path, built.reused, built.training or None, built.metrics,
                            built.row, rows)


def _metrics_from_rows(rows: list[dict], k: int) -> dict:
    by_method = {r["method"]: r for r in rows}
    return {"greedy": by_method["greedy"]["accuracy"], f"pass_at_{k}": by_method[f"pass@{k}"]["accuracy"],
            f"majority_at_{k}": by_method.get(f"majority@{k}", {}).get("accuracy"), "n": by_method["greedy"]["n"]}


def _evaluation_rows(checkpoint_id: str, evaluation: PolicyEvalSpec, version: str, metrics: dict | None,
                     run_id: str | None, votes: bool = True) -> list[dict]:
    """greedy, pass@k and (where the domain has votes) majority@k rows; `metrics` None: the
    rows' ids only, to look them up."""
    k = evaluation.k
    methods = {"greedy": "greedy", f"pass@{k}": f"pass_at_{k}", **({f"majority@{k}": f"majority_at_{k}"} if votes else {})}
    settings = {f: v for f, v in asdict(evaluation).items() if f != "prompt_set"}
    return artifacts.evaluation_rows(
        [checkpoint_id], {method: metrics and metrics[metric] for method, metric in methods.items()},
        stage="base_policy", prompt_set=evaluation.prompt_set, version=version, settings=settings,
        n=metrics and metrics["n"], run_id=run_id)
