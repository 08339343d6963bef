"""Countdown (Game of 24 and its kin): a domain where a solution is a sequence of choices.

A problem is a multiset of numbers and a target:

    Make 24 from: 4 7 8 8

and a step combines two of the numbers left into a new one, and states what is left:

    8 - 4 = 4 (left: 4 7 8)
    7 - 4 = 3 (left: 3 8)
    3 * 8 = 24 (left: 24)

A solution is right when every step is valid and the one number left is the target. Rules
(those of the TV game): + - * /, every intermediate result a positive integer, so a - b
needs a > b and a / b an exact division. Unlike the arithmetic domain, most valid steps
lead to dead ends: the oracle says for each step whether it is *valid* (the numbers are
there, the arithmetic is exact, the list of what is left is right) and whether the target is
*still reachable* from what is left, which is the value a Monte Carlo label estimates.
"""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from qstar_dagster.tasks.problem import Problem
from qstar_dagster.tasks.steps import LINE
from qstar_dagster.tasks.verdicts import OracleResult, StepVerdict

DOMAIN = "countdown"
PROBLEM_PREFIX = "Make"
# Lists of numbers: each number but the last followed by spaces, so that a run of digits
# splits into numbers one way only. `(?:-?\d+\s*)*` split it every way, and one sampled step
# with a few dozen digits and no ")" took hours to reject (tests/tasks/test_countdown.py).
_PROBLEM_RE = re.compile(r"^\s*Make\s+(\d+)\s+from:\s*((?:\d+\s+)*\d+)\s*$")
_STEP_RE = re.compile(r"^\s*(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(-?\d+)\s*\(left:\s*((?:-?\d+\s+)*(?:-?\d+)?)\s*\)\s*\.?\s*$")
OPERATORS = ("+", "-", "*", "/")


def apply(a: int, op: str, b: int) -> int | None:
    """a op b under the rules, or None when the rules forbid it (a result that is not a
    positive integer)."""
    if op == "+":
        return a + b
    if op == "*":
        return a * b
    if op == "-":
        return a - b if a > b else None
    if op == "/":
        return a // b if b > 0 and a % b == 0 else None
    raise ValueError(f"unknown operator {op!r}; Countdown has {' '.join(OPERATORS)}")


def moves(numbers: tuple[int, ...]) -> list[tuple[int, str, int, int, tuple[int, ...]]]:
    """Every legal step from `numbers` (sorted): (a, op, b, result, what is left, sorted)."""
    out, seen = [], set()
    for i, j in itertools.permutations(range(len(numbers)), 2):
        a, b = numbers[i], numbers[j]
        rest = [n for k, n in enumerate(numbers) if k not in (i, j)]
        for op in OPERATORS:
            if op in "+*" and a > b:  # commutative: write the smaller first, once
                continue
            c = apply(a, op, b)
            if c is None or (a, op, b) in seen:
                continue
            seen.add((a, op, b))
            out.append((a, op, b, c, tuple(sorted(rest + [c]))))
    return out


@lru_cache(maxsize=1 << 18)
def reachable(numbers: tuple[int, ...]) -> frozenset[int]:
    """The values a full solution can end with, using every number (sorted tuple)."""
    if len(numbers) == 1:
        return frozenset(numbers)
    return frozenset().union(*(reachable(left) for *_, left in moves(numbers)))


def solvable(numbers: tuple[int, ...] | list[int], target: int) -> bool:
    return target in reachable(tuple(sorted(numbers)))


def format_step(a: int, op: str, b: int, c: int, left: tuple[int, ...]) -> str:
    return "".join(step_parts(a, op, b, c, left))


def step_parts(a: int, op: str, b: int, c: int, left: tuple[int, ...]) -> tuple[str, str]:
    """A step as (its choice, what follows from the choice): `8 - 4` and ` = 4 (left: 4 7 8)`."""
    return f"{a} {op} {b}", f" = {c} (left: {' '.join(map(str, left))})"


