import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qstar_dagster.tasks.arith import (
    ArithSpec,
    generate_problems,
    oracle_steps,
    parse_problem,
    sample_problem,
)
from qstar_dagster.tasks.grading import answers_match, extract_answer
from qstar_dagster.tasks.steps import LINE

specs = st.builds(
    ArithSpec,
    min_steps=st.integers(1, 3),
    max_steps=st.integers(3, 6),
    max_operand=st.integers(10, 999),
    operators=st.sampled_from([("+",), ("-",), ("*",), ("+", "-"), ("+", "-", "*")]),
    allow_negative=st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10**6), spec=specs)
def test_every_reference_solution_is_all_correct(seed, spec):
    prob = sample_problem(random.Random(seed), spec)
    result = oracle_steps(prob.text, prob.reference_steps())
    assert result.first_error is None and all(result.labels)
    assert result.complete and result.answer_correct
    assert result.processbench_label == -1
    assert spec.min_steps <= len(prob.operations) <= spec.max_steps
    assert {op for op, _ in prob.operations} <= set(spec.operators)
    # the problem text round-trips, and the solution's stated answer is the reference
    assert parse_problem(prob.text) == prob
    p = prob.to_problem()
    assert answers_match(extract_answer(p.reference_solution), p.reference_answer)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10**6), data=st.data())
def test_one_corrupted_step_is_the_first_error(seed, data):
    prob = sample_problem(random.Random(seed), ArithSpec(min_steps=2, max_steps=5))
    steps = prob.reference_steps()
    i = data.draw(st.integers(0, len(steps) - 2), label="corrupted operation step")
    delta = data.draw(st.sampled_from([-10, -1, 1, 2, 10]), label="delta")
    lhs, result = steps[i].rsplit("=", 1)
    steps[i] = f"{lhs}= {int(result) + delta}"
    verdict = oracle_steps(prob.text, steps)
    assert verdict.first_error == i
    assert not verdict.verdicts[i].correct and "arithmetic" in verdict.verdicts[i].reason
    # the untouched next step still starts from the true value, not the one step i established
    assert "established value" in verdict.verdicts[i + 1].reason or i + 1 == len(steps) - 1


def test_oracle_names_each_kind_of_mistake():
    text = "Compute left to right: 10 + 5 * 3 - 20"
    good = ["10 + 5 = 15", "15 * 3 = 45", "45 - 20 = 25", "The answer is 25"]
    assert oracle_steps(text, good).first_error is None

    def first(steps):
        r = oracle_steps(text, steps)
        return r.first_error, r.verdicts[r.first_error].reason

    assert first(["10 + 5 = 15", "16 * 3 = 48"]) == (1, "starts from 16, but the established value is 15")
    assert first(["10 + 5 = 15", "15 * 4 = 60"])[1].startswith("applies * 4, but the next operation is * 3")
    assert first(["10 + 5 = 15", "The answer is 15"]) == (1, "answers with 2 operation(s) left")
    assert first(good[:3] + ["The answer is 26"]) == (3, "answers 26, but the last step gave 25")
    assert first(["ten plus five"])[0] == 0
    assert first(good + ["25 + 1 = 26"]) == (4, "step after the final answer")
    assert first(good[:3] + ["25 + 1 = 26"])[1] == "extra operation: the problem has none left"
    incomplete = oracle_steps(text, good[:2])
    assert incomplete.first_error is None and not incomplete.complete


def test_generator_is_seeded_distinct_and_exercises_hard_cases():
    a, b = generate_problems(300, seed=7), generate_problems(300, seed=7)
    assert [p.problem for p in a] == [p.problem for p in b]
    assert [p.problem for p in generate_problems(300, seed=8)] != [p.problem for p in a]
    assert len({p.problem for p in a}) == 300
    steps = [s for p in a for s in LINE.split(p.reference_solution)]
    assert any(s.split("=")[1].strip().startswith("-") for s in steps if "=" in s), "no negative results"
    assert any(" * " in s for s in steps), "no multiplication"
    # a carry: some addition whose units digits sum past 9
    adds = [s.split(" = ")[0].split(" + ") for s in steps if " + " in s]
    assert any(int(x[-1]) + int(y[-1]) >= 10 for x, y in adds if not x.startswith("-"))


def test_no_negative_results_when_disallowed():
    spec = ArithSpec(operators=("+", "-"), allow_negative=False, max_steps=6)
    for p in generate_problems(200, seed=3, spec=spec):
        assert all(not s.split("=")[-1].strip().startswith("-") for s in p.reference_solution.splitlines()[:-1])


def test_bad_spec_and_bad_problem_text_are_refused():
    with pytest.raises(ValueError, match="operators"):
        ArithSpec(operators=("/",))
    with pytest.raises(ValueError, match="min_steps"):
        ArithSpec(min_steps=3, max_steps=2)
    with pytest.raises(ValueError, match="not a built-in arithmetic problem"):
        parse_problem("What is 2 + 2?")
