"""vLLM backend (extra `gpu`): the fast path on a GPU.

vLLM is imported when a `VLLMGenerator` is made, never at module import, so CPU machines
and CI load the factory without it. Prefix caching is on: a search step sends many
continuations of the same problem, and their shared prefix is computed once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from qstar_dagster.generation.base import Completion, SamplingParams

log = logging.getLogger(__name__)


def vllm_sampling_kwargs(params: SamplingParams, prompt_index: int) -> dict[str, Any]:
    """Our sampling parameters as vLLM's, for the prompt at `prompt_index` of a call.

    Each prompt gets its own seed derived from the call's, so same seed and same inputs give
    the same outputs without every prompt drawing the same random numbers."""
    greedy = params.temperature == 0
    return {
        "n": params.n,
        "temperature": 0.0 if greedy else params.temperature,
        "top_p": 1.0 if greedy else params.top_p,
        "max_tokens": params.max_new_tokens,
        "stop": list(params.stop),
        "seed": params.seed * 1_000_003 + prompt_index,
        "logprobs": 0,  # 0: only the sampled token's log-probability, which the sums need
    }


def completion_from_vllm(output: Any, want_token_logprobs: bool) -> Completion:
    """A vLLM `CompletionOutput` as our `Completion`."""
    token_lps = None
    if output.logprobs is not None:
        token_lps = [step[t].logprob for t, step in zip(output.token_ids, output.logprobs)]
    logprob = output.cumulative_logprob if output.cumulative_logprob is not None else sum(token_lps or [])
    return Completion(
        text=output.text,
        n_tokens=len(output.token_ids),
        logprob=float(logprob),
        finish_reason="length" if output.finish_reason == "length" else "stop",
        token_logprobs=token_lps if want_token_logprobs else None,
        token_ids=list(output.token_ids) if want_token_logprobs else None,
        stop_string=output.stop_reason if isinstance(output.stop_reason, str) else None,
    )


class VLLMGenerator:
    name = "vllm"

    def __init__(self, model: str, *, dtype: str = "auto", gpu_memory_utilization: float = 0.85,
                 max_model_len: int | None = None, seed: int = 0, **llm_kwargs: Any):
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError(
                f"the vLLM backend needs vLLM ({e}). Fix: pip install -e '.[gpu]' on a machine with a CUDA GPU, "
                "or use the transformers backend"
            ) from None
        self.model_name = model
        self.llm = LLM(model=model, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len, seed=seed, enable_prefix_caching=True, **llm_kwargs)

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VLLMSamplingParams

        if not prompts:
            return []
        sampling = [VLLMSamplingParams(**vllm_sampling_kwargs(params, i)) for i in range(len(prompts))]
        outputs = self.llm.generate(list(prompts), sampling, use_tqdm=len(prompts) > 256)
        return [[completion_from_vllm(o, params.logprobs) for o in request.outputs] for request in outputs]
