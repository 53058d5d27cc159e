"""The one interface every response judge implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

ALIGNMENT_LABELS = ("safe", "unsafe", "unclear")
PERCEPTION_LABELS = ("A", "B", "C", "D", "unclear")
UNCLEAR = "unclear"
KINDS = ("alignment", "perception")


def is_perception(task: str) -> bool:
    """The task-name rule: perception answers are option letters; every other task is a safe/unsafe verdict.
    Used only when an item does not say its kind."""
    return task.startswith("perception")


def check_kind(kind: str | None) -> str | None:
    if kind is not None and kind not in KINDS:
        raise ValueError(f"judge item kind must be one of {KINDS} or None, not {kind!r}")
    return kind


def kind_for(task: str = "", kind: str | None = None) -> str:
    """``kind`` when given, else the kind the task name implies."""
    return check_kind(kind) or ("perception" if is_perception(task or "") else "alignment")


def labels_for(task: str = "", kind: str | None = None) -> tuple[str, ...]:
    """The verdict labels of a task (or of an explicit kind: ``labels_for(kind="perception")``)."""
    return PERCEPTION_LABELS if kind_for(task, kind) == "perception" else ALIGNMENT_LABELS


@dataclass
class JudgeItem:
    task: str
    prompt: str
    response: str
    kind: str | None = None  # "alignment" | "perception"; None: decided from the task name

    def __post_init__(self):
        check_kind(self.kind)

    @property
    def resolved_kind(self) -> str:
        return kind_for(self.task, self.kind)


def item_kind(item: JudgeItem) -> str:
    """The item's kind (its own, or the task-name rule when it has none)."""
    return kind_for(item.task, getattr(item, "kind", None))


@dataclass
class Verdict:
    label: str  # one of labels_for(task)
    confidence: float | None = None  # probability (or rule strength) of ``label``, in [0, 1]
    probs: dict[str, float] | None = None
    reason: str | None = None  # a short why: which rule fired, what the classifier leaned on, an unparsable reply


class Judge(ABC):
    name: str = "judge"

    @abstractmethod
    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        """One verdict per item, in order."""

    def describe(self) -> dict:
        return {"name": self.name}
