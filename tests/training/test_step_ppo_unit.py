"""Step-level PPO's credit assignment on hand-built rewards, each value worked out by hand."""

import pytest
import torch

from qstar_dagster.training.charlm import char_tokenizer
from qstar_dagster.training.step_ppo import (
    Sample,
    StepPPOSpec,
    _credit_mask,
    _forward,
    _pad,
    _update,
    credited_steps,
    depth_baseline_advantages,
    encode_sample,
    encode_sampled,
    gae,
    gae_advantages,
    group_advantages,
    kl_terms,
    shape,
    step_advantages,
)


def approx(xs):
    return pytest.approx(xs, abs=1e-4)  # the normalisations' eps


def test_gae_with_lambda_one_is_the_return_minus_the_value():
    # rewards 0, 0, 1 and values 0.2, 0.5, 0.9: returns 1, 1, 1
    assert gae([0, 0, 1], [0.2, 0.5, 0.9], gamma=1.0, lam=1.0) == approx([0.8, 0.5, 0.1])


def test_gae_with_lambda_zero_is_the_one_step_td_error():
    # delta_t = r_t + V_{t+1} - V_t, and V after the end is 0
    assert gae([0, 0, 1], [0.2, 0.5, 0.9], gamma=1.0, lam=0.0) == approx([0.3, 0.4, 0.1])


def test_step_credit_never_reaches_past_a_steps_end():
    # two steps of two tokens; step 0 right (reward 0), step 1 wrong (reward -0.5); values 0.
    # Each step's tokens see their own step's reward only.
    token_step = [0, 0, 1, 1]
    assert step_advantages(token_step, [0.0, -0.5], [0, 0, 0, 0]) == approx([0, 0, -0.5, -0.5])
    # the same under gae: the right first step is blamed for the wrong second one
    assert gae_advantages(token_step, [0.0, -0.5], [0, 0, 0, 0], lam=1.0) == approx([-0.5, -0.5, -0.5, -0.5])


def test_step_credit_keeps_a_wrong_step_punished_when_the_answer_comes_out_right():
    # step 0 wrong (-0.5), step 1 right and the answer right (outcome +1 on the last step)
    token_step = [0, 1]
    assert step_advantages(token_step, [-0.5, 1.0], [0, 0]) == approx([-0.5, 1.0])
    assert gae_advantages(token_step, [-0.5, 1.0], [0, 0], lam=1.0) == approx([0.5, 1.0])


def test_step_credit_subtracts_the_value_within_the_step():
    # one step of three tokens, reward 1 at its end, values 0.5, 0.6, 0.7: the return is 1 at
    # every token, so the advantages are 1 - V: 0.5, 0.4, 0.3
    assert step_advantages([0, 0, 0], [1.0], [0.5, 0.6, 0.7]) == approx([0.5, 0.4, 0.3])


def test_the_tokens_that_choose_a_step_get_its_whole_reward():
    # `8 - 4 = 4 (left: 4 7 8)`: the choice is the first tokens, the rest follows from it.
    # A dead end (-0.5) must reach the choice undecayed, however long the step and whatever
    # the spec's lambda (which GAE credit uses across steps); with values 0 every token of
    # the step gets -0.5. (Decayed by 0.95 per token from the step's end, the first token of
    # this 24-token step got -0.15, and after whitening a dead end's choice was barely
    # punished while its forced arithmetic was: on Countdown exact oracle rewards lowered
    # the training problems' success.)
    step = "8 - 4 = 4 (left: 4 7 8)\n"
    token_step = [0] * len(step)
    assert step_advantages(token_step, [-0.5], [0.0] * len(step)) == approx([-0.5] * len(step))