def practice_walk(problem_text: str, rng: random.Random) -> list[tuple[str, bool]]:
    """Random legal moves until one number is left, as pieces of text that a policy is trained
    on (True) or not (False): the choices are not, what follows from them is. Reference
    solutions only ever show steps that reach the target, so a policy trained on them alone
    learns that a solution's last result *is* the target and writes it whatever the numbers
    (`7 + 65 = 73` for target 73: most of the built-in policy's invalid steps). On practice
    walks it learns the arithmetic and the list of what is left on every move, while its
    choices still come from solutions only (README, "Practice walks")."""
    numbers, pieces = parse_problem(problem_text).numbers, []
    while len(numbers) > 1:
        a, op, b, c, left = rng.choice(moves(numbers))
        choice, rest = step_parts(a, op, b, c, left)
        pieces += [(choice, False), (rest + (LINE.separator if len(left) > 1 else ""), True)]
        numbers = left
    return pieces


def random_solution(numbers: tuple[int, ...], target: int, rng: random.Random) -> list[str] | None:
    """A valid solution, found depth first in a random order of moves: a random one among
    the valid ones (not uniform), so a policy trained on them learns no fixed order."""
    if len(numbers) == 1:
        return [] if numbers[0] == target else None
    options = moves(numbers)
    rng.shuffle(options)
    for a, op, b, c, left in options:
        if target in reachable(left):
            rest = random_solution(left, target, rng)
            if rest is not None:
                return [format_step(a, op, b, c, left), *rest]
    return None


@dataclass(frozen=True)
class CountdownSpec:
    """Knobs of the generator: how many numbers, their range, and the target's range. Only
    solvable problems are made: the target is drawn among the values the numbers reach.
    A generator may take several specs at once (a mixture, one share each, so a spec listed
    twice has two): the built-in default, `DEFAULT_SPECS`, is one."""

    n_numbers: int = 4
    min_number: int = 1
    max_number: int = 13
    min_target: int = 10
    max_target: int = 99

    def __post_init__(self) -> None:
        if not 2 <= self.n_numbers <= 6:
            raise ValueError(f"Countdown problems have 2 to 6 numbers, got n_numbers={self.n_numbers}")
        if not 1 <= self.min_number <= self.max_number:
            raise ValueError(f"need 1 <= min_number <= max_number, got {self.min_number}, {self.max_number}")
        if not 1 <= self.min_target <= self.max_target:
            raise ValueError(f"need 1 <= min_target <= max_target, got {self.min_target}, {self.max_target}")


@dataclass(frozen=True)
class CountdownProblem:
    numbers: tuple[int, ...]  # sorted
    target: int

    @property
    def text(self) -> str:
        return f"{PROBLEM_PREFIX} {self.target} from: {' '.join(map(str, self.numbers))}"

    def to_problem(self, rng: random.Random) -> Problem:
        steps = random_solution(self.numbers, self.target, rng)
        if steps is None:
            raise ValueError(f"{self.text} has no solution")
        return Problem(problem=self.text, reference_answer=str(self.target), reference_solution=LINE.join(steps),
                       domain=DOMAIN, meta={"n_numbers": len(self.numbers)})


def parse_problem(text: str) -> CountdownProblem:
    m = _PROBLEM_RE.match(text.strip())
    if not m:
        raise ValueError(f"not a Countdown problem: {text!r} (expected 'Make <target> from: <numbers>')")
    return CountdownProblem(tuple(sorted(int(x) for x in m.group(2).split())), int(m.group(1)))


# The built-in default: two shares of three numbers from 1-30 to one of Game of 24's four
# numbers from 1-13 (no game24 problem is in training: a hand with target 24 is held out),
# targets 10-99. Four numbers alone leave the converged built-in policy at 13% greedy (it has
# to see two moves ahead to choose the first); equal shares left it at 28.0% (three numbers
# 42%, four 17%), under issue 16's 30-70% band, hence two shares to one. The four-number
# share keeps the search problem that Game of 24 is. Three numbers go to 30 because 1-13 has
# only ~4,000 three-number problems (1-30: 33,093). README, "Countdown defaults".
_THREE = CountdownSpec(n_numbers=3, max_number=30)
DEFAULT_SPECS: tuple[CountdownSpec, ...] = (_THREE, _THREE, CountdownSpec())


def spec_parts(spec: CountdownSpec | tuple[CountdownSpec, ...] | None) -> tuple[CountdownSpec, ...]:
    """A spec or a mixture as the mixture's parts (None: the built-in default's)."""
    return DEFAULT_SPECS if spec is None else spec if isinstance(spec, tuple) else (spec,)


