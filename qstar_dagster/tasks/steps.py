"""How a solution text is cut into steps, per domain."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepFormat:
    """A solution is its steps joined by `separator`; the separator is also the stop string
    a generator uses to end one step."""

    separator: str = "\n"

    def split(self, text: str) -> list[str]:
        return [s.strip() for s in text.split(self.separator) if s.strip()]

    def join(self, steps: list[str]) -> str:
        return self.separator.join(s.strip() for s in steps)


LINE = StepFormat("\n")
PARAGRAPH = StepFormat("\n\n")

# One line per step for the built-in domain; blank-line separated steps for model outputs
# on GSM8K/MATH (the convention of Math-Shepherd-style and Qwen PRM data).
DOMAIN_STEP_FORMATS: dict[str, StepFormat] = {
    "arith": LINE,
    "countdown": LINE,
    "gsm8k": PARAGRAPH,
    "math": PARAGRAPH,
    "jsonl": PARAGRAPH,
}


def step_format(domain: str, separator: str | None = None) -> StepFormat:
    if separator is not None:
        return StepFormat(separator)
    try:
        return DOMAIN_STEP_FORMATS[domain]
    except KeyError:
        raise ValueError(
            f"unknown domain {domain!r} for step splitting; known: {sorted(DOMAIN_STEP_FORMATS)}, "
            "or pass separator=..."
        ) from None


def split_steps(text: str, domain: str = "arith", separator: str | None = None) -> list[str]:
    return step_format(domain, separator).split(text)