def test_step_credit_with_a_group_baseline_compares_steps_at_the_same_depth():
    # three samples of one problem. A: steps right, right, and right at the end (0, 0, 0 + 1);
    # B: a dead end first (-0.5), then -0.5; C: right, then a dead end (0, -0.5).
    # Depth means: first (0 - 0.5 + 0) / 3 = -1/6; second (0 - 0.5 - 0.5) / 3 = -1/3; third 1 (A alone).
    group = [[0.0, 0.0, 1.0], [-0.5, -0.5], [0.0, -0.5]]
    a, b, c = depth_baseline_advantages(group)
    assert a == approx([1 / 6, 1 / 3, 0.0])
    assert b == approx([-1 / 3, -1 / 6])
    # C's right first step is not blamed for its dead end: it is credited as A's is
    assert c == approx([1 / 6, -1 / 6])


def test_group_credit_normalises_over_the_group_and_sums_what_follows():
    # two samples of one problem: A has steps (0, 0) and is right, B has steps (0, -1) and is wrong.
    # Step rewards 0, 0, 0, -1: mean -0.25, std sqrt(3)/4 = 0.4330; normalised 0 -> 0.5774, -1 -> -1.7321.
    # Outcomes 1, 0: mean 0.5, std 0.5 -> +1, -1.
    [a, b] = group_advantages([([0.0, 0.0], 1.0), ([0.0, -1.0], 0.0)])
    n0, n1 = 0.25 / (3 ** 0.5 / 4), -0.75 / (3 ** 0.5 / 4)
    assert a == approx([2 * n0 + 1, n0 + 1])
    assert b == approx([n0 + n1 - 1, n1 - 1])


def test_group_credit_on_outcomes_alone_is_grpo():
    # no step rewards: every step of a sample gets its normalised outcome (right +1, wrong -1)
    advantages = group_advantages([([0.0, 0.0], 1.0), ([0.0], 0.0), ([0.0, 0.0, 0.0], 1.0), ([0.0], 0.0)])
    assert advantages == [approx([1, 1]), approx([-1]), approx([1, 1, 1]), approx([-1])]


def test_a_group_of_equal_samples_teaches_nothing():
    assert group_advantages([([0.5], 1.0), ([0.5], 1.0)]) == [approx([0.0]), approx([0.0])]


def test_shaping():
    scores = [0.9, 0.2, 0.6]
    assert shape(scores, "none") == approx(scores)
    assert shape(scores, "clip") == approx([0.0, -0.3, 0.0])  # nothing to gain from more steps
    assert shape(scores, "delta") == approx([0.7, -0.4, 0.6])  # the return from step k is score_k
    assert sum(shape(scores, "delta")) == pytest.approx(scores[0])
    assert shape(scores, "progress") == approx([0.9, -0.7, 0.4])  # what each step changed
    assert sum(shape(scores, "progress")) == pytest.approx(scores[-1])


def test_progress_blames_the_choice_that_lost_the_solution():
    """Two samples of one problem (outcome left out): one keeps the target in reach, the other's
    first step is a dead end and its next two steps, right or not, are in a lost state. With
    progress shaping and the group baseline, the dead-end choice takes the most blame; with
    clip, the lost state's later steps take more than the choice that lost it."""
    kept, lost = [0.8, 0.9, 0.95], [0.1, 0.0, 0.0]

    def advantages(shaping):
        return depth_baseline_advantages([shape(kept, shaping), shape(lost, shaping)])

    good, bad = advantages("progress")
    assert bad == approx([-0.35, -0.1, -0.025])
    assert good == approx([0.35, 0.1, 0.025])
    assert min(bad) == bad[0]
    _, bad_clip = advantages("clip")
    assert bad_clip == approx([-0.2, -0.25, -0.25])
    assert min(bad_clip) < bad_clip[0]


