"""lm-evaluation-harness against `qstar serve`: a small local task file of built-in problems,
run with lm-eval's `local-completions` model, scores what the factory's own evaluation
scores on the same problems with the same policy (greedy)."""

import json

import pytest

from qstar_dagster.evaluation.evaluate import evaluate_policy
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.tasks.arith import generate_problems

from ..conftest import EASY_ARITH, serve_model

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is a dev dependency: pip install -e '.[dev]'")

MAX_TOKENS = 48
# The answer is the last number the solution writes: the factory's grading of the built-in
# domain ("The answer is N", else the last number) on its policy's solutions.
TASK = """task: qstar_arith
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{problem}}}}\\n"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: {max_tokens}
  do_sample: false
  temperature: 0
filter_list:
  - name: last_number
    filter:
      - function: regex
        regex_pattern: "(-?[0-9]+)"
        group_select: -1
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def policy_server(arith_policy_dir):
    yield from serve_model(arith_policy_dir, "arith")


def test_lm_eval_scores_what_the_factory_scores(policy_server, arith_policy_dir, tmp_path):
    from lm_eval.tasks import TaskManager

    problems = generate_problems(24, seed=21, spec=EASY_ARITH)
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"problem": p.problem, "answer": p.reference_answer}) + "\n" for p in problems))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "qstar_arith.yaml").write_text(TASK.format(data=data, max_tokens=MAX_TOKENS))

    result = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=f"model=arith,base_url={policy_server}/v1/completions,tokenizer_backend=huggingface,"
                   f"tokenizer={arith_policy_dir},tokenized_requests=False,num_concurrent=4,max_retries=1",
        tasks=["qstar_arith"], task_manager=TaskManager(include_path=str(tasks)), log_samples=True)
    harness = result["results"]["qstar_arith"]["exact_match,last_number"]
    ours = evaluate_policy(TransformersGenerator(str(arith_policy_dir)), problems, k=1, max_new_tokens=MAX_TOKENS)
    print(f"lm-eval exact_match {harness:.3f}, the factory's greedy accuracy {ours['greedy']:.3f}")
    assert result["results"]["qstar_arith"]["sample_len"] == len(problems)
    assert 0 < ours["greedy"] < 1  # neither extreme, so the equality below says something
    assert harness == pytest.approx(ours["greedy"])