def sample_problem(rng: random.Random, spec: CountdownSpec) -> CountdownProblem:
    while True:
        numbers = tuple(sorted(rng.randint(spec.min_number, spec.max_number) for _ in range(spec.n_numbers)))
        targets = sorted(t for t in reachable(numbers) if spec.min_target <= t <= spec.max_target)
        if targets:
            return CountdownProblem(numbers, rng.choice(targets))


def generate_problems(n: int, seed: int, spec: CountdownSpec | tuple[CountdownSpec, ...] | None = None,
                      exclude: frozenset[str] = frozenset()) -> list[Problem]:
    """`n` distinct solvable problems (none of whose texts is in `exclude`), the same ones
    for the same seed and spec. Several specs share `n` equally, in turn (problem i is drawn
    from spec i mod their count)."""
    specs = spec_parts(spec)
    rng = random.Random(seed)
    seen, out, attempts = set(exclude), [], 0
    while len(out) < n:
        attempts += 1
        part = specs[len(out) % len(specs)]
        if attempts > 50 * n + 1000:
            raise ValueError(f"{part} has too few distinct problems for n={n}; widen the ranges")
        p = sample_problem(rng, part)
        if p.text not in seen:
            seen.add(p.text)
            out.append(p.to_problem(rng))
    return out


def game24_problems(seed: int = 0) -> list[Problem]:
    """Every hand of 4 numbers from 1-13 (a multiset) that makes 24 under these rules."""
    rng = random.Random(seed)
    hands = itertools.combinations_with_replacement(range(1, 14), 4)
    return [CountdownProblem(h, 24).to_problem(rng) for h in hands if solvable(h, 24)]


# --- the step oracle -----------------------------------------------------------------


def oracle_steps(problem: str | CountdownProblem, steps: list[str]) -> OracleResult:
    """Per step: valid (its two numbers are among those left, the arithmetic follows the
    rules, and it states exactly what is left) and still solvable (the target can be reached
    from what is left). A step is correct when it is both; an invalid step leaves the
    numbers as they were, so later steps are judged against what is really there."""
    prob = parse_problem(problem) if isinstance(problem, str) else problem
    left = Counter(prob.numbers)
    verdicts = []
    for step in steps:
        if sum(left.values()) <= 1:
            verdicts.append(StepVerdict(False, "step after the last number"))
            continue
        m = _STEP_RE.match(step)
        if not m:
            verdicts.append(StepVerdict(False, "not of the form 'a op b = c (left: ...)'"))
            continue
        a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        stated = Counter(int(x) for x in m.group(5).split())
        truth = apply(a, op, b)
        after = left - Counter([a, b]) + Counter([c])
        if Counter([a, b]) - left:
            verdict = StepVerdict(False, f"uses {a} and {b}, but what is left is {_show(left)}")
        elif truth != c:
            verdict = StepVerdict(False, f"{a} {op} {b} is {truth}, not {c}" if truth is not None
                                  else f"{a} {op} {b} is not a positive integer")
        elif stated != after:
            verdict = StepVerdict(False, f"states {_show(stated)} left, but it is {_show(after)}")
        else:
            left = after  # a valid step changes what is left, whether or not the target is still in reach
            verdict = StepVerdict(True, "ok") if solvable(tuple(left.elements()), prob.target) else \
                StepVerdict(False, f"valid, but {prob.target} cannot be made from {_show(left)}")
        verdicts.append(verdict)
    first_error = next((i for i, v in enumerate(verdicts) if not v.correct), None)
    done = sum(left.values()) == 1
    reached = done and prob.target in left
    return OracleResult(verdicts, first_error, done, reached and first_error is None)


def grade(problem: str, solution: str) -> tuple[str | None, bool]:
    """(the last number left, right): right when every step is valid and exactly the target
    is left."""
    steps = LINE.split(solution)
    result = oracle_steps(problem, steps)
    last = None
    if steps and (m := _STEP_RE.match(steps[-1])):
        nums = m.group(5).split()
        last = nums[0] if len(nums) == 1 else None
    return last, result.answer_correct


def _show(numbers: Counter) -> str:
    return " ".join(map(str, sorted(numbers.elements()))) or "nothing"