def test_each_token_belongs_to_one_step():
    tok = char_tokenizer()
    ids, n_prompt, token_step, steps = encode_sample(tok, "Q\n", "1 + 2 = 3\n\nThe answer is 3", "\n", finished=True)
    assert steps == ["1 + 2 = 3", "The answer is 3"]
    completion = ids[n_prompt:]
    assert len(completion) == len(token_step) == len("1 + 2 = 3\n\nThe answer is 3") + 1  # + end of sequence
    assert token_step == [0] * len("1 + 2 = 3\n\n") + [1] * (len("The answer is 3") + 1)
    assert completion[-1] == tok.eos_token_id
    # a solution cut by the token budget has no end of sequence
    _, _, cut_steps, _ = encode_sample(tok, "Q\n", "1 + 2 = 3\nThe ans", "\n", finished=False)
    assert cut_steps == [0] * len("1 + 2 = 3\n") + [1] * len("The ans")


def test_the_sampled_tokens_are_kept_even_where_the_text_loses_one():
    tok = char_tokenizer()
    text = "1 + 2 = 3\nThe answer is 3"
    drawn = (tok(text[:10], add_special_tokens=False)["input_ids"] + [tok.pad_token_id]  # a special token drawn mid-way
             + tok(text[10:], add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    ids, n_prompt, token_step, steps = encode_sampled(tok, "Q\n", text, drawn, "\n")
    assert ids[n_prompt:] == drawn  # re-encoding the text would have lost the special token
    assert steps == ["1 + 2 = 3", "The answer is 3"]
    # the separator ends step 0; the textless special token goes with the step it stands in
    assert token_step == [0] * 10 + [1] + [1] * len("The answer is 3") + [1]
    # where the text re-encodes to the same tokens, both ways give the same steps
    plain = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert encode_sampled(tok, "Q\n", text, plain, "\n") == encode_sample(tok, "Q\n", text, "\n", finished=True)
    # tokens that do not decode to the text (a backend cut it at a stop string): re-encode instead
    assert encode_sampled(tok, "Q\n", text[:5], plain, "\n") is None


def test_a_wrong_solution_is_credited_up_to_its_first_wrong_step():
    # 53 - 47 = 8 (wrong), 8 * 3 = 24 (right arithmetic, doomed prefix), The answer is 24
    assert credited_steps([0.9, 0.1, 0.05, 0.0], correct=False) == 2
    assert credited_steps([0.2, 0.9], correct=False) == 1
    # no step scored wrong (an outcome-only reward has no scores): every step credited
    assert credited_steps([0.9, 0.8], correct=False) is None
    assert credited_steps([], correct=False) is None
    # a right solution: every step led to the right answer, a low score is the scorer's miss
    assert credited_steps([0.9, 0.1, 0.9], correct=True) is None


def test_the_credit_mask_drops_the_steps_after_the_first_error_only():
    tok = char_tokenizer()
    ids, n_prompt, token_step, steps = encode_sample(tok, "Q\n", "1 + 2 = 4\n4 + 1 = 5\nThe answer is 5", "\n",
                                                     finished=True)
    wrong = Sample(None, 0, "", steps, ids, n_prompt, token_step, credited_steps=1)
    right = Sample(None, 0, "", steps, ids, n_prompt, token_step, credited_steps=None)
    _, _, action = _pad([wrong, right], pad_id=0)
    credit = _credit_mask([wrong, right], action)
    first = len("1 + 2 = 4\n")
    a = n_prompt - 1  # the logit that predicts the first completion token
    assert credit[0, a: a + first].tolist() == [1.0] * first  # the wrong step itself stays punished
    assert credit[0, a + first:].sum() == 0  # what follows from it is left alone
    assert torch.equal(credit[1], action[1])  # a right solution: every token
    assert action[0, a + first:].sum() == len(token_step) - first  # the KL penalty still sees them


def test_bad_config_says_what_is_allowed():
    with pytest.raises(ValueError, match="credit must be one of step, gae, group"):
        StepPPOSpec(credit="token")
    with pytest.raises(ValueError, match="group_size >= 2"):
        StepPPOSpec(credit="group", group_size=1)
    with pytest.raises(ValueError, match="after_error must be one of mask, keep"):
        StepPPOSpec(after_error="drop")
    with pytest.raises(ValueError, match="kl_estimator must be one of k3, k2"):
        StepPPOSpec(kl_estimator="k1")


def test_the_kl_penalties_and_their_gradients():
    # tokens where the policy's log-prob is 1 above the reference's, equal, and 3 below
    ref = torch.tensor([-2.0, -1.0, -1.0])
    for estimator, penalty_by_hand, gradient_by_hand in (
        # k3 = r - log r - 1, r = ref/policy: e^-1, 0, e^3 - 4; d/dlogp = 1 - r
        ("k3", [0.367879, 0.0, 16.085537], [0.632121, 0.0, -19.085537]),
        # k2 = (log r)^2 / 2: 0.5, 0, 4.5; d/dlogp = log p - log ref, growing only linearly
        ("k2", [0.5, 0.0, 4.5], [1.0, 0.0, -3.0]),
    ):
        logp = torch.tensor([-1.0, -1.0, -4.0], requires_grad=True)
        penalty, estimate = kl_terms(logp, ref, estimator)
        penalty.sum().backward()
        assert penalty.tolist() == pytest.approx(penalty_by_hand, abs=1e-5)
        assert logp.grad.tolist() == pytest.approx(gradient_by_hand, abs=1e-5)
        assert estimate.tolist() == pytest.approx([0.367879, 0.0, 16.085537], abs=1e-5)  # k3 is what is logged


def test_the_supervised_term_imitates_the_right_samples_only():
    """sft_coef adds the right samples' negative log-likelihood to the update. Each group here
    has equal samples, so the policy gradient is zero (GRPO's advantages all 0) and with no KL
    penalty the update moves nothing; the supervised term then raises the likelihood of the
    right solution, and a batch with no right sample still moves nothing."""
    import copy

    from qstar_dagster.training.charlm import tiny_llama

    tok = char_tokenizer()

    def sample(text, group, correct):
        ids, n_prompt, token_step, steps = encode_sample(tok, "Q: 1 + 2\n", text, "\n", finished=True)
        return Sample(problem=None, group=group, text=text, steps=steps, ids=ids, n_prompt=n_prompt,
                      token_step=token_step, correct=correct, step_rewards=[0.0] * len(steps),
                      rewards=[0.0] * len(steps))

    right, wrong = "1 + 2 = 3\nThe answer is 3", "1 + 2 = 4\nThe answer is 4"
    batch = [sample(right, 0, True), sample(right, 0, True), sample(wrong, 1, False), sample(wrong, 1, False)]

    def logp_after(samples, sft_coef):
        model = tiny_llama(tok, hidden=32, layers=1, heads=2, seed=3)
        spec = StepPPOSpec(reward="none", credit="group", kl_coef=0.0, sft_coef=sft_coef, lr=1e-2, ppo_epochs=2,
                           minibatch_size=4)
        opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
        _update(model, copy.deepcopy(model), None, opt, samples, spec, tok.pad_token_id)
        ids, mask, action = _pad(batch, tok.pad_token_id)
        with torch.no_grad():
            logp, _, _ = _forward(model, None, ids, mask, 1.0)
        return (logp * action).sum(-1).tolist()  # each sample's log-likelihood

    before = logp_after([], 0.0)  # the untrained policy (an empty batch is not trained on)
    assert logp_after(batch, 0.0) == pytest.approx(before, abs=1e-6)  # zero advantages, no KL: no change
    assert logp_after(batch[2:], 1.0) == pytest.approx(before, abs=1e-6)  # no right sample: nothing to imitate
    after = logp_after(batch, 1.0)
    assert after[0] > before[0] + 1.0  # the right solution became likelier
    # the wrong one shares all but two characters with it: it gains less than the right one
    assert after[2] - before[2] < after[0] - before[0]
