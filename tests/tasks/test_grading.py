import concurrent.futures as cf
import multiprocessing
import threading

import pytest

from qstar_dagster.tasks import load_problems
from qstar_dagster.tasks.grading import _helper, answers_match, extract_answer, is_parseable_answer
from tests.conftest import SHARED_DATA

MATCHES = [
    ("1,000", "1000"), ("$18.00", "18"), ("\\$18", "18"), ("-7", "-7"), ("3.50", "3.5"),
    ("\\frac{1}{2}", "0.5"), ("\\dfrac12", "\\frac{1}{2}"), ("6-9i", "6-9i"), ("x+1", "1+x"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"), ("\\text{(C)}", "C"),
    ("2\\sqrt{2}", "\\sqrt{8}"), ("[-2, 7)", "[-2,7)"),
]
NEAR_MISSES = [
    ("1", "10"), ("10", "1"), ("6-9i", "6+9i"), ("0.5", "5"), ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("(3, \\pi)", "(3, \\frac{\\pi}{2})"), ("18", "18.5"), ("1,000", "100"), ("-7", "7"), ("[-2, 7)", "[-2, 7]"),
]


@pytest.mark.parametrize("predicted,reference", MATCHES)
def test_equal_answers_match(predicted, reference):
    assert answers_match(predicted, reference)


@pytest.mark.parametrize("predicted,reference", NEAR_MISSES)
def test_near_misses_do_not_match(predicted, reference):
    assert not answers_match(predicted, reference)


def test_missing_answers_never_match():
    assert not answers_match(None, "1") and not answers_match("", "1") and not answers_match("1", None)


@pytest.mark.parametrize("text,answer", [
    ("so $x = \\boxed{\\frac{1}{\\sqrt{2}}}$ and done", "\\frac{1}{\\sqrt{2}}"),
    ("first \\boxed{1} then \\boxed{\\{a, b\\}}", "\\{a, b\\}"),
    ("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 1,234", "1,234"),
    ("Step 2: 15 * 3 = 45\nThe answer is 45", "45"),
    ("The final answer is: $\\frac{3}{4}$.", "\\frac{3}{4}"),
    ("9 + 6 = <<9+6=15>>15 liters of the 24 liters", "15"),
    ("we have 3 apples and 17 pears", "17"),
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_extract_answer_gives_none_when_there_is_none():
    assert extract_answer("no numbers here") is None
    assert extract_answer("\\boxed{unbalanced") is None
    assert extract_answer(None) is None


def _grade_all(pairs):
    return [answers_match(p, r) for p, r in pairs]


def test_grading_works_in_threads_and_worker_processes():
    # Pairs only math-verify can settle; math-verify's own SIGALRM timeout cannot run off the
    # main thread, which would make every one of these silently False.
    pairs = [(p + " ", r) for p, r in MATCHES[5:]] + [(p + " ", r) for p, r in NEAR_MISSES[2:6]]
    want = [True] * len(MATCHES[5:]) + [False] * 4
    with cf.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda pr: answers_match(*pr), pairs)) == want
    with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(_grade_all, pairs).result(timeout=120) == want


def test_a_helper_that_does_not_answer_in_time_counts_as_no_match_and_is_replaced():
    result = {}

    def off_main_thread():
        # a cold helper (it imports math-verify first) cannot answer within 0 s; a warm one
        # could, when this thread is descheduled between writing and waiting (seen under load)
        _helper.close()
        result["late"] = _helper.call("_verify_here", ["\\frac{1}{2}", "0.5", 5], wait_s=0.0)
        result["after"] = _helper.call("_verify_here", ["\\frac{1}{2}", "0.5", 5], wait_s=60)

    t = threading.Thread(target=off_main_thread)
    t.start()
    t.join(90)
    assert result == {"late": False, "after": True}


def test_reference_answer_parseability():
    assert is_parseable_answer("42") and is_parseable_answer("\\frac{5}{6}")
    assert not is_parseable_answer("") and not is_parseable_answer(None)
    assert not is_parseable_answer("\\frac{1}{") and not is_parseable_answer(")(")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the shared reference data is not beside this checkout")
@pytest.mark.parametrize("name", ["gsm8k/test.jsonl", "gsm8k/train.jsonl", "math500/test.jsonl"])
def test_every_real_row_grades_against_its_own_solution(name):
    problems = load_problems(SHARED_DATA / name)
    misses = []
    for p in problems:
        solution = p.reference_solution
        if p.domain == "gsm8k":  # the loader splits '#### n' off the solution; the original text has it
            solution = f"{solution}\n#### {p.reference_answer}"
        if not answers_match(extract_answer(solution), p.reference_answer):
            misses.append((p.problem[:60], p.reference_answer))
    assert misses == []
