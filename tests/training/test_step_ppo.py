"""Step-level PPO on a real (small) policy: it learns its own training problems, a killed
training resumes to the same weights, and the checkpoint is a standard causal LM."""

import pytest
import torch
from safetensors.torch import load_file

from qstar_dagster.generation.base import SamplingParams
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.tasks.arith import generate_problems
from qstar_dagster.tasks.problem import policy_prompt
from qstar_dagster.training.step_ppo import STATE, StepPPOSpec, encode_sample, train_step_ppo

from ..conftest import EASY_ARITH


@pytest.mark.parametrize("reward, credit", [("none", "group"), ("oracle", "step")])
def test_it_fits_its_own_training_problems(arith_policy_dir, tmp_path, reward, credit):
    """On 8 problems, sampled 16 times each at temperature 1, the share of right samples on
    exactly those problems rises (72% -> 91% here). With the advantages' sign flipped, or the
    credit landing on the wrong tokens, it falls or stays."""
    problems = generate_problems(8, seed=31, spec=EASY_ARITH)
    spec = StepPPOSpec(iterations=16, problems_per_iteration=8, group_size=16, reward=reward, credit=credit,
                       lr=3e-4, temperature=1.0, max_new_tokens=32, eval_every=0)
    summary = train_step_ppo(arith_policy_dir, problems, tmp_path / "out", spec)
    right = [acc for _, acc in summary["curves"]["sample_accuracy"]]
    assert sum(right[-3:]) / 3 >= sum(right[:2]) / 2 + 0.1, right
    assert summary["final_kl"] > 0


def test_the_trained_tokens_are_the_sampled_ones():
    """The log-probabilities step_ppo trains must be those of the tokens the generator drew
    (else it learns on sequences the policy never wrote), the end of sequence included, and
    each token must sit in the step its text is in. The shipped policy at temperature 1, on
    problems of its own domain."""
    from qstar_dagster.training.shipped import SHIPPED_ROOT
    from qstar_dagster.training.step_ppo import _forward, _pad, make_samples

    gen = TransformersGenerator(SHIPPED_ROOT / "arith")
    tok = gen.tokenizer
    problems = generate_problems(8, seed=33)
    prompts = [policy_prompt(p.problem) for p in problems]
    out = gen.generate(
        prompts, SamplingParams(n=4, temperature=1.0, max_new_tokens=96, logprobs=True))
    samples = make_samples(tok, problems, prompts, out)
    completions = [c for cs in out for c in cs if c.token_ids]  # make_samples leaves out empty ones
    assert [s.ids[s.n_prompt:] for s in samples] == [c.token_ids for c in completions]
    finished = 0
    for s, c in zip(samples, completions):
        _, _, token_step, steps = encode_sample(tok, prompts[s.group], c.text, "\n", c.finish_reason == "stop")
        assert s.steps == steps
        if len(token_step) == len(s.token_step):  # the text re-encodes to the drawn tokens: the same steps
            assert s.token_step == token_step
        finished += c.finish_reason == "stop"
    assert finished  # the end-of-sequence case was checked
    # and the trainer's log-probability of each trained token is the one the sampler drew it
    # with (the generator reports them at temperature 1): so PPO's ratio starts at 1, and a
    # logged KL in the thousands is the policy's drift, not a token read at the wrong place
    ids, mask, action = _pad(samples, tok.pad_token_id)
    with torch.no_grad():
        logp, _, _ = _forward(gen.model, None, ids, mask, 1.0)
    for r, c in enumerate(completions):
        assert logp[r][action[r].bool()].tolist() == pytest.approx(c.token_logprobs, abs=1e-4)


