"""What a domain's step oracle says about a solution: a verdict per step, the first wrong
step (ProcessBench's label), and whether the solution is complete and right."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StepVerdict:
    correct: bool
    reason: str  # "ok" or what is wrong, in words


@dataclass(frozen=True)
class OracleResult:
    verdicts: list[StepVerdict] = field(default_factory=list)
    first_error: int | None = None  # index of the first wrong step; None when all are right
    complete: bool = False  # the solution reached "The answer is ..." after every operation
    answer_correct: bool = False  # its final answer equals the true result

    @property
    def labels(self) -> list[bool]:
        return [v.correct for v in self.verdicts]

    @property
    def processbench_label(self) -> int:
        """ProcessBench's convention: index of the first wrong step, or -1."""
        return -1 if self.first_error is None else self.first_error
