"""Shared-prefix attention must give the model's own probabilities: every sampled token's
log-probability equals what a plain forward pass over prompt + completion gives."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from qstar_dagster.generation.base import SamplingParams
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.training.charlm import char_tokenizer

PROMPTS = ["Compute left to right: 3 + 4\n", "12 * 3\n1", "Compute left to right: 47 + 38 * 3 - 129\n47 + 38 = 85\n"]


def tiny(kv_heads: int, seed: int = 0):
    torch.manual_seed(seed)
    tok = char_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(config).eval(), tok


def reference_logprob(model, tok, prompt: str, token_ids: list[int]) -> float:
    ids = tok(prompt)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids + token_ids])).logits[0, len(ids) - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(token_ids)[:, None]).sum().item()


@pytest.mark.parametrize("kv_heads", [4, 2])  # plain multi-head, and grouped-query attention
def test_sampled_logprobs_match_a_plain_forward_pass(kv_heads):
    model, tok = tiny(kv_heads)
    gen = TransformersGenerator(model, tok)
    # A stop string that ends rows at different steps, so rows leave the batch mid-way.
    params = SamplingParams(n=5, temperature=1.0, max_new_tokens=12, stop=("1",), seed=4, logprobs=True)
    out = gen.generate(PROMPTS, params)
    lengths = {c.n_tokens for cs in out for c in cs}
    assert len(lengths) > 1  # some rows finished before others
    for prompt, completions in zip(PROMPTS, out):
        for c in completions:
            assert len(c.token_ids) == len(c.token_logprobs) == c.n_tokens
            assert c.logprob == pytest.approx(reference_logprob(model, tok, prompt, c.token_ids), abs=1e-4)
            assert c.logprob == pytest.approx(sum(c.token_logprobs), abs=1e-5)


def test_the_model_keeps_its_attention_implementation():
    model, tok = tiny(4)
    before = model.config._attn_implementation
    TransformersGenerator(model, tok).generate(PROMPTS[:1], SamplingParams(n=2, max_new_tokens=4))
    assert model.config._attn_implementation == before
    model.train()  # and training still works through the standard path
    ids = tok(PROMPTS[0], return_tensors="pt")["input_ids"]
    model(input_ids=ids, labels=ids).loss.backward()


def test_a_row_that_ends_on_its_first_token_leaves_a_batch_of_single_samples():
    # With n=1 the prompts' cache is never repeated per sample; a row that stops on the token
    # sampled from the prefill must still leave the batch, and the others decode on unchanged.
    model, tok = tiny(4)
    gen = TransformersGenerator(model, tok)
    first = [c.text[:1] for [c] in gen.generate(PROMPTS, SamplingParams(n=1, temperature=0, max_new_tokens=1))]
    stop = next(ch for ch in first if ch and first.count(ch) < len(first))
    out = gen.generate(PROMPTS, SamplingParams(n=1, temperature=0, max_new_tokens=8, stop=(stop,), logprobs=True))
    lengths = [c.n_tokens for [c] in out]
    assert 1 in lengths and max(lengths) > 1, lengths
    for prompt, [c] in zip(PROMPTS, out):
        assert c.logprob == pytest.approx(reference_logprob(model, tok, prompt, c.token_ids), abs=1e-4)
