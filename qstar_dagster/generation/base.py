"""The one way the factory generates text (DESIGN principle 3).

Search, Monte Carlo labeling, the AI judge and evaluation all call `Generator.generate`;
backends (transformers, vLLM, OpenAI-compatible HTTP) implement it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # samples per prompt
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()  # e.g. the step separator: generation ends before it
    seed: int = 0
    logprobs: bool = False  # also return per-token log-probabilities (and token ids)

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1:
            raise ValueError(f"n and max_new_tokens must be >= 1, got n={self.n}, max_new_tokens={self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")


@dataclass(frozen=True)
class Completion:
    text: str  # without the stop string that ended it
    n_tokens: int  # generated tokens, the stop string's included
    logprob: float  # sum of the model's log-probabilities of the generated tokens
    finish_reason: FinishReason  # stop: a stop string or end-of-sequence; length: the token budget
    token_logprobs: list[float] | None = field(default=None, compare=False)
    token_ids: list[int] | None = field(default=None, compare=False)  # with logprobs, where the backend has them
    # The stop string that ended it; None when it ended at end-of-sequence or the token budget.
    # Search reads this to tell "end of a step" from "end of the solution".
    stop_string: str | None = None


@runtime_checkable
class Generator(Protocol):
    name: str

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        """`params.n` completions for each prompt, in prompt order."""
        ...


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """The text before the earliest stop string, and whether one occurred."""
    text, found = cut_at_stop_string(text, stop)
    return text, found is not None


def cut_at_stop_string(text: str, stop: Sequence[str]) -> tuple[str, str | None]:
    """The text before the earliest stop string, and that stop string (None if none occurs)."""
    hits = [(i, s) for s in stop if s and (i := text.find(s)) >= 0]
    if not hits:
        return text, None
    i, s = min(hits)
    return text[:i], s
