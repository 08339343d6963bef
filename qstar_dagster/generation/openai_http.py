"""OpenAI-compatible HTTP backend (any server speaking /v1/completions or /v1/chat/completions:
vLLM's, `qstar serve`, hosted APIs), over one server or several.

The `openai` client does the timeouts and the retries with exponential backoff on
connection errors, 429 and 5xx; this class adds the concurrency limit, spreads prompts over
several servers in turn, and moves a prompt to the next server when one stops answering
(a dead server is skipped for `cooldown_s`, then tried again), and maps answers to
`Completion`s. Each prompt is its own request with the call's seed, so which server answers
it does not change what it gets from servers of the same weights. `check_model` asks every
server which model it serves (and, from `qstar serve`, its weights' hash) before a stage
trusts it. The API key is read from an environment variable when the client is made and is
never logged, stored or put in config.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from qstar_dagster.generation.base import Completion, SamplingParams

log = logging.getLogger(__name__)


class OpenAICompatibleGenerator:
    name = "openai"

    def __init__(self, base_url: str | Sequence[str], model: str, *,
                 mode: Literal["completions", "chat"] = "completions", api_key_env: str = "OPENAI_API_KEY",
                 max_concurrency: int = 8, timeout_s: float = 120.0, max_retries: int = 5, cooldown_s: float = 30.0):
        import openai

        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("give at least one base URL")
        self.model, self.mode, self.max_concurrency, self.cooldown_s = model, mode, max_concurrency, cooldown_s
        # With several servers a failing one is left at once for the next; alone, the client retries it.
        key = os.environ.get(api_key_env) or "no-key"
        self._clients = [openai.OpenAI(base_url=u, api_key=key, timeout=timeout_s,
                                       max_retries=max_retries if len(urls) == 1 else 1) for u in urls]
        self._down_until = [0.0] * len(urls)
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self.requests = [0] * len(urls)  # answered per server
        self.failovers = 0  # prompts moved off a server that did not answer

    @property
    def base_urls(self) -> list[str]:
        return [str(c.base_url) for c in self._clients]

    def __repr__(self) -> str:  # never the key
        return f"OpenAICompatibleGenerator(base_urls={self.base_urls!r}, model={self.model!r})"

    def check_model(self, sha256: str | None = None) -> None:
        """Every server serves `self.model` (and, where it says its weights' hash, `sha256`);
        a server that does not answer is skipped until it does."""
        import openai

        for i, client in enumerate(self._clients):
            try:
                cards = list(client.models.list())
            except openai.NotFoundError:
                raise ValueError(f"policy server {client.base_url} has no /models: give the API's root, which for "
                                 "vLLM and qstar serve ends in /v1") from None
            except openai.APIConnectionError:
                log.warning("policy server %s does not answer; skipped for now", client.base_url)
                self._down_until[i] = time.monotonic() + self.cooldown_s
                continue
            card = next((c for c in cards if c.id == self.model), None)
            if card is None:
                raise ValueError(f"policy server {client.base_url} serves {[c.id for c in cards]}, not {self.model!r}; "
                                 f"start it with --name {self.model} (vLLM: --served-model-name {self.model})")
            served = (card.model_extra or {}).get("sha256")
            if sha256 and served and served != sha256:
                raise ValueError(f"policy server {client.base_url} serves other weights under the name {self.model!r} "
                                 f"(sha256 {served[:12]}..., the checkpoint's is {sha256[:12]}...)")
        if all(t > time.monotonic() for t in self._down_until):
            raise ConnectionError(f"no policy server answers: {', '.join(self.base_urls)}")

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        with ThreadPoolExecutor(self.max_concurrency) as pool:
            return list(pool.map(lambda p: self._one(p, params), prompts))

    def _order(self) -> list[int]:
        """The servers to try, starting from the next in turn, the ones up first."""
        start = next(self._turn) % len(self._clients)
        turn = [(start + k) % len(self._clients) for k in range(len(self._clients))]
        now = time.monotonic()
        return [i for i in turn if self._down_until[i] <= now] + [i for i in turn if self._down_until[i] > now]

    def _one(self, prompt: str, params: SamplingParams) -> list[Completion]:
        import openai

        failed: Exception | None = None
        for i in self._order():
            try:
                out = self._ask(self._clients[i], prompt, params)
            except (openai.APIConnectionError, openai.InternalServerError) as e:  # the server's trouble, not ours
                if len(self._clients) == 1:
                    raise
                with self._lock:
                    self._down_until[i] = time.monotonic() + self.cooldown_s
                    self.failovers += 1
                log.warning("policy server %s failed (%s); trying the next", self._clients[i].base_url,
                            type(e).__name__)
                failed = e
                continue
            with self._lock:
                self.requests[i] += 1
            return out
        raise ConnectionError(f"no policy server answered ({', '.join(self.base_urls)})") from failed

    def _ask(self, client, prompt: str, params: SamplingParams) -> list[Completion]:
        common = {"model": self.model, "n": params.n, "temperature": params.temperature, "top_p": params.top_p,
                  "seed": params.seed, "stop": list(params.stop) or None}
        if self.mode == "chat":
            resp = client.chat.completions.create(
                messages=[{"role": "user", "content": prompt}], max_tokens=params.max_new_tokens,
                logprobs=True, **common)
            texts = [(c.message.content or "", c.finish_reason,
                      [t.logprob for t in c.logprobs.content] if c.logprobs and c.logprobs.content else None)
                     for c in resp.choices]
        else:
            resp = client.completions.create(prompt=prompt, max_tokens=params.max_new_tokens, logprobs=1, **common)
            texts = [(c.text, c.finish_reason,
                      list(c.logprobs.token_logprobs) if c.logprobs and c.logprobs.token_logprobs else None)
                     for c in resp.choices]
        # vLLM and qstar serve say which stop string ended a choice (`stop_reason`; null: end-of-sequence)
        reasons = [(c.model_extra or {}).get("stop_reason", ...) for c in resp.choices]
        usage = resp.usage.completion_tokens if resp.usage else 0
        out = []
        for (text, finish, lps), reason in zip(texts, reasons):
            n_tokens = len(lps) if lps is not None else round(usage / max(1, len(texts)))
            out.append(Completion(
                text=text, n_tokens=n_tokens, logprob=float(sum(lps)) if lps is not None else math.nan,
                finish_reason="length" if finish == "length" else "stop",
                token_logprobs=lps if params.logprobs else None,
                # Without a stop_reason the API does not say whether a stop string or end-of-sequence
                # ended it; a step boundary is assumed (an ended solution then yields an empty next step).
                stop_string=(reason if isinstance(reason, str) else None) if reason is not ... else
                params.stop[0] if finish == "stop" and params.stop else None,
            ))
        return out
