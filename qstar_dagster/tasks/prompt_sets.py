"""Where a prompt set's problems come from: the built-in sets, or a file in the inbox."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from qstar_dagster.tasks import countdown
from qstar_dagster.tasks.arith import ArithSpec, generate_problems
from qstar_dagster.tasks.countdown import CountdownSpec
from qstar_dagster.tasks.loaders import JsonlFields, ProblemFileError, file_format, load_problems
from qstar_dagster.tasks.problem import Problem
from qstar_dagster.tasks.process_files import LABELED_FORMATS


@dataclass(frozen=True)
class BuiltinSet:
    n: int | None  # None: every problem the domain's generator has (game24)
    seed: int
    domain: str = "arith"
    spec: ArithSpec | CountdownSpec | tuple[CountdownSpec, ...] | None = None  # the generator's knobs; None: defaults
    exclude: tuple[str, ...] = ()  # sets whose problems this one must not repeat (train for test)


BUILTIN_PROMPT_SETS: dict[str, BuiltinSet] = {
    # One pass of the default base-policy training (900 steps x 64) needs 57,600 problems.
    "arith-train": BuiltinSet(n=60000, seed=1),
    "arith-test": BuiltinSet(n=200, seed=2, exclude=("arith-train",)),
    # Game of 24 is held out from both Countdown sets: a hand with target 24 is a game24 problem.
    "game24": BuiltinSet(n=None, seed=0, domain=countdown.DOMAIN),
    # 30,000 of the 33,093 three-number problems (default spec) and 15,000 of four numbers.
    "countdown-train": BuiltinSet(n=45000, seed=11, domain=countdown.DOMAIN, exclude=("game24",)),
    "countdown-test": BuiltinSet(n=200, seed=12, domain=countdown.DOMAIN, exclude=("game24", "countdown-train")),
}

# Each built-in domain's (training set, held-out set): what its shipped base policy learned on
# and is measured on.
DOMAIN_SETS: dict[str, tuple[str, str]] = {"arith": ("arith-train", "arith-test"),
                                           countdown.DOMAIN: ("countdown-train", "countdown-test")}


def _generate(base: BuiltinSet, n: int, seed: int, spec, exclude: frozenset[str]) -> list[Problem]:
    if base.domain == countdown.DOMAIN:
        return countdown.generate_problems(n, seed, spec, exclude)
    # Draw extra, then keep the first n not excluded (arith draws in a fixed order for a seed).
    pool = generate_problems(2 * n + 100 if exclude else n, seed, spec)
    return [p for p in pool if p.problem not in exclude][:n]


def builtin_problems(name: str, n: int | None = None, seed: int | None = None,
                     spec: ArithSpec | CountdownSpec | tuple[CountdownSpec, ...] | None = None) -> list[Problem]:
    if name not in BUILTIN_PROMPT_SETS:
        raise KeyError(f"no built-in prompt set {name!r}; built-in sets: {sorted(BUILTIN_PROMPT_SETS)}")
    base = BUILTIN_PROMPT_SETS[name]
    seed, spec = base.seed if seed is None else seed, spec or base.spec
    if base.n is None:  # a complete set: n takes its first problems
        return countdown.game24_problems(seed)[:n]
    return list(_generated(name, n or base.n, seed, spec))


@lru_cache(maxsize=8)  # a held-out set regenerates the sets it excludes: 45,000 Countdown problems take seconds
def _generated(name: str, n: int, seed: int, spec) -> tuple[Problem, ...]:
    base = BUILTIN_PROMPT_SETS[name]
    taken = frozenset(p.problem for other in base.exclude for p in builtin_problems(other))
    kept = _generate(base, n, seed, spec, taken)
    if len(kept) < n:  # held-out means held out
        raise ValueError(f"{name}: only {len(kept)} problems outside {', '.join(base.exclude)}; widen the spec")
    return tuple(kept)


_KEY_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def inbox_key(path: Path) -> str:
    """The prompt-set (partition) name of an inbox file: its stem, in safe characters."""
    return _KEY_RE.sub("-", path.stem).strip("-") or "unnamed"


def inbox_files(inbox: Path) -> dict[str, Path]:
    return {inbox_key(p): p for p in sorted(inbox.glob("*.jsonl"))} if inbox.is_dir() else {}


def labeled_inbox_file(name: str, inbox: Path, format: str | None = None) -> Path | None:
    """The inbox file of prompt set `name` when it is a process-supervision file (PRM800K,
    Math-Shepherd, ProcessBench), else None."""
    path = inbox_files(inbox).get(name)
    return path if path is not None and file_format(path, format) in LABELED_FORMATS else None


def resolve_prompt_set(name: str, inbox: Path, *, format: str | None = None, fields: JsonlFields | None = None,
                       n: int | None = None, seed: int | None = None) -> tuple[list[Problem], str]:
    """The problems of prompt set `name` and a description of their source."""
    if name in BUILTIN_PROMPT_SETS:
        return builtin_problems(name, n=n, seed=seed), f"builtin:{name}"
    files = inbox_files(inbox)
    if name not in files:
        raise ProblemFileError(inbox / f"{name}.jsonl", f"prompt set {name!r} is neither built in nor in the inbox",
                               f"put {name}.jsonl in {inbox}, or use one of {sorted(BUILTIN_PROMPT_SETS)}")
    problems = load_problems(files[name], format=format, fields=fields)
    return (problems[:n] if n else problems), str(files[name])
