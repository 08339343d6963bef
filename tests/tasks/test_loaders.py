import pytest

from qstar_dagster.tasks import JsonlFields, ProblemFileError, load_problems, split_steps
from tests.conftest import write_jsonl


def test_gsm8k_rows(gsm8k_file):
    problems = load_problems(gsm8k_file)
    assert [p.reference_answer for p in problems] == ["13", "3,600"]
    assert problems[0].domain == "gsm8k" and "####" not in problems[0].reference_solution
    assert problems[0].problem.startswith("Janet")


def test_math_rows_use_answer_field_or_last_boxed(math_file):
    problems = load_problems(math_file)
    assert [p.reference_answer for p in problems] == ["\\frac{5}{6}", "6-9i"]
    assert problems[0].meta == {"level": 1, "subject": "Prealgebra", "unique_id": "test/a.json"}


def test_generic_jsonl_with_configured_fields(tmp_path):
    f = write_jsonl(tmp_path / "g.jsonl", [{"q": "2+2?", "final": "4", "source": "x"}])
    [p] = load_problems(f, fields=JsonlFields(problem="q", answer="final", solution=None))
    assert (p.problem, p.reference_answer, p.reference_solution, p.meta) == ("2+2?", "4", None, {"source": "x"})
    [p] = load_problems(write_jsonl(tmp_path / "h.jsonl", [{"problem": "1+1?", "answer": 2}]))
    assert p.domain == "jsonl" and p.reference_answer == "2"


def test_prompt_ids_are_content_hashes(gsm8k_file, tmp_path):
    a = load_problems(gsm8k_file)
    b = load_problems(write_jsonl(tmp_path / "copy.jsonl", [{"question": "Janet has 16 eggs and eats 3. How many "
                                                             "are left?", "answer": "other words\n#### 13"}]))
    assert a[0].prompt_id == b[0].prompt_id and a[0].prompt_id != a[1].prompt_id


@pytest.mark.parametrize("content,kwargs,line,what", [
    (b'{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": \n', {}, 2, "malformed JSON"),
    (b'{"problem": "a", "answer": "1"}\n{"problem": "b"}\n', {}, 2, "no 'answer' field"),
    (b'{"problem": "a", "answer": "1"}\n{"problem": "  ", "answer": "2"}\n', {}, 2, "the 'problem' field is empty"),
    (b'{"problem": "a", "answer": "1"}\n{"problem": "caf\xe9", "answer": "2"}\n', {}, 2, "not UTF-8"),
    (b"\n  \n", {}, None, "the file is empty"),
    (b'{"prompt": "a", "target": "1"}\n', {}, 1, "cannot tell the format"),
    (b'{"problem": "a", "answer": "1"}\n', {"format": "csv"}, None, "unknown format 'csv'"),
    (b'[1, 2]\n', {}, 1, "a JSON list, not an object"),
    (b'{"question": "q", "answer": "no hashes"}\n', {"format": "gsm8k"}, 1, "no '#### <number>'"),
])
def test_bad_input_names_file_line_and_fix(tmp_path, content, kwargs, line, what):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(content)
    with pytest.raises(ProblemFileError) as err:
        load_problems(f, **kwargs)
    msg = str(err.value)
    assert str(f) in msg and what in msg and "Fix:" in msg
    assert err.value.line == line
    if line is not None:
        assert f"line {line}" in msg


def test_step_splitters():
    assert split_steps("1 + 2 = 3\n\n3 * 2 = 6\nThe answer is 6", "arith") == ["1 + 2 = 3", "3 * 2 = 6",
                                                                                "The answer is 6"]
    assert split_steps("First, x.\nStill first.\n\nSecond.\n\n\n", "math") == ["First, x.\nStill first.", "Second."]
    assert split_steps("a ;; b", separator=";;") == ["a", "b"]
    with pytest.raises(ValueError, match="unknown domain"):
        split_steps("x", "chess")