def test_exact_step_rewards_teach_a_choice(tmp_path):
    """On Countdown, where a step is a choice (which two numbers, which operation) and most
    wrong steps are dead ends rather than slips, the oracle's step rewards with step credit
    raise the share of right samples on the problems trained on. The shipped policy, 8
    problems sampled 8 times each: 22% over the first 2 iterations, 38% over the last 3
    here; the same run at lr 0 gives 18% and 19%, so the bar of +10 points is the learning."""
    from qstar_dagster.tasks.prompt_sets import builtin_problems
    from qstar_dagster.training.shipped import SHIPPED_ROOT

    problems = builtin_problems("countdown-train")[:8]
    spec = StepPPOSpec(iterations=10, problems_per_iteration=8, group_size=8, reward="oracle", credit="step",
                       baseline="group", lr=2e-4, temperature=1.0, max_new_tokens=64, eval_every=0)
    summary = train_step_ppo(SHIPPED_ROOT / "countdown", problems, tmp_path / "out", spec)
    right = [acc for _, acc in summary["curves"]["sample_accuracy"]]
    assert sum(right[-3:]) / 3 >= sum(right[:2]) / 2 + 0.1, right


@pytest.mark.parametrize("credit", ["step", "gae"])
def test_a_killed_training_resumes_to_the_same_weights(arith_policy_dir, tmp_path, credit, caplog):
    problems = generate_problems(16, seed=32, spec=EASY_ARITH)
    spec = StepPPOSpec(iterations=3, problems_per_iteration=4, group_size=2, reward="oracle", credit=credit,
                       lr=1e-4, max_new_tokens=32, eval_every=1)
    torch.set_num_threads(1)  # the same float sums in both runs
    whole = train_step_ppo(arith_policy_dir, problems, tmp_path / "whole", spec, evaluate=lambda m, t: 0.5)

    class Killed(Exception):
        pass

    def dies_at_2(model, tok):
        if len(calls) == 1:
            raise Killed
        calls.append(1)
        return 0.5

    calls: list = []
    progress = tmp_path / "progress"
    with pytest.raises(Killed):
        train_step_ppo(arith_policy_dir, problems, tmp_path / "resumed", spec, evaluate=dies_at_2,
                       progress_dir=progress)
    assert (progress / STATE).is_file()  # iteration 1 was saved
    resumed = train_step_ppo(arith_policy_dir, problems, tmp_path / "resumed", spec, evaluate=lambda m, t: 0.5,
                             progress_dir=progress)
    assert not progress.exists()  # done: the progress is gone
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["curves"]["reward"] == whole["curves"]["reward"]
    # another config does not pick up a stale state: it trains from the start
    calls.clear()
    with pytest.raises(Killed):
        train_step_ppo(arith_policy_dir, problems, tmp_path / "x", spec, evaluate=dies_at_2, progress_dir=progress)
    other = StepPPOSpec(**{**spec.__dict__, "iterations": 1})
    with caplog.at_level("INFO", logger="qstar_dagster"):
        train_step_ppo(arith_policy_dir, problems, tmp_path / "y", other, progress_dir=progress)
    assert "saved by another config; training from the start" in caplog.text and "resuming" not in caplog.text

    # the checkpoint is a standard causal LM that the generators load
    [[out]] = TransformersGenerator(str(tmp_path / "resumed")).generate(
        ["Compute left to right: 1 + 2\n"], SamplingParams(max_new_tokens=16, temperature=0))
    assert out.n_tokens > 0


def test_monte_carlo_rewards_are_the_policys_own_estimates(arith_policy_dir, tmp_path):
    from qstar_dagster.training.step_ppo import mc_scores

    problems = generate_problems(4, seed=33, spec=EASY_ARITH)
    seen = {}

    def score(samples, gen):
        out = mc_scores(4, 0.7, 32)(samples, gen)
        seen["pairs"] = [(s, sc) for s, sc in zip(samples, out)]
        return out

    spec = StepPPOSpec(iterations=1, problems_per_iteration=4, group_size=2, reward="mc", max_new_tokens=32,
                       eval_every=0)
    train_step_ppo(arith_policy_dir, problems, tmp_path / "out", spec, score=score)
    for s, sc in seen["pairs"]:
        assert len(sc) == len(s.steps) and all(0 <= v <= 1 for v in sc)
        if s.oracle and not s.oracle[0]:
            continue
        # a right solution's last prefix is the solution itself: its value is 1
        if s.correct:
            assert sc[-1] == 1.0
