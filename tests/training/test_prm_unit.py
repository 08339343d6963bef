"""The PRM's pieces: where a step ends, which rows teach what, and the checkpoint round trip."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qstar_dagster.tasks.arith import generate_problems
from qstar_dagster.training.charlm import char_tokenizer
from qstar_dagster.training.prm import (
    LikelihoodScorer,
    PRMScorer,
    PRMTrainSpec,
    encode_steps,
    sibling_pairs,
    step_auc,
    token_logprobs,
    train_prm,
    training_examples,
)

from ..conftest import EASY_ARITH


@given(st.lists(st.tuples(st.sampled_from([0.0, 0.2, 0.5, 0.7, 1.0]), st.booleans()), max_size=30))
def test_step_auc_is_the_share_of_right_wrong_pairs_ranked_right(scored):
    right = [s for s, ok in scored if ok]
    wrong = [s for s, ok in scored if not ok]
    if not right or not wrong:
        assert step_auc(scored) is None
        return
    pairs = [1.0 if r > w else 0.5 if r == w else 0.0 for r in right for w in wrong]
    assert step_auc(scored) == pytest.approx(sum(pairs) / len(pairs))


def test_step_auc_is_not_fooled_by_calling_every_step_right():
    # 9 right steps and 1 wrong one, all scored alike: 90% accuracy at any threshold below, AUC 0.5
    assert step_auc([(0.9, True)] * 9 + [(0.9, False)]) == 0.5


def test_a_step_end_is_scored_as_separator_or_end_of_sequence():
    tok = char_tokenizer()
    ids, spans = encode_steps(tok, "Compute left to right: 1 + 2", ["1 + 2 = 3", "The answer is 3"])
    assert [tok.decode(ids[a:b]) for a, b in spans] == ["1 + 2 = 3\n", "The answer is 3\n"]
    logits = torch.zeros(1, len(ids), len(tok))
    sep, eos = ids[-1], tok.eos_token_id
    logits[0, -2, eos] = 8.0  # after the final step, the policy expects the end of sequence, not a separator
    raw = token_logprobs(logits, torch.tensor([ids]), [spans], None)
    ended = token_logprobs(logits, torch.tensor([ids]), [spans], eos)
    p = logits[0, -2].softmax(-1)
    assert raw[0, -1].item() == pytest.approx(math.log(p[sep]), rel=1e-5)  # what the earlier code scored: ~e^-8
    assert ended[0, -1].item() == pytest.approx(math.log(p[sep] + p[eos]), rel=1e-5)
    ends = [b - 2 for _, b in spans]  # token_lp's index of each step's separator
    others = [t for t in range(raw.shape[1]) if t not in ends]
    assert torch.equal(raw[0, others], ended[0, others])  # every other token is read as it is


def test_a_trained_policy_scores_its_own_right_final_step_high_only_when_the_end_is_read_as_an_end(arith_policy_dir):
    [problem] = generate_problems(1, seed=4, spec=EASY_ARITH)
    steps = problem.reference_solution.split("\n")
    fixed = LikelihoodScorer(arith_policy_dir).score_steps(problem.problem, steps)
    raw = LikelihoodScorer(arith_policy_dir, raw_separator=True).score_steps(problem.problem, steps)
    assert fixed[-1] > 0.9 and raw[-1] < fixed[-1] - 0.2, (fixed, raw)
    assert fixed[:-1] == pytest.approx(raw[:-1], rel=1e-4)  # the same scores, up to float noise between calls


ROWS = [  # one problem's paths: two share "1 + 2 = 3", then go right and wrong; one goes wrong at once
    {"prompt": "P", "completions": ["1 + 2 = 3", "3 + 4 = 7", "The answer is 7"], "labels": [True, True, True]},
    {"prompt": "P", "completions": ["1 + 2 = 3", "3 + 4 = 8", "8 + 1 = 9"], "labels": [True, False, False]},
    {"prompt": "P", "completions": ["1 + 2 = 4", "4 + 4 = 8"], "labels": [False, False]},
]


def test_sibling_pairs_are_right_and_wrong_next_steps_of_one_prefix_up_to_the_first_error():
    assert sorted(sibling_pairs(ROWS)) == [("P", [], "1 + 2 = 3", "1 + 2 = 4"),
                                           ("P", ["1 + 2 = 3"], "3 + 4 = 7", "3 + 4 = 8")]


def test_training_rows_stop_at_the_first_error_and_teach_each_step_once():
    tok = char_tokenizer()
    examples = training_examples(tok, ROWS, PRMTrainSpec())
    targets = [e["targets"] for e in examples]
    assert targets[0] == [1.0, 1.0, 1.0]
    assert math.isnan(targets[1][0]) and targets[1][1:] == [0.0]  # "1 + 2 = 3" already taught; cut after 3 + 4 = 8
    assert targets[2] == [0.0]
    every = training_examples(tok, ROWS, PRMTrainSpec(stop_at_first_error=False, once_per_step=False))
    assert [e["targets"] for e in every] == [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0]]


def test_the_default_prm_is_the_calibrated_likelihood_and_round_trips_through_its_checkpoint(arith_policy_dir,
                                                                                               tmp_path):
    problems = generate_problems(6, seed=8, spec=EASY_ARITH)
    rows = [{"prompt": p.problem, "completions": p.reference_solution.split("\n"),
             "labels": [True] * len(p.reference_solution.split("\n"))} for p in problems]
    rows[0]["completions"][0] = rows[0]["completions"][0][:-1] + "0"  # a wrong result
    rows[0]["labels"][0] = False
    summary = train_prm(arith_policy_dir, rows, tmp_path / "prm", PRMTrainSpec())
    assert summary["loss_curve"] == [] and summary["head"]["head"] == "generative"  # nothing fine-tuned
    assert summary["final_loss"] == summary["calibration_loss"] > 0
    scorer = PRMScorer(tmp_path / "prm")
    likelihood = LikelihoodScorer(arith_policy_dir)
    items = [(r["prompt"], r["completions"]) for r in rows]
    scores, means = scorer.score_batch(items), likelihood.score_batch(items)
    assert all(0 < s < 1 for path in scores for s in path)
    flat = [s for path in scores for s in path]
    order = sorted(range(len(flat)), key=flat.__getitem__)
    # σ(Σ log p + b) is monotone in a step's summed log-likelihood (mean x tokens): the same order
    tok = char_tokenizer()
    sums = [math.log(m) * (b - a) for path, (p, st) in zip(means, items)
            for m, (a, b) in zip(path, encode_steps(tok, p, st)[1])]
    assert order == sorted(range(len(sums)), key=sums.__getitem__)
    with pytest.raises(ValueError, match="must be trained"):
        PRMTrainSpec(head="classifier")


def test_platt_calibration_fits_the_scale_too_and_sharpens_a_separating_likelihood(arith_policy_dir, tmp_path):
    """Labels that the likelihood separates (a wrong result is far less likely than the
    right one): Platt scaling fits a scale above 1 and a lower BCE than the bias alone, keeps
    the ranking, and pushes wrong steps' scores down (what a PRM-weighted vote sums)."""
    problems = generate_problems(8, seed=9, spec=EASY_ARITH)
    rows = []
    for p in problems:
        steps = p.reference_solution.split("\n")
        rows.append({"prompt": p.problem, "completions": steps, "labels": [True] * len(steps)})
        wrong = [steps[0][:-1] + str((int(steps[0][-1]) + 5) % 10), *steps[1:]]
        rows.append({"prompt": p.problem, "completions": wrong, "labels": [False] * len(steps)})
    fits = {how: train_prm(arith_policy_dir, rows, tmp_path / how, PRMTrainSpec(calibrate=how))
            for how in ("bias", "platt")}
    assert fits["bias"]["head"]["scale"] == 1.0
    assert fits["platt"]["head"]["scale"] > 1.0
    assert fits["platt"]["calibration_loss"] < fits["bias"]["calibration_loss"]
    items = [(r["prompt"], r["completions"][:1]) for r in rows]
    scored = {how: [s for [s] in PRMScorer(tmp_path / how).score_batch(items)] for how in fits}
    b, p = scored["bias"], scored["platt"]  # a monotone map of the same likelihood (ties: saturated scores)
    assert all(p[i] <= p[j] for i in range(len(b)) for j in range(len(b)) if b[i] < b[j])
    wrong = range(1, len(items), 2)
    assert sum(scored["platt"][i] for i in wrong) < sum(scored["bias"][i] for i in wrong)
    with pytest.raises(ValueError, match="without fine-tuning"):
        PRMTrainSpec(calibrate="platt", epochs=1.0)


