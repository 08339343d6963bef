"""The unit every prompt set is made of, and how a policy is prompted with it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any


class ProblemFileError(ValueError):
    """A problem (or process-supervision) file that cannot be loaded, with where and what to
    do about it."""

    def __init__(self, path: Path | str, problem: str, fix: str, line: int | None = None):
        self.path, self.line, self.problem, self.fix = str(path), line, problem, fix
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}. Fix: {fix}")


def content_id(prefix: str, *parts: Any) -> str:
    """Deterministic id from content: the same parts always give the same id."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return f"{prefix}_{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class Problem:
    problem: str
    reference_answer: str
    reference_solution: str | None = None
    domain: str = "jsonl"  # arith | gsm8k | math | jsonl
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @cached_property  # asked once per node when a tree is written
    def prompt_id(self) -> str:
        # Content-addressed: the same problem with the same reference is the same prompt,
        # whichever set or file it came from.
        return content_id("p", self.problem, self.reference_answer)


# What the built-in policy is conditioned on; its steps follow, one per line. A checkpoint
# records its template (config "template"), so that search and evaluation prompt it the way
# it was trained.
DEFAULT_PROMPT_TEMPLATE = "{problem}\n"


def policy_prompt(problem: str, template: str = DEFAULT_PROMPT_TEMPLATE) -> str:
    return template.format(problem=problem)
