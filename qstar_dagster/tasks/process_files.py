"""Readers of process-supervision files: PRM800K, Math-Shepherd and ProcessBench lines as
labeled solutions, and the problems they are solutions of.

This is the file-format layer only: what each line says, checked whole before anything is
returned (a bad line raises `ProblemFileError` with file, line and fix, as the problem
loaders do). Turning solutions into trees and step labels is `labeling/imported.py`.

One shape fits the three formats: a solution is a list of step *slots*; a slot holds the
candidate steps rated at that position (PRM800K's alternative completions; one candidate in
the other formats) and which one the solution continues with (None: it stops there).
Ratings are PRM800K's: +1 right, 0 neutral, -1 wrong, None unrated; Math-Shepherd's `+`/`-`
and ProcessBench's first-error index become +1/-1.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from qstar_dagster.tasks.grading import extract_answer
from qstar_dagster.tasks.problem import Problem, ProblemFileError

PRM800K, MATH_SHEPHERD, PROCESSBENCH = "prm800k", "math_shepherd", "processbench"
LABELED_FORMATS = (PRM800K, MATH_SHEPHERD, PROCESSBENCH)
STEP_TAG = "ки"  # Math-Shepherd's step tag
PRM800K_FINISH_REASONS = ("solution", "found_error", "give_up", "bad_problem")
_STEP_PREFIX_RE = re.compile(r"^\s*Step \d+:\s*")
_FIRST_STEP_RE = re.compile(r"\s*Step 1:\s*")


@dataclass(frozen=True)
class RatedStep:
    text: str
    rating: int | None  # +1, 0, -1; None: not rated
    flagged: bool = False  # PRM800K: the labeler did not know how to rate it
    human: bool = False  # PRM800K phase 1: a step the labeler wrote instead of the model's
    ends: bool = False  # the step ends a solution (states its final answer)


@dataclass(frozen=True)
class Slot:
    candidates: tuple[RatedStep, ...]
    chosen: int | None  # the candidate the solution continues with; None: it stops here


@dataclass(frozen=True)
class LabeledSolution:
    format: str
    line: int
    problem: str
    domain: str
    slots: tuple[Slot, ...]
    reference_answer: str | None = None  # given by the file (PRM800K), else None
    final_correct: bool | None = None  # the file's verdict on the final answer; None: grade it
    ids: dict[str, Any] = field(default_factory=dict)  # the line's own ids (ProcessBench id, PRM800K labeler ...)

    def path(self) -> list[RatedStep]:
        """The steps the solution takes: each slot's chosen candidate, up to a slot with none."""
        out = []
        for slot in self.slots:
            if slot.chosen is None:
                break
            out.append(slot.candidates[slot.chosen])
        return out


def _error(path: Path, line: int, problem: str, fix: str) -> ProblemFileError:
    return ProblemFileError(path, problem, fix, line)


def detect_labeled_format(row: dict[str, Any]) -> str | None:
    if isinstance(row.get("label"), dict) and isinstance(row.get("question"), dict):
        return PRM800K
    if isinstance(row.get("input"), str) and isinstance(row.get("label"), str) and STEP_TAG in row["input"]:
        return MATH_SHEPHERD
    if "problem" in row and isinstance(row.get("steps"), list) and "final_answer_correct" in row:
        return PROCESSBENCH
    return None


def _text(path: Path, line: int, value: Any, name: str, fix: str) -> str:
    if value is None:
        raise _error(path, line, f"no {name!r} field", fix)
    if not isinstance(value, str):
        raise _error(path, line, f"{name!r} is a {type(value).__name__}, not a string", fix)
    if not value.strip():
        raise _error(path, line, f"{name!r} is empty", fix)
    return value.strip()


# --- PRM800K ---------------------------------------------------------------------------------


