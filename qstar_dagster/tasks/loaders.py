"""Loaders for problem files: GSM8K, MATH and generic JSONL, and the problems of
process-supervision files (PRM800K, Math-Shepherd, ProcessBench: `process_files.py`), behind
one `load_problems`.

A file is read and checked whole before anything is returned: a bad line raises
`ProblemFileError` naming the file, the line and the fix, so that a caller that writes
only after loading never half-writes a prompt set.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qstar_dagster.tasks.grading import last_boxed
from qstar_dagster.tasks.problem import Problem, ProblemFileError
from qstar_dagster.tasks.process_files import (
    LABELED_FORMATS,
    LabeledSolution,
    detect_labeled_format,
    parse_line,
    problems_of,
)

FORMATS = ("gsm8k", "math", "jsonl", *LABELED_FORMATS)


@dataclass(frozen=True)
class JsonlFields:
    """Field names of a generic JSONL file."""

    problem: str = "problem"
    answer: str = "answer"
    solution: str | None = "solution"


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    raw = path.read_bytes()
    if not raw.strip():
        raise ProblemFileError(path, "the file is empty", "put one JSON object per line in it")
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProblemFileError(
                path, f"bytes that are not UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1})",
                "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)", lineno,
            ) from None
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise ProblemFileError(
                path, f"malformed JSON ({e.msg} at column {e.colno})",
                "make every line one complete JSON object (JSON Lines)", lineno,
            ) from None
        if not isinstance(row, dict):
            raise ProblemFileError(path, f"a JSON {type(row).__name__}, not an object",
                                   "make every line one JSON object with named fields", lineno)
        yield lineno, row


def detect_format(row: dict[str, Any]) -> str | None:
    if labeled := detect_labeled_format(row):  # first: ProcessBench rows have a 'problem' too
        return labeled
    if "question" in row and isinstance(row.get("answer"), str) and "####" in row["answer"]:
        return "gsm8k"
    if "problem" in row and ("solution" in row or "answer" in row) and (
        "\\boxed" in str(row.get("solution", "")) or "level" in row or "subject" in row
    ):
        return "math"
    if "problem" in row and "answer" in row:
        return "jsonl"
    return None


def _field(path: Path, lineno: int, row: dict, name: str, fix: str) -> str:
    value = row.get(name)
    if value is None:
        raise ProblemFileError(path, f"no {name!r} field (fields: {sorted(row)})", fix, lineno)
    if isinstance(value, str) and not value.strip():
        raise ProblemFileError(path, f"the {name!r} field is empty", fix, lineno)
    return str(value).strip()


def _gsm8k(path: Path, lineno: int, row: dict) -> Problem:
    question = _field(path, lineno, row, "question", "GSM8K rows need 'question' and 'answer'")
    answer = _field(path, lineno, row, "answer", "GSM8K rows need 'question' and 'answer'")
    if "####" not in answer:
        raise ProblemFileError(path, "the 'answer' has no '#### <number>' final line",
                               "end each GSM8K answer with '#### <number>'", lineno)
    solution, final = answer.rsplit("####", 1)
    if not final.strip():
        raise ProblemFileError(path, "nothing after '####'", "end each GSM8K answer with '#### <number>'", lineno)
    return Problem(question, final.strip(), solution.strip(), "gsm8k")


def _math(path: Path, lineno: int, row: dict) -> Problem:
    problem = _field(path, lineno, row, "problem", "MATH rows need 'problem' and 'answer' or a \\boxed{} 'solution'")
    solution = str(row["solution"]).strip() if row.get("solution") else None
    answer = row.get("answer")
    if answer is None or not str(answer).strip():
        answer = last_boxed(solution) if solution else None
    if answer is None or not str(answer).strip():
        raise ProblemFileError(path, "no 'answer' field and no \\boxed{} answer in 'solution'",
                               "give each MATH row an 'answer', or a solution ending in \\boxed{...}", lineno)
    meta = {k: row[k] for k in ("level", "subject", "unique_id") if k in row}
    return Problem(problem, str(answer).strip(), solution, "math", meta)


def _jsonl(path: Path, lineno: int, row: dict, fields: JsonlFields) -> Problem:
    fix = (f"give each row {fields.problem!r} and {fields.answer!r}, or set problem_field/answer_field "
           "to the names your file uses")
    problem = _field(path, lineno, row, fields.problem, fix)
    answer = _field(path, lineno, row, fields.answer, fix)
    solution = row.get(fields.solution) if fields.solution else None
    meta = {k: v for k, v in row.items() if k not in {fields.problem, fields.answer, fields.solution}}
    return Problem(problem, answer, str(solution).strip() if solution else None, "jsonl", meta)


def _check(path: Path, format: str | None) -> None:
    if not path.is_file():
        raise ProblemFileError(path, "no such file", "check the path")
    if format is not None and format not in FORMATS:
        raise ProblemFileError(path, f"unknown format {format!r}", f"use one of {', '.join(FORMATS)} or leave it unset")


def _with_format(path: Path, format: str | None) -> tuple[str | None, Iterator[tuple[int, dict[str, Any]]]]:
    """The file's rows (the file read once), and `format`, else the one its first row has."""
    rows = _rows(path)
    first = next(rows)  # an empty file raises here
    return format or detect_format(first[1]), itertools.chain([first], rows)


def file_format(path: str | Path, format: str | None = None) -> str | None:
    """`format`, else the format the file's first row has (None when it has none of them)."""
    path = Path(path)
    _check(path, format)
    return _with_format(path, format)[0]


def _labeled(path: Path, format: str | None, rows) -> list[LabeledSolution]:
    if format not in LABELED_FORMATS:
        raise ProblemFileError(path, f"not a process-supervision file (format {format})",
                               f"give a {', '.join(LABELED_FORMATS)} file, or pass format= one of them")
    return [parse_line(path, lineno, row, format) for lineno, row in rows]


def load_labeled(path: str | Path, format: str | None = None) -> tuple[str, list[LabeledSolution]]:
    """The format and every labeled solution of a process-supervision file, checked whole."""
    path = Path(path)
    _check(path, format)
    format, rows = _with_format(path, format)
    return format, _labeled(path, format, rows)


def load_problems(path: str | Path, format: str | None = None, fields: JsonlFields | None = None) -> list[Problem]:
    """Every problem in a JSONL file. `format` is one of FORMATS; detected from the first row
    when None. Raises ProblemFileError, naming file, line and fix, on bad input."""
    path = Path(path)
    _check(path, format)
    detected, rows = _with_format(path, format)
    if detected in LABELED_FORMATS:
        return [p for p, _ in problems_of(_labeled(path, detected, rows))]
    problems: list[Problem] = []
    for lineno, row in rows:
        if format is None:
            # Custom field names mean generic JSONL, unless the row is plainly GSM8K or MATH.
            format = detect_format(row) or ("jsonl" if fields is not None else None)
            if format is None:
                raise ProblemFileError(
                    path, f"cannot tell the format from the fields {sorted(row)}",
                    "use GSM8K (question, answer with '#### n'), MATH (problem, solution/answer), "
                    "problem/answer fields or a PRM800K, Math-Shepherd or ProcessBench file, or pass "
                    "format='jsonl' with the field names", lineno,
                )
        if format == "gsm8k":
            problems.append(_gsm8k(path, lineno, row))
        elif format == "math":
            problems.append(_math(path, lineno, row))
        else:
            problems.append(_jsonl(path, lineno, row, fields or JsonlFields()))
    return problems
