"""OpenAI-compatible HTTP backend (any server speaking /v1/completions or /v1/chat/completions:
vLLM's, `qstar serve`, hosted APIs).

The `openai` client does the timeouts and the retries with exponential backoff on
connection errors, 429 and 5xx; this class adds the concurrency limit and maps answers
to `Completion`s. The API key is read from an environment variable when the client is
made and is never logged, stored or put in config.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from qstar_dagster.generation.base import Completion, SamplingParams


class OpenAICompatibleGenerator:
    name = "openai"

    def __init__(self, base_url: str, model: str, *, mode: Literal["completions", "chat"] = "completions",
                 api_key_env: str = "OPENAI_API_KEY", max_concurrency: int = 8, timeout_s: float = 120.0,
                 max_retries: int = 5):
        import openai

        self.model, self.mode, self.max_concurrency = model, mode, max_concurrency
        self._client = openai.OpenAI(
            base_url=base_url, api_key=os.environ.get(api_key_env) or "no-key", timeout=timeout_s,
            max_retries=max_retries,
        )

    def __repr__(self) -> str:  # never the key
        return f"OpenAICompatibleGenerator(base_url={str(self._client.base_url)!r}, model={self.model!r})"

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        with ThreadPoolExecutor(self.max_concurrency) as pool:
            return list(pool.map(lambda p: self._one(p, params), prompts))

    def _one(self, prompt: str, params: SamplingParams) -> list[Completion]:
        common = {"model": self.model, "n": params.n, "temperature": params.temperature, "top_p": params.top_p,
                  "seed": params.seed, "stop": list(params.stop) or None}
        if self.mode == "chat":
            resp = self._client.chat.completions.create(
                messages=[{"role": "user", "content": prompt}], max_tokens=params.max_new_tokens,
                logprobs=True, **common)
            texts = [(c.message.content or "", c.finish_reason,
                      [t.logprob for t in c.logprobs.content] if c.logprobs and c.logprobs.content else None)
                     for c in resp.choices]
        else:
            resp = self._client.completions.create(prompt=prompt, max_tokens=params.max_new_tokens, logprobs=1,
                                                   **common)
            texts = [(c.text, c.finish_reason,
                      list(c.logprobs.token_logprobs) if c.logprobs and c.logprobs.token_logprobs else None)
                     for c in resp.choices]
        usage = resp.usage.completion_tokens if resp.usage else 0
        out = []
        for text, finish, lps in texts:
            n_tokens = len(lps) if lps is not None else round(usage / max(1, len(texts)))
            out.append(Completion(
                text=text, n_tokens=n_tokens, logprob=float(sum(lps)) if lps is not None else math.nan,
                finish_reason="length" if finish == "length" else "stop",
                token_logprobs=lps if params.logprobs else None,
                # The API does not say whether a stop string or end-of-sequence ended it; a step
                # boundary is assumed (an ended solution then yields an empty next step).
                stop_string=params.stop[0] if finish == "stop" and params.stop else None,
            ))
        return out
