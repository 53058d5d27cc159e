"""Response judges: free-form answers -> verdicts (safe/unsafe/unclear, or A-D/unclear).

``load_judge(name)`` names:
- ``rule``: the careful rule reader (pure Python);
- ``first-word``: the naive first-word baseline (for comparison only);
- ``classifier``: the default fine-tuned MiniLM judge (trained once at setup); ``classifier:<dir>``: a given one;
  on a CPU with bf16 units it reads in bfloat16 and re-reads close calls in float32 (the same verdicts);
- ``classifier-fp32[:<dir>]``: the same judge reading every answer in float32 (exact probabilities everywhere);
- ``ensemble[:<dir>]``: the rule's verdict where it reads an opening yes/no, the classifier elsewhere (faster);
- ``roberta-ref[:<path or hub id>]``: the paper's published RoBERTa judges (state-dict checkpoints);
- ``llm:<model spec>``: any model backend asked with a fixed rubric (e.g. ``llm:smollm2-135m``).
"""
from __future__ import annotations

from unsafe_concepts.errors import UserError
from unsafe_concepts.judges.base import (
    ALIGNMENT_LABELS,
    PERCEPTION_LABELS,
    UNCLEAR,
    Judge,
    JudgeItem,
    Verdict,
    is_perception,
    item_kind,
    kind_for,
    labels_for,
)

DEFAULT_JUDGE = "classifier"  # the one default of evaluate, judge apply, training rewards and the demo

JUDGE_NAMES = ("rule", "first-word", "classifier", "classifier:<dir>", "classifier-fp32[:<dir>]", "ensemble[:<dir>]",
               "roberta-ref[:<path or hub id>]", "llm:<model spec>")


def load_judge(name: str | None = None) -> Judge:
    """A judge by name (see the module docstring); ``None`` or "" is ``DEFAULT_JUDGE``."""
    name = (name or "").strip() or DEFAULT_JUDGE
    kind, _, arg = name.partition(":")
    if kind == "rule" and not arg:
        from unsafe_concepts.judges.rule import RuleJudge

        return RuleJudge()
    if kind == "first-word" and not arg:
        from unsafe_concepts.judges.first_word import FirstWordJudge

        return FirstWordJudge()
    if kind == "classifier":
        from unsafe_concepts.judges.classifier import ClassifierJudge, ensure_default_judge

        return ClassifierJudge.load(arg or ensure_default_judge())
    if kind == "classifier-fp32":
        from unsafe_concepts.judges.classifier import ClassifierJudge, ensure_default_judge

        return ClassifierJudge.load(arg or ensure_default_judge(), precision="float32")
    if kind == "ensemble":
        from unsafe_concepts.judges.classifier import ClassifierJudge, ensure_default_judge
        from unsafe_concepts.judges.ensemble import EnsembleJudge

        return EnsembleJudge(ClassifierJudge.load(arg or ensure_default_judge()))
    if kind == "roberta-ref":
        from unsafe_concepts.judges.roberta_ref import RobertaRefJudge

        return RobertaRefJudge.load(arg or None)
    if kind == "llm":
        if not arg:
            raise UserError("llm judge needs a model spec: llm:<model spec>, e.g. llm:smollm2-135m")
        from unsafe_concepts.judges.llm import LLMJudge

        return LLMJudge.from_spec(arg)
    raise UserError(f"unknown judge {name!r}: choose one of {', '.join(JUDGE_NAMES)}")


__all__ = ["ALIGNMENT_LABELS", "PERCEPTION_LABELS", "UNCLEAR", "DEFAULT_JUDGE", "Judge", "JudgeItem", "Verdict",
           "is_perception", "item_kind", "kind_for", "labels_for", "load_judge", "JUDGE_NAMES"]
