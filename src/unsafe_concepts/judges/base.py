"""The one interface every response judge implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

ALIGNMENT_LABELS = ("safe", "unsafe", "unclear")
PERCEPTION_LABELS = ("A", "B", "C", "D", "unclear")
UNCLEAR = "unclear"


def is_perception(task: str) -> bool:
    """Perception answers are option letters; every other task is a safe/unsafe verdict."""
    return task.startswith("perception")


def labels_for(task: str) -> tuple[str, ...]:
    return PERCEPTION_LABELS if is_perception(task) else ALIGNMENT_LABELS


@dataclass
class JudgeItem:
    task: str
    prompt: str
    response: str


@dataclass
class Verdict:
    label: str  # one of labels_for(task)
    confidence: float | None = None  # probability of ``label`` where the judge has one
    probs: dict[str, float] | None = None
    reason: str | None = None  # why (rule judge: which rule fired; llm judge: unparsable output)


class Judge(ABC):
    name: str = "judge"

    @abstractmethod
    def judge(self, items: list[JudgeItem]) -> list[Verdict]:
        """One verdict per item, in order."""

    def describe(self) -> dict:
        return {"name": self.name}
