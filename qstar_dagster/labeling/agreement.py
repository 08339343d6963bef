"""How far to trust a labeler: its step labels against a reference labeler (the oracle, or
another labeler), per step and per solution.

Per step, on the steps both label: accuracy, precision and recall of negative steps (the
errors a PRM must catch), Cohen's kappa, and the 2x2 confusion matrix. Per solution,
ProcessBench's first-error F1: the predicted first error (first step labeled negative, -1
for none) against the reference's, as the harmonic mean of the accuracy on solutions with
an error and on solutions without one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Agreement:
    n_steps: int
    accuracy: float | None
    negative_precision: float | None
    negative_recall: float | None
    kappa: float | None
    confusion: tuple[tuple[int, int], tuple[int, int]]  # [reference negative, positive] x [labeler negative, positive]
    n_solutions: int
    first_error_accuracy_erroneous: float | None
    first_error_accuracy_correct: float | None
    first_error_f1: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def step_agreement(labels: Mapping[str, bool], reference: Mapping[str, bool]) -> dict:
    common = [k for k in labels if k in reference]
    cm = [[0, 0], [0, 0]]
    for k in common:
        cm[int(reference[k])][int(labels[k])] += 1
    n = len(common)
    (nn, np_), (pn, pp) = cm
    accuracy = _ratio(nn + pp, n)
    kappa = None
    if n:
        expected = ((nn + np_) * (nn + pn) + (pn + pp) * (np_ + pp)) / (n * n)
        kappa = (accuracy - expected) / (1 - expected) if expected < 1 else (1.0 if accuracy == 1 else 0.0)
    return {"n_steps": n, "accuracy": accuracy, "negative_precision": _ratio(nn, nn + pn),
            "negative_recall": _ratio(nn, nn + np_), "kappa": kappa, "confusion": (tuple(cm[0]), tuple(cm[1]))}


def first_error(step_ids: Sequence[str], labels: Mapping[str, bool]) -> int | None:
    """Index of the first step labeled negative; -1 when every step is labeled positive; None
    when the labeler says nothing before its first negative (a gap makes it undecided)."""
    for i, s in enumerate(step_ids):
        if s not in labels:
            return None
        if not labels[s]:
            return i
    return -1


def agreement(labels: Mapping[str, bool], reference: Mapping[str, bool],
              solutions: Sequence[Sequence[str]]) -> Agreement:
    """`labels` and `reference`: node_id -> positive; `solutions`: each a list of step node ids."""
    erroneous = [0, 0]  # right, total
    clean = [0, 0]
    for steps in solutions:
        ref, pred = first_error(steps, reference), first_error(steps, labels)
        if ref is None or pred is None:
            continue
        bucket = clean if ref == -1 else erroneous
        bucket[0] += pred == ref
        bucket[1] += 1
    acc_err, acc_ok = _ratio(*erroneous), _ratio(*clean)
    f1 = 2 * acc_err * acc_ok / (acc_err + acc_ok) if acc_err is not None and acc_ok is not None and acc_err + acc_ok else (
        0.0 if acc_err is not None and acc_ok is not None else None)
    return Agreement(**step_agreement(labels, reference), n_solutions=erroneous[1] + clean[1],
                     first_error_accuracy_erroneous=acc_err, first_error_accuracy_correct=acc_ok, first_error_f1=f1)