def _rating(path: Path, line: int, value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or value not in (-1, 0, 1):
        raise _error(path, line, f"{where} has rating {value!r}", "rate each completion -1, 0, +1 or null")
    return int(value)


def _prm800k(path: Path, line: int, row: dict) -> LabeledSolution:
    fix = "PRM800K lines need question.problem and label.steps (see openai/prm800k)"
    q, label = row["question"], row["label"]
    problem = _text(path, line, q.get("problem"), "question.problem", fix)
    answer = str(q.get("ground_truth_answer") or "").strip() or None  # else from a right solution, as elsewhere
    finish = label.get("finish_reason")
    if finish not in PRM800K_FINISH_REASONS:
        raise _error(path, line, f"label.finish_reason is {finish!r}", f"use one of {', '.join(PRM800K_FINISH_REASONS)}")
    steps = label.get("steps")
    if not isinstance(steps, list):
        raise _error(path, line, "label.steps is not a list", fix)
    slots = []
    for k, step in enumerate(steps, start=1):
        where = f"label.steps[{k - 1}]"
        if not isinstance(step, dict) or not isinstance(step.get("completions", []), list):
            raise _error(path, line, f"{where} is not an object with a completions list", fix)
        candidates = []
        for j, c in enumerate(step.get("completions") or []):
            if not isinstance(c, dict):
                raise _error(path, line, f"{where}.completions[{j}] is not an object", fix)
            text = _text(path, line, c.get("text"), f"{where}.completions[{j}].text", fix)
            candidates.append(RatedStep(text, _rating(path, line, c.get("rating"), f"{where}.completions[{j}]"),
                                        bool(c.get("flagged")), ends="# Answer" in text))
        chosen, human = step.get("chosen_completion"), step.get("human_completion")
        if chosen is not None:
            if isinstance(chosen, bool) or not isinstance(chosen, int) or not 0 <= chosen < len(candidates):
                raise _error(path, line, f"{where}.chosen_completion is {chosen!r} with {len(candidates)} completions",
                             "give the index of a completion, or null when a human completion was used")
        elif human is not None:  # phase 1: the labeler wrote the step the solution goes on with
            text = human.get("text") if isinstance(human, dict) else human
            text = _text(path, line, text, f"{where}.human_completion.text", fix)
            rating = _rating(path, line, human.get("rating") if isinstance(human, dict) else None,
                             f"{where}.human_completion")
            # the guideline has labelers write a right step when every completion is wrong
            candidates.append(RatedStep(text, 1 if rating is None else rating,
                                        bool(human.get("flagged")) if isinstance(human, dict) else False,
                                        human=True, ends="# Answer" in text))
            chosen = len(candidates) - 1
        elif k < len(steps):
            raise _error(path, line, f"{where} chooses no completion, yet {len(steps) - k} steps follow",
                         "set chosen_completion (or human_completion) on every step but the last")
        if not candidates:
            raise _error(path, line, f"{where} has no completions", fix)
        slots.append(Slot(tuple(candidates), chosen))
    # Phase 2: the rest of the pre-generated solution, unrated, when the labels stop before its end.
    taken = [s.candidates[s.chosen].text for s in slots if s.chosen is not None]
    pre = q.get("pre_generated_steps")
    if (isinstance(pre, list) and len(taken) == len(slots) and len(pre) > len(taken)
            and [str(p).strip() for p in pre[:len(taken)]] == taken):
        rest = [str(p).strip() for p in pre[len(taken):] if str(p).strip()]
        slots += [Slot((RatedStep(t, None, ends=i == len(rest) - 1),), 0) for i, t in enumerate(rest)]
    if finish == "solution" and slots and slots[-1].chosen is not None:
        last = slots[-1]
        kept = list(last.candidates)
        kept[last.chosen] = replace(kept[last.chosen], ends=True)
        slots[-1] = Slot(tuple(kept), last.chosen)
    ids = {k: row[k] for k in ("labeler", "timestamp", "generation", "is_quality_control_question") if k in row}
    # "solution": the labeler saw the chosen path reach the right answer; other ends are graded
    return LabeledSolution(PRM800K, line, problem, "math", tuple(slots), reference_answer=answer,
                           final_correct=True if finish == "solution" else None, ids=ids | {"finish_reason": finish})


# --- Math-Shepherd ---------------------------------------------------------------------------


def _math_shepherd(path: Path, line: int, row: dict) -> LabeledSolution:
    fix = f"write input as '<question> Step 1: <step> {STEP_TAG}\\nStep 2: <step> {STEP_TAG}' and label as the same text " \
          f"with + or - in place of each {STEP_TAG}"
    text = _text(path, line, row.get("input"), "input", fix)
    label = _text(path, line, row.get("label"), "label", fix)
    parts = text.split(STEP_TAG)
    if parts[-1].strip():
        raise _error(path, line, f"text after the last {STEP_TAG} tag ({parts[-1].strip()[:40]!r})", fix)
    # the label is the input with each tag replaced by one sign: walk both together
    signs, at = [], 0
    for k, part in enumerate(parts[:-1], start=1):
        if label[at:at + len(part)] != part:
            raise _error(path, line, f"label differs from input before step {k}'s tag", fix)
        at += len(part)
        sign = label[at:at + 1]
        if sign not in ("+", "-"):
            raise _error(path, line, f"step {k}'s label is {sign!r}, not + or -", fix)
        signs.append(sign == "+")
        at += 1
    if label[at:].strip():
        raise _error(path, line, "label is longer than input", fix)
    first = _FIRST_STEP_RE.search(parts[0])
    if not first:
        raise _error(path, line, "no 'Step 1:' in the input: the question and the first step cannot be told apart",
                     fix)
    problem = parts[0][:first.start()].strip()
    if not problem:
        raise _error(path, line, "the question before 'Step 1:' is empty", fix)
    texts = [parts[0][first.end():]] + parts[1:-1]
    steps = [_STEP_PREFIX_RE.sub("", t).strip() for t in texts]
    if not all(steps):
        raise _error(path, line, f"step {steps.index('') + 1} is empty", fix)
    slots = tuple(Slot((RatedStep(s, 1 if ok else -1, ends=i == len(steps) - 1),), 0)
                  for i, (s, ok) in enumerate(zip(steps, signs)))
    task = str(row.get("task", "GSM8K")).lower()
    # Math-Shepherd's last label is its completion's own outcome: + exactly when the answer is right
    return LabeledSolution(MATH_SHEPHERD, line, problem, "math" if task == "math" else "gsm8k", slots,
                           final_correct=signs[-1], ids={"task": row["task"]} if "task" in row else {})


# --- ProcessBench ----------------------------------------------------------------------------


def _processbench(path: Path, line: int, row: dict) -> LabeledSolution:
    fix = "ProcessBench lines need problem, steps (a list of strings), label (-1 or the first wrong step's index) " \
          "and final_answer_correct"
    problem = _text(path, line, row.get("problem"), "problem", fix)
    steps = [_text(path, line, s, f"steps[{i}]", fix) for i, s in enumerate(row["steps"])]
    if not steps:
        raise _error(path, line, "steps is empty", fix)
    first = row.get("label")
    if isinstance(first, bool) or not isinstance(first, int) or not -1 <= first < len(steps):
        raise _error(path, line, f"label is {first!r} for {len(steps)} steps", f"use -1 or 0..{len(steps) - 1}")
    correct = row.get("final_answer_correct")
    if not isinstance(correct, bool):
        raise _error(path, line, f"final_answer_correct is {correct!r}", "use true or false")
    # right before the first error, wrong at it, unrated after (ProcessBench says nothing there)
    ratings = [1 if first == -1 or i < first else -1 if i == first else None for i in range(len(steps))]
    slots = tuple(Slot((RatedStep(s, r, ends=i == len(steps) - 1),), 0) for i, (s, r) in enumerate(zip(steps, ratings)))
    ident = str(row.get("id", ""))
    domain = "gsm8k" if ident.lower().startswith("gsm8k") else "math"
    return LabeledSolution(PROCESSBENCH, line, problem, domain, slots, final_correct=correct,
                           ids={k: row[k] for k in ("id", "generator") if k in row})


_PARSERS = {PRM800K: _prm800k, MATH_SHEPHERD: _math_shepherd, PROCESSBENCH: _processbench}


def parse_line(path: Path, line: int, row: dict, format: str) -> LabeledSolution:
    want = {PRM800K: "question and label objects", MATH_SHEPHERD: f"input with {STEP_TAG} tags and a label string",
            PROCESSBENCH: "problem, steps and final_answer_correct"}[format]
    if detect_labeled_format(row) != format:
        raise _error(path, line, f"not a {format} line (fields: {sorted(row)})", f"{format} lines have {want}")
    return _PARSERS[format](path, line, row)


# --- problems --------------------------------------------------------------------------------


def reference_answer(solutions: Sequence[LabeledSolution]) -> tuple[str, str]:
    """One problem's reference answer and where it came from: the file's (PRM800K's ground
    truth); else the most common answer of the solutions the file calls right; else unknown
    (''), which the prompt set's answer check reports and no later stage can grade against."""
    given = [s.reference_answer for s in solutions if s.reference_answer]
    if given:
        return given[0], "file"
    right = [extract_answer("\n".join(st.text for st in s.path())) for s in solutions if s.final_correct]
    votes = Counter(a for a in right if a)
    if votes:
        return votes.most_common(1)[0][0], "right_solution"
    return "", "unknown"


def problems_of(solutions: Sequence[LabeledSolution]) -> list[tuple[Problem, list[LabeledSolution]]]:
    """The distinct problems of a file's solutions (in file order), each with its solutions."""
    groups: dict[tuple[str, str], list[LabeledSolution]] = {}
    for s in solutions:
        groups.setdefault((s.problem, s.domain), []).append(s)
    out = []
    for (text, domain), group in groups.items():
        answer, source = reference_answer(group)
        out.append((Problem(text, answer, None, domain, {"format": group[0].format, "answer_from": source}), group))
    return out
