"""Agreement metrics between two label sequences (numpy only, so the numbers are easy to audit).

Used by ``unsafe-concepts judge eval`` for judge-vs-labels and judge-vs-judge: accuracy, per-class
precision/recall/F1, macro-F1, the confusion matrix and Cohen's kappa.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(truth: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Rows = ``truth`` label, columns = ``pred`` label, in the order of ``labels``."""
    if len(truth) != len(pred):
        raise ValueError(f"length mismatch: {len(truth)} truths vs {len(pred)} predictions")
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({x for x in list(truth) + list(pred) if x not in index})
    if unknown:
        raise ValueError(f"labels {unknown} not in the label set {list(labels)}")
    m = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(truth, pred):
        m[index[t], index[p]] += 1
    return m


def accuracy(m: np.ndarray) -> float:
    n = m.sum()
    return float(np.trace(m) / n) if n else float("nan")


def per_class_f1(m: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and F1 per class; 0 where undefined (no predictions / no support)."""
    tp = np.diag(m).astype(float)
    predicted = m.sum(axis=0).astype(float)
    support = m.sum(axis=1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def macro_f1(m: np.ndarray) -> float:
    """Mean F1 over the classes that occur (in the truth or the predictions); absent classes are skipped
    so that a label set with an unused class (e.g. no "D" answers) does not drag the mean to 0."""
    stats = per_class_f1(m)
    present = (m.sum(axis=0) + m.sum(axis=1)) > 0
    return float(stats["f1"][present].mean()) if present.any() else float("nan")


def cohen_kappa(m: np.ndarray) -> float:
    """(p_o - p_e) / (1 - p_e) with p_e from the two marginals; 1.0 when both raters use one class only."""
    n = m.sum()
    if n == 0:
        return float("nan")
    p_o = np.trace(m) / n
    p_e = float((m.sum(axis=0) * m.sum(axis=1)).sum()) / float(n * n)
    if p_e == 1.0:
        return 1.0 if p_o == 1.0 else 0.0
    return float((p_o - p_e) / (1 - p_e))


def agreement_report(truth: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Everything `judge eval` prints, as plain JSON-able values."""
    m = confusion_matrix(truth, pred, labels)
    stats = per_class_f1(m)
    return {
        "n": int(m.sum()),
        "labels": list(labels),
        "accuracy": accuracy(m),
        "macro_f1": macro_f1(m),
        "kappa": cohen_kappa(m),
        "confusion": m.tolist(),
        "per_class": {
            label: {"precision": float(stats["precision"][i]), "recall": float(stats["recall"][i]),
                    "f1": float(stats["f1"][i]), "support": int(stats["support"][i])}
            for i, label in enumerate(labels)
        },
    }


def format_confusion(report: dict, row_title: str = "truth", col_title: str = "predicted") -> str:
    """A readable confusion table: rows = first rater, columns = second."""
    labels = report["labels"]
    width = max(8, *(len(x) + 2 for x in labels))
    corner = f"{row_title} / {col_title}"
    head = f"{corner:<{width + 12}}" + "".join(f"{x:>{width}}" for x in labels)
    lines = [head]
    for label, row in zip(labels, report["confusion"]):
        lines.append(f"{label:<{width + 12}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)
