"""The Countdown domain: generator, solver, step oracle and grading, and the domain interface
that the stages ask instead of assuming arithmetic."""

import itertools
import random
import re
import subprocess
import sys
from functools import cache

import pytest

from qstar_dagster.tasks import countdown
from qstar_dagster.tasks.countdown import CountdownSpec, grade, oracle_steps, solvable
from qstar_dagster.tasks.domains import domain
from qstar_dagster.tasks.prompt_sets import builtin_problems
from qstar_dagster.tasks.steps import LINE


@cache
def values_by_splits(numbers: tuple[int, ...]) -> frozenset[int]:
    """An independent solver: every value of an expression tree over all of `numbers`, built
    by splitting the multiset in two (not by combining pairs, as the package does)."""
    if len(numbers) == 1:
        return frozenset(numbers)
    out = set()
    idx = range(len(numbers))
    for r in range(1, len(numbers)):
        for left_idx in itertools.combinations(idx, r):
            left = tuple(sorted(numbers[i] for i in left_idx))
            right = tuple(sorted(numbers[i] for i in idx if i not in left_idx))
            for a in values_by_splits(left):
                for b in values_by_splits(right):
                    out.update({a + b, a * b})
                    if a > b:
                        out.add(a - b)
                    if b and a % b == 0:
                        out.add(a // b)
    return frozenset(out)


def test_the_solver_agrees_with_an_independent_one():
    rng = random.Random(0)
    for _ in range(300):
        hand = tuple(sorted(rng.randint(1, 20) for _ in range(rng.choice([3, 4]))))
        assert countdown.reachable(hand) == values_by_splits(hand), hand


def test_game24_is_every_hand_that_makes_24_under_integer_rules():
    problems = builtin_problems("game24")
    hands = {countdown.parse_problem(p.problem).numbers for p in problems}
    expected = {h for h in itertools.combinations_with_replacement(range(1, 14), 4) if 24 in values_by_splits(h)}
    assert hands == expected and len(problems) == len(hands)
    assert (4, 7, 8, 8) in hands and (1, 1, 1, 1) not in hands
    assert (3, 3, 8, 8) not in hands  # 8 / (3 - 8 / 3) needs a fraction: not under these rules


def test_reference_solutions_are_right_and_vary_in_order():
    problems = countdown.generate_problems(300, seed=5, spec=CountdownSpec())
    assert len({p.problem for p in problems}) == 300
    first_moves = set()
    for p in problems:
        steps = LINE.split(p.reference_solution)
        result = oracle_steps(p.problem, steps)
        assert result.first_error is None and result.complete and result.answer_correct, p
        assert grade(p.problem, p.reference_solution) == (p.reference_answer, True)
        assert len(steps) == 3  # 4 numbers: 3 combinations
        first_moves.add(steps[0].split("=")[0].split()[1])
    assert first_moves == set("+-*/")  # the solver's move order is random, not fixed


def test_the_default_mixes_two_shares_of_three_numbers_to_one_of_four():
    problems = countdown.generate_problems(600, seed=5)
    parsed = [countdown.parse_problem(p.problem) for p in problems]
    threes = [q for q in parsed if len(q.numbers) == 3]
    fours = [q for q in parsed if len(q.numbers) == 4]
    assert len(threes) == 2 * len(fours) == 400
    assert max(max(q.numbers) for q in threes) > 13 >= max(max(q.numbers) for q in fours)  # 1-30 and 1-13
    assert all(10 <= q.target <= 99 for q in parsed)
    for p in problems:  # each with its own number of steps
        steps = LINE.split(p.reference_solution)
        assert len(steps) == p.meta["n_numbers"] - 1 and oracle_steps(p.problem, steps).answer_correct
    with pytest.raises(ValueError, match="n_numbers=3, min_number=1, max_number=3.*too few distinct"):
        countdown.generate_problems(100, seed=1, spec=(CountdownSpec(3, 1, 3), CountdownSpec()))


def test_the_built_in_sets_are_disjoint_and_solvable():
    test = builtin_problems("countdown-test")
    train = {p.problem for p in builtin_problems("countdown-train", n=20000)}
    game24 = {p.problem for p in builtin_problems("game24")}
    assert len(test) == 200 and not {p.problem for p in test} & (train | game24)
    assert not train & game24
    for p in test:
        q = countdown.parse_problem(p.problem)
        assert solvable(q.numbers, q.target) and 10 <= q.target <= 99 and len(q.numbers) in (3, 4)


@pytest.mark.parametrize(("steps", "reasons"), [
    (["8 - 4 = 4 (left: 4 7 8)", "7 - 4 = 3 (left: 3 8)", "3 * 8 = 24 (left: 24)"], ["ok", "ok", "ok"]),
    (["9 - 4 = 5 (left: 5 7 8)"], ["uses 9 and 4, but what is left is 4 7 8 8"]),
    (["8 - 4 = 5 (left: 5 7 8)"], ["8 - 4 is 4, not 5"]),
    (["4 - 8 = -4 (left: -4 7 8)"], ["4 - 8 is not a positive integer"]),
    (["7 / 4 = 1 (left: 1 8 8)"], ["7 / 4 is not a positive integer"]),
    (["8 - 4 = 4 (left: 4 8)"], ["states 4 8 left, but it is 4 7 8"]),
    (["8 + 8 = 16 (left: 4 7 16)"], ["valid, but 24 cannot be made from 4 7 16"]),
    # 7 - 4 = 3 and 3 * 8 = 24 would leave an 8 unused: every number must be used
    (["4 * 7 = 28 (left: 8 8 28)", "8 + 8 = 16 (left: 16 28)"], ["valid, but 24 cannot be made from 8 8 28",
                                                                 "valid, but 24 cannot be made from 16 28"]),
    (["7 - 4 = 3 (left: 3 8 8)"], ["valid, but 24 cannot be made from 3 8 8"]),
    (["the answer is 24"], ["not of the form 'a op b = c (left: ...)'"]),
])
def test_the_oracle_says_what_is_wrong(steps, reasons):
    result = oracle_steps("Make 24 from: 4 7 8 8", steps)
    assert [v.reason for v in result.verdicts] == reasons
    assert result.first_error == next((i for i, r in enumerate(reasons) if r != "ok"), None)


def test_a_long_run_of_digits_is_rejected_at_once():
    """A policy drifting in RL wrote a step whose list of what is left was a run of digits with
    no ")": the oracle's pattern tried every way to split it into numbers, and the run hung in
    grading. In a subprocess, so that a regression fails here instead of hanging the suite."""
    digits = "7" * 60
    check = (f"from qstar_dagster.tasks.countdown import grade, oracle_steps, parse_problem\n"
             f"r = oracle_steps('Make 24 from: 4 7 8 8', ['8 - 4 = 4 (left: {digits}'])\n"
             f"assert r.verdicts[0].reason.startswith('not of the form'), r\n"
             f"assert grade('Make 24 from: 4 7 8 8', '8 - 4 = 4 (left: 4 {digits} x') == (None, False)\n"
             f"try:\n    parse_problem('Make 24 from: {digits}x')\nexcept ValueError:\n    pass\n"
             f"else:\n    raise AssertionError('parsed')\n")
    subprocess.run([sys.executable, "-c", check], check=True, timeout=30)


def test_an_invalid_step_leaves_the_numbers_as_they_were():
    result = oracle_steps("Make 24 from: 4 7 8 8", ["8 - 4 = 5 (left: 5 7 8)", "8 - 4 = 4 (left: 4 7 8)",
                                                    "7 - 4 = 3 (left: 3 8)", "3 * 8 = 24 (left: 24)",
                                                    "3 * 8 = 24 (left: 24)"])
    assert [v.correct for v in result.verdicts] == [False, True, True, True, False]
    assert result.verdicts[-1].reason == "step after the last number"
    assert result.complete and not result.answer_correct  # reached 24, but through a wrong step


def test_still_solvable_matches_the_independent_solver_on_random_valid_paths():
    rng = random.Random(1)
    for p in countdown.generate_problems(100, seed=9):
        q = countdown.parse_problem(p.problem)
        left, steps, truth = q.numbers, [], []
        while len(left) > 1:
            a, op, b, c, left = rng.choice(countdown.moves(left))
            steps.append(countdown.format_step(a, op, b, c, left))
            truth.append(q.target in values_by_splits(left))
        result = oracle_steps(p.problem, steps)
        assert [v.correct for v in result.verdicts] == truth
        assert grade(p.problem, LINE.join(steps))[1] == (left == (q.target,))


def test_the_spec_refuses_nonsense():
    with pytest.raises(ValueError, match="2 to 6 numbers"):
        CountdownSpec(n_numbers=1)
    with pytest.raises(ValueError, match="not a Countdown problem"):
        countdown.parse_problem("Compute left to right: 1 + 2")


def test_stages_ask_the_domain():
    cd, ar, gsm = domain("countdown"), domain("arith"), domain("gsm8k")
    assert cd.has_oracle and ar.has_oracle and not gsm.has_oracle
    assert not cd.votes and ar.votes  # majority voting means nothing when every right answer is the target
    assert cd.step_format == ar.step_format == LINE
    [p] = builtin_problems("countdown-test", n=1)
    assert cd.grade(p, p.reference_solution) == (p.reference_answer, True)
    assert cd.grade(p, "1 + 1 = 2 (left: 2)")[1] is False
    with pytest.raises(ValueError, match="no step oracle"):
        gsm.oracle(p, ["x"])
    with pytest.raises(ValueError, match="unknown domain 'chess'"):
        domain("chess")


def test_practice_walks_are_legal_and_leave_the_choices_untrained():
    rng = random.Random(3)
    for p in builtin_problems("countdown-train", n=50):
        pieces = domain("countdown").practice(p.problem, rng)
        steps = LINE.split("".join(text for text, _ in pieces))
        verdicts = oracle_steps(p.problem, steps).verdicts
        # every step is valid (legal numbers, exact arithmetic, the right list), whether or not it reaches the target
        assert all(v.correct or v.reason.startswith("valid, but") for v in verdicts), (p.problem, steps)
        assert len(steps) == len(countdown.parse_problem(p.problem).numbers) - 1
        # pieces alternate: a choice `a op b` (not trained), then what follows from it (trained)
        assert [trained for _, trained in pieces] == [False, True] * len(steps)
        for (choice, _), (rest, _) in zip(pieces[::2], pieces[1::2]):
            assert re.fullmatch(r"\d+ [-+*/] \d+", choice) and rest.startswith(" = ")
    assert domain("arith").practice is None
