"""The vLLM backend. The conversions run everywhere; generation needs vLLM and a CUDA GPU
and is skipped without them (CI has neither)."""

import importlib.util
from types import SimpleNamespace

import pytest

from qstar_dagster.generation.base import SamplingParams
from qstar_dagster.generation.vllm_backend import (
    VLLMGenerator,
    completion_from_vllm,
    vllm_sampling_kwargs,
)


def test_sampling_parameters_map_to_vllm_with_a_seed_per_prompt():
    params = SamplingParams(n=4, temperature=0.7, top_p=0.9, max_new_tokens=32, stop=("\n",), seed=5)
    a, b = vllm_sampling_kwargs(params, 0), vllm_sampling_kwargs(params, 1)
    assert (a["n"], a["temperature"], a["top_p"], a["max_tokens"], a["stop"]) == (4, 0.7, 0.9, 32, ["\n"])
    assert a["seed"] != b["seed"] and vllm_sampling_kwargs(params, 1) == b
    greedy = vllm_sampling_kwargs(SamplingParams(temperature=0, top_p=0.5), 0)
    assert (greedy["temperature"], greedy["top_p"]) == (0.0, 1.0)


def test_vllm_outputs_become_completions():
    lp = SimpleNamespace
    out = SimpleNamespace(text="12 + 3 = 15", token_ids=[7, 8], cumulative_logprob=None, finish_reason="stop",
                          stop_reason="\n",
                          logprobs=[{7: lp(logprob=-0.5), 9: lp(logprob=-2.0)}, {8: lp(logprob=-0.25)}])
    c = completion_from_vllm(out, want_token_logprobs=True)
    assert (c.text, c.n_tokens, c.logprob, c.finish_reason, c.token_logprobs, c.token_ids) == \
        ("12 + 3 = 15", 2, -0.75, "stop", [-0.5, -0.25], [7, 8])
    assert c.stop_string == "\n"
    long = SimpleNamespace(text="1", token_ids=[1], cumulative_logprob=-1.5, finish_reason="length", logprobs=None,
                           stop_reason=None)
    c = completion_from_vllm(long, want_token_logprobs=False)
    assert (c.logprob, c.finish_reason, c.token_logprobs) == (-1.5, "length", None)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_without_vllm_the_error_names_the_extra(tiny_model_dir):
    with pytest.raises(ImportError, match=r"pip install -e '\.\[gpu\]'"):
        VLLMGenerator(str(tiny_model_dir))


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


gpu = pytest.mark.skipif(importlib.util.find_spec("vllm") is None or not _cuda(), reason="needs vLLM and a CUDA GPU")


@pytest.mark.gpu
@gpu
def test_vllm_matches_the_contract_on_the_tiny_model(tiny_model_dir):
    from qstar_dagster.generation.hf import TransformersGenerator

    gen = VLLMGenerator(str(tiny_model_dir), gpu_memory_utilization=0.3, max_model_len=256, enforce_eager=True)
    prompts = ["Compute left to right: 3 + 4\n", "Compute left to right: 9 * 2 - 5\n"]
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=24, stop=("\n",), seed=1, logprobs=True)
    first, second = gen.generate(prompts, params), gen.generate(prompts, params)
    assert first == second and [len(cs) for cs in first] == [3, 3]
    for cs in first:
        for c in cs:
            assert "\n" not in c.text and 1 <= c.n_tokens <= 24
            assert c.logprob == pytest.approx(sum(c.token_logprobs), abs=1e-3)
    # Greedy agrees with the transformers backend on the same weights.
    greedy = SamplingParams(n=1, temperature=0, max_new_tokens=16)
    hf = TransformersGenerator(str(tiny_model_dir))
    assert [c[0].text for c in gen.generate(prompts, greedy)] == [c[0].text for c in hf.generate(prompts, greedy)]
