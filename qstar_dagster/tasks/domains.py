"""The one interface every stage asks about a problem's domain: how its solutions are cut
into steps, how a solution is graded, whether a step oracle exists, and whether majority
voting over answers means anything (not in Countdown, where every right answer is the
target). Problem generators and reference solutions live in each domain's module
(`arith.py`, `countdown.py`); loaded files (gsm8k, math, jsonl) are graded by answer."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qstar_dagster.tasks import arith, countdown
from qstar_dagster.tasks.grading import answers_match, extract_answer
from qstar_dagster.tasks.problem import Problem
from qstar_dagster.tasks.steps import StepFormat, step_format
from qstar_dagster.tasks.verdicts import OracleResult


def grade_by_answer(problem: Problem, solution: str) -> tuple[str | None, bool]:
    """The solution's final answer, and whether it matches the reference (math-verify)."""
    answer = extract_answer(solution)
    return answer, answer is not None and answers_match(answer, problem.reference_answer)


@dataclass(frozen=True)
class Domain:
    name: str
    grade: Callable[[Problem, str], tuple[str | None, bool]] = grade_by_answer
    # the step oracle: (problem text, steps) -> verdicts; None where there is none
    oracle_steps: Callable[[str, list[str]], OracleResult] | None = None
    votes: bool = True  # majority@N and PRM-weighted votes apply
    # (problem text, rng) -> a practice walk's pieces of text, each trained or not (the base
    # policy's trainer adds them to the reference solutions); None where there are none
    practice: Callable[[str, random.Random], list[tuple[str, bool]]] | None = None
    # beam search's open nodes per depth where its spec leaves it unset: as many as the 64-node
    # budget has room for at the domain's depth (README, "Countdown search: the beam's shape")
    beam_width: int = 4

    @property
    def step_format(self) -> StepFormat:
        return step_format(self.name)

    @property
    def has_oracle(self) -> bool:
        return self.oracle_steps is not None

    def oracle(self, problem: Problem, steps: Sequence[str]) -> OracleResult:
        if self.oracle_steps is None:
            raise ValueError(f"domain {self.name!r} has no step oracle (the built-in domains have: "
                             f"{', '.join(n for n, d in DOMAINS.items() if d.has_oracle)}); use Monte Carlo or "
                             "judge labels for its prompt sets")
        return self.oracle_steps(problem.problem, list(steps))


DOMAINS: dict[str, Domain] = {
    "arith": Domain("arith", oracle_steps=arith.oracle_steps),
    countdown.DOMAIN: Domain(countdown.DOMAIN, grade=lambda p, s: countdown.grade(p.problem, s),
                             oracle_steps=countdown.oracle_steps, votes=False, practice=countdown.practice_walk,
                             beam_width=8),
    "gsm8k": Domain("gsm8k"),
    "math": Domain("math"),
    "jsonl": Domain("jsonl"),
}


def votes_apply(problems: Sequence[Problem]) -> bool:
    """Majority voting means something for every one of `problems` (not in Countdown, where
    every right answer is the target)."""
    return all(domain(p.domain).votes for p in problems)


def domain(name: str) -> Domain:
    try:
        return DOMAINS[name]
    except KeyError:
        raise ValueError(f"unknown domain {name!r}; known: {', '.join(sorted(DOMAINS))}") from None