class _Constant:
    """A scorer that calls every step right."""

    def score_batch(self, items, batch_size=64):
        return [[1.0] * len(steps) for _, steps in items]


def test_a_prm_that_misses_an_error_is_wrong_on_that_solution():
    """ProcessBench's accuracy on erroneous solutions counts a solution whose error the PRM
    missed altogether as a miss. The PRM's labels used to be cut to the oracle's region (up
    to the first error), which left such a solution with no decided first error: dropped."""
    from qstar_dagster.generation.base import Completion
    from qstar_dagster.search.tree import Tree
    from qstar_dagster.tasks.steps import LINE
    from qstar_dagster.training.prm import evaluate_prm

    [problem] = generate_problems(1, seed=3)  # 17 * 3 - 40 - 42 * 2 = -62
    tree = Tree("t", problem, problem.problem + "\n", LINE, 6)
    for steps in (problem.reference_solution.split("\n"),
                  ["17 * 3 = 52", "52 - 40 = 12", "12 - 42 = -30", "-30 * 2 = -60", "The answer is -60"]):
        node = tree.root
        for i, text in enumerate(steps):
            node = next((tree.nodes[c] for c in node.children if tree.nodes[c].text == text), None) or tree.add_child(
                node, Completion(text, 3, -1.0, "stop", stop_string=None if i == len(steps) - 1 else "\n"))
    assert sorted(n.is_correct for n in tree.terminals()) == [False, True]
    m = evaluate_prm(_Constant(), [tree])
    assert m["n_solutions"] == 2
    assert (m["first_error_accuracy_erroneous"], m["first_error_accuracy_correct"], m["first_error_f1"]) == (0.0, 1.0, 0.0)
