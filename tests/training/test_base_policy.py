from dataclasses import asdict, replace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from qstar_dagster.evaluation.evaluate import evaluate_policy
from qstar_dagster.generation.base import Completion, SamplingParams
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.spec import id_settings
from qstar_dagster.tasks.problem import policy_prompt
from qstar_dagster.tasks.prompt_sets import builtin_problems
from qstar_dagster.training.base_policy import (
    BasePolicyConfig,
    practice_examples,
    train_base_policy,
)
from qstar_dagster.training.charlm import char_tokenizer
from qstar_dagster.training.sft import FitSpec, encode_pieces, lm_batches

TINY = BasePolicyConfig(hidden=32, layers=1, heads=2, steps=60, batch_size=16, lr=1e-2, warmup=5, eval_every=20)


@pytest.fixture
def one_thread():
    """Bit-stable sums; restored after, since torch's thread count is process-wide."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_training_lowers_loss_and_saves_a_standard_checkpoint(tmp_path, one_thread):
    train = builtin_problems("arith-train", n=300)
    calls = []
    summary = train_base_policy(train, tmp_path / "ck", TINY, on_eval=lambda m, t: calls.append(m.training) or 0.5)
    losses = [loss for _, loss in summary["loss_curve"]]
    assert len(losses) == TINY.steps
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert summary["accuracy_curve"] == [(20, 0.5), (40, 0.5), (60, 0.5)]
    assert calls == [False] * 3  # evaluated in eval mode, training resumed after
    assert summary["n_train_examples"] == 300 and summary["n_parameters"] > 0

    # Any transformers user (and so vLLM and `qstar serve`) can load it the standard way.
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ck")
    tok = AutoTokenizer.from_pretrained(tmp_path / "ck")
    assert tok.decode(tok(train[0].problem)["input_ids"]) == train[0].problem
    [[c]] = TransformersGenerator(model, tok).generate([policy_prompt(train[0].problem)],
                                                       SamplingParams(n=1, temperature=0, max_new_tokens=20))
    assert c.n_tokens > 0


def test_same_seed_same_weights(tmp_path, one_thread):
    train = builtin_problems("arith-train", n=100)
    cfg = BasePolicyConfig(hidden=32, layers=1, heads=2, steps=5, batch_size=8, warmup=2, eval_every=0)
    a = train_base_policy(train, tmp_path / "a", cfg)
    b = train_base_policy(train, tmp_path / "b", cfg)
    assert a["loss_curve"] == b["loss_curve"]


def test_references_learns_from_the_first_n_problems_only(tmp_path, one_thread):
    train = builtin_problems("arith-train", n=100)
    cfg = BasePolicyConfig(hidden=32, layers=1, heads=2, steps=3, batch_size=8, warmup=1, eval_every=0, references=30)
    assert train_base_policy(train, tmp_path / "ck", cfg)["n_train_examples"] == 30
    # it names the checkpoint; left at 0 it is out of the name, so earlier checkpoints keep theirs
    assert id_settings(cfg)["references"] == 30
    assert id_settings(replace(cfg, references=0)) == {k: v for k, v in asdict(cfg).items() if k != "references"}
    with pytest.raises(ValueError, match=r"references=101, but the training prompt set has 100 problems; give 0"):
        train_base_policy(train, tmp_path / "x", replace(cfg, references=101))


def test_training_on_nothing_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="training prompt set is empty"):
        train_base_policy([], tmp_path, TINY)


class ScriptedPolicy:
    """A policy whose outputs are written out per prompt: greedy gets the first, samples the rest."""

    def __init__(self, script):
        self.script = script

    def generate(self, prompts, params):
        def done(text):
            return Completion(text=text, n_tokens=len(text), logprob=0.0, finish_reason="stop")

        if params.temperature == 0:
            return [[done(self.script[p][0])] for p in prompts]
        return [[done(t) for t in self.script[p][1:1 + params.n]] for p in prompts]


def test_greedy_pass_and_majority_are_counted_per_problem():
    problems = builtin_problems("arith-test", n=4)
    right = [p.reference_solution for p in problems]
    wrong = [f"The answer is {int(p.reference_answer) + 1}" for p in problems]
    other = [f"The answer is {int(p.reference_answer) + 2}" for p in problems]
    script = {
        # greedy right; all 8 samples right: counts for greedy, pass@8 and majority@8
        policy_prompt(problems[0].problem): [right[0]] + [right[0]] * 8,
        # greedy wrong; one sample right, the 7 others agree on a wrong answer: pass@8 only
        policy_prompt(problems[1].problem): [wrong[1]] + [right[1]] + [wrong[1]] * 7,
        # greedy wrong; right answer is the plurality (3) over two wrong ones (3 + 2): pass and majority
        policy_prompt(problems[2].problem): [wrong[2]] + [right[2]] * 3 + [wrong[2]] * 2 + [other[2]] * 2 + ["no"],
        # nothing right
        policy_prompt(problems[3].problem): [wrong[3]] + [wrong[3]] * 8,
    }
    metrics = evaluate_policy(ScriptedPolicy(script), problems, k=8)
    assert metrics == {"greedy": 0.25, "pass_at_8": 0.75, "majority_at_8": 0.5, "n": 4}


def test_a_practice_walk_trains_what_follows_a_choice_not_the_choice():
    tok = char_tokenizer()
    prompt, pieces = "Make 24 from: 4 6\n", [("4 * 6", False), (" = 24 (left: 24)", True)]
    ids, n_prompt, trained = encode_pieces(tok, prompt, pieces)
    assert tok.decode(ids) == prompt + "4 * 6 = 24 (left: 24)</s>"
    _, labels = next(lm_batches([(ids, n_prompt, trained)], FitSpec(steps=1, batch_size=1), tok.pad_token_id))
    taught = "".join(tok.convert_ids_to_tokens([t for t in labels[0].tolist() if t != -100]))
    assert taught == " = 24 (left: 24)</s>"  # neither the prompt nor the choice


def test_practice_walks_are_added_for_domains_that_have_them(tmp_path, one_thread):
    countdown_train, arith_train = builtin_problems("countdown-train", n=40), builtin_problems("arith-train", n=40)
    tok = char_tokenizer()
    assert len(practice_examples(tok, countdown_train, 1.5, seed=0)) in range(40 + 10, 40 + 31)
    assert practice_examples(tok, arith_train, 1.5, seed=0) == []
    cfg = BasePolicyConfig(hidden=32, layers=1, heads=2, steps=3, batch_size=8, warmup=1, eval_every=0, practice=1.0)
    assert train_base_policy(countdown_train, tmp_path / "ck", cfg)["n_train_examples"] == 80
