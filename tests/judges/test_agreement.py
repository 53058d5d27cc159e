"""Agreement metrics against values computed by hand."""
import math

import numpy as np
import pytest

from unsafe_concepts.judges.agreement import (
    accuracy,
    agreement_report,
    cohen_kappa,
    confusion_matrix,
    format_confusion,
    macro_f1,
)

LABELS = ("safe", "unsafe", "unclear")
TRUTH = ["safe", "safe", "safe", "unsafe", "unsafe", "unclear"]
PRED = ["safe", "safe", "unsafe", "unsafe", "unclear", "unclear"]


def test_confusion_matrix_rows_are_truth():
    m = confusion_matrix(TRUTH, PRED, LABELS)
    assert m.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_hand_computed_values():
    m = confusion_matrix(TRUTH, PRED, LABELS)
    assert accuracy(m) == pytest.approx(4 / 6)
    # F1: safe 2*1*(2/3)/(5/3) = 0.8; unsafe 0.5; unclear 2*0.5*1/1.5 = 2/3
    assert macro_f1(m) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    # p_o = 4/6; p_e = (3*2 + 2*2 + 1*2) / 36 = 1/3; kappa = (2/3 - 1/3) / (2/3) = 0.5
    assert cohen_kappa(m) == pytest.approx(0.5)


def test_kappa_textbook_example():
    # 2x2 example: 50 items, a=20 yes/yes, b=5, c=10, d=15 -> p_o=0.7, p_e=0.5, kappa=0.4
    m = np.array([[20, 5], [10, 15]])
    assert cohen_kappa(m) == pytest.approx(0.4)


def test_perfect_and_degenerate_agreement():
    m = confusion_matrix(["A", "A"], ["A", "A"], ("A", "B", "C", "D", "unclear"))
    assert accuracy(m) == 1.0 and cohen_kappa(m) == 1.0 and macro_f1(m) == 1.0  # absent classes skipped
    assert math.isnan(accuracy(np.zeros((2, 2), dtype=int)))


def test_unknown_label_and_length_mismatch():
    with pytest.raises(ValueError, match="not in the label set"):
        confusion_matrix(["safe"], ["maybe"], LABELS)
    with pytest.raises(ValueError, match="length mismatch"):
        confusion_matrix(["safe"], [], LABELS)


def test_report_and_table():
    rep = agreement_report(TRUTH, PRED, LABELS)
    assert rep["n"] == 6 and rep["per_class"]["safe"]["recall"] == pytest.approx(2 / 3)
    assert rep["per_class"]["unclear"]["support"] == 1
    table = format_confusion(rep)
    assert "safe" in table.splitlines()[1] and table.splitlines()[1].split()[-3:] == ["2", "1", "0"]
