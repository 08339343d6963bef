"""Final-answer extraction and comparison.

`answers_match` settles plain numbers exactly (GSM8K style: thousands commas, `$`,
trailing `.00`) and hands everything else to math-verify, used the way it needs:

- Bare answers are wrapped in `$...$` before parsing. math-verify's plain-expression
  extractor reads a bare "6-9i" as just 6, which would make "6-9i" equal "6+9i".
- math-verify bounds its sympy work with SIGALRM, which only works in a process's main
  thread (elsewhere it raises and the comparison silently comes back False). Off the main
  thread we therefore run the comparison in a helper process, whose main thread can use
  the alarm, and also bound the wait from outside.
"""

from __future__ import annotations

import atexit
import json
import logging
import re
import select
import subprocess
import sys
import threading
from fractions import Fraction
from functools import lru_cache

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5

# --- extraction -----------------------------------------------------------------------

_HASHES_RE = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)
_PRM800K_ANSWER_RE = re.compile(r"^#\s*Answer\s*\n\s*(.+?)\s*$", re.MULTILINE)  # PRM800K: "# Answer\n\n5"
_THE_ANSWER_RE = re.compile(r"the (?:final )?answer is[:\s]*(.+?)(?:\.\s*$|\.\s+|\n|$)", re.IGNORECASE)
_NUMBER_RE = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_CALC_RE = re.compile(r"<<[^<>]*>>")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), nested braces included."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        # "\boxed 5" form
        m = re.match(r"\\(?:boxed|fbox)\s+([^\s$]+)", text[start:])
        return m.group(1) if m else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None  # unbalanced: no answer rather than a guess


def extract_answer(text: str | None) -> str | None:
    """The final answer a solution states: the last \\boxed{}, else `#### x`, else
    PRM800K's `# Answer` heading, else "The answer is x", else the last number in the text;
    None when there is none."""
    if not text:
        return None
    if (boxed := last_boxed(text)) is not None:
        return boxed
    if hashes := _HASHES_RE.findall(text):
        return hashes[-1].strip()
    if headed := _PRM800K_ANSWER_RE.findall(text):
        return headed[-1].strip()
    if said := _THE_ANSWER_RE.findall(text):
        return _strip_math_delimiters(said[-1])
    return _fallback_number(text)


def _fallback_number(text: str) -> str | None:
    # Last resort on free text: drop GSM8K calculator annotations (<<9+6=15>>), then prefer
    # what the last line says a computation equals ("... = 15 liters of the 24") over the
    # last number written anywhere.
    text = _CALC_RE.sub("", text)
    last_line = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "")
    if "=" in last_line and (m := _NUMBER_RE.search(last_line.rsplit("=", 1)[1])):
        return m.group(0).rstrip(",")
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1].rstrip(",") if numbers else None


def _strip_math_delimiters(s: str) -> str:
    s = s.strip().rstrip(".").strip()
    if s.startswith("$") and s.endswith("$") and len(s) > 1 and not _as_number(s):
        s = s.strip("$").strip()
    return s


# --- comparison -----------------------------------------------------------------------

_PLAIN_NUMBER_RE = re.compile(r"^[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?$|^[-+]?\.\d+$")


def _as_number(s: str) -> Fraction | None:
    """A plain number written the GSM8K way ("$1,234.00", "\\$18", "-7", "3.50"), exactly;
    None for anything else, fractions and LaTeX included (math-verify handles those)."""
    t = s.strip()
    t = re.sub(r"^\\?\$\s*|(?<=\d)\s*\\?\$$", "", t)  # leading/trailing dollar sign
    t = t.replace("\\!", "").replace("{,}", ",").strip()
    t = re.sub(r"^([-+]?)\\?\$\s*", r"\1", t)  # "-$5"
    if not _PLAIN_NUMBER_RE.match(t):
        return None
    return Fraction(t.replace(",", ""))


def _as_latex(s: str) -> str:
    s = s.strip()
    if "$" in s or "\\boxed" in s or "\\(" in s or "\\[" in s:
        return s
    return f"${s}$"


_CONFIGS = None


def _parse_here(answer: str, timeout_s: int) -> list:
    global _CONFIGS
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    _CONFIGS = _CONFIGS or [LatexExtractionConfig(), ExprExtractionConfig()]
    return parse(_as_latex(answer), extraction_config=_CONFIGS, parsing_timeout=timeout_s)


def _verify_here(predicted: str, reference: str, timeout_s: int) -> bool:
    from math_verify import verify

    gold, pred = _parse_here(reference, timeout_s), _parse_here(predicted, timeout_s)
    return bool(gold and pred and verify(gold, pred, timeout_seconds=timeout_s))


def _parses_here(answer: str, timeout_s: int) -> bool:
    # parse() returns [sympy object, text] on success and just [text] when it gives up
    return any(not isinstance(x, str) for x in _parse_here(answer, timeout_s))


class _HelperProcess:
    """A long-lived `python -m qstar_dagster.tasks._grading_worker` that runs math-verify in
    its main thread. A subprocess rather than multiprocessing: spawn would re-import the
    caller's __main__, and a hung helper can simply be killed and replaced."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        atexit.register(self.close)

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def call(self, fn_name: str, args: list, wait_s: float) -> bool:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "qstar_dagster.tasks._grading_worker"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                )
            try:
                self._proc.stdin.write(json.dumps([fn_name, args]) + "\n")
                self._proc.stdin.flush()
                ready, _, _ = select.select([self._proc.stdout], [], [], wait_s)
                line = self._proc.stdout.readline() if ready else ""
                if line:
                    return bool(json.loads(line))
            except (BrokenPipeError, ValueError):
                pass
            log.warning("math-verify helper gave no answer for %s%r within %ss; counted as False",
                        fn_name, args, wait_s)
            self.close()
            return False


_helper = _HelperProcess()


def _bounded(fn, *args, timeout_s: int) -> bool:
    """Run a math-verify call where its SIGALRM timeout works: here in the main thread,
    else in the helper process, with the wait bounded from outside too."""
    if threading.current_thread() is threading.main_thread():
        return fn(*args, timeout_s)
    # The helper bounds each parse and the comparison; allow for them, plus its start-up.
    return _helper.call(fn.__name__, [*args, timeout_s], wait_s=4 * timeout_s + 30)


@lru_cache(maxsize=65536)
def answers_match(predicted: str | None, reference: str | None, timeout_s: int = DEFAULT_TIMEOUT_S) -> bool:
    """Whether a predicted final answer equals the reference answer, mathematically.

    Plain numbers compare exactly ("1" never equals "10"; "1,000.00" equals "1000");
    everything else is parsed as LaTeX and compared by math-verify, bounded by `timeout_s`
    per operation in any thread or process. A timeout counts as no match."""
    if predicted is None or reference is None or not predicted.strip() or not reference.strip():
        return False
    p, r = _as_number(predicted), _as_number(reference)
    if p is not None and r is not None:
        return p == r
    return _bounded(_verify_here, predicted, reference, timeout_s=timeout_s)


def is_parseable_answer(answer: str | None, timeout_s: int = DEFAULT_TIMEOUT_S) -> bool:
    """Whether a reference answer reads as a number or as math at all (a check on prompt
    sets: an unparseable reference makes every sample look wrong)."""
    if answer is None or not answer.strip():
        return False
    return _as_number(answer) is not None or _bounded(_parses_here, answer, timeout_s=timeout_s)
