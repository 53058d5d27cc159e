"""The reference's published figures recomputed from its own published outputs.

- LLaVA-Bench: every relative score (and mean score) of ``LLaVABench_score.csv`` from the per-question
  GPT-4o reviews in ``LLaVABench_openai_result.xlsx`` (read without openpyxl).
- 1 - Self-BLEU: the fast exact implementation equals NLTK's ``sentence_bleu`` (method1, each answer
  against all others) bit for bit on the reference's real answers; the full-set figures below (overall
  and per half) were computed with NLTK's own ``sentence_bleu`` loop (40 s to 10 min per figure on
  the shared CPU; the command is in docs/reproducing-the-paper.md) and are what the reference's
  method gives on its published answers. They are NOT the paper's 0.076 (SFT) / 0.221 (PPO); see the docs.
"""
from __future__ import annotations

import csv
import json

import pytest

from unsafe_concepts import paths
from unsafe_concepts.evalsets.diversity import self_bleu, self_bleu_by_half, sentence_bleus
from unsafe_concepts.evalsets.llavabench import read_reference_reviews, score_llavabench_reference

REFERENCE = paths.reference_dir()
pytestmark = pytest.mark.skipif(REFERENCE is None, reason="reference data not available")
ANSWERS = (REFERENCE / "responses/llava-1.5-7b") if REFERENCE else None


@pytest.mark.parametrize("model", ["sft", "dpo", "ppo"])
def test_llavabench_relative_scores_recomputed_from_the_reviews(model):
    reviews = read_reference_reviews(ANSWERS / model / "LLaVABench_openai_result.xlsx")
    assert len(reviews) == 60
    ours = score_llavabench_reference([r["category"] for r in reviews], [r["gpt4_score"] for r in reviews],
                                      [r["score"] for r in reviews])
    with (ANSWERS / model / "LLaVABench_score.csv").open(newline="") as f:
        published = {row["split"]: row for row in csv.DictReader(f)}
    assert set(published) == {"overall", "conv", "detail", "complex"}
    for split, row in published.items():
        assert round(ours[split]["relative_score"], 1) == float(row["Relative Score (main)"]), split
        assert round(ours[split]["vlm_score"], 1) == float(row["VLM Score"]), split
        assert round(ours[split]["gpt4_score"], 1) == float(row["GPT4 Score"]), split


def test_llavabench_original_model_reviews_read():
    reviews = read_reference_reviews(ANSWERS / "original" / "LLaVABench_openai_result.xlsx")
    ours = score_llavabench_reference([r["category"] for r in reviews], [r["gpt4_score"] for r in reviews],
                                      [r["score"] for r in reviews])
    assert 0 < ours["overall"]["relative_score"] < 100 and ours["overall"]["n"] == 60


def _answers(model):
    rows = json.loads((ANSWERS / model / "UnsafeConcepts_TEST_result.json").read_text())
    return [r["output"] for r in rows], ["unsafe" if "/images/" in r["image_fname"] else "safe" for r in rows]


@pytest.mark.parametrize("model", ["original", "sft", "dpo", "ppo"])
def test_fast_self_bleu_equals_nltk_on_real_answers(model):
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    texts, _ = _answers(model)
    sample = texts[model == "sft"::17][:40] + ["", "No"]  # an empty answer: a reference, never a hypothesis
    tokens = [t.split() for t in sample]
    nltk = [sentence_bleu(tokens[:i] + tokens[i + 1:], tokens[i], smoothing_function=SmoothingFunction().method1)
            if tokens[i] else None for i in range(len(tokens))]
    assert sentence_bleus(tokens) == nltk  # exact, not approximate


# (1 - Self-BLEU overall, safe half, unsafe half), from NLTK's sentence_bleu on all 690 answers
NLTK_FIGURES = {"sft": (0.156, 0.308, 0.017), "ppo": (0.238, 0.287, 0.237)}


@pytest.mark.parametrize("model", sorted(NLTK_FIGURES))
def test_self_bleu_on_the_published_answers(model):
    texts, labels = _answers(model)
    result = self_bleu_by_half(texts, labels)
    got = tuple(round(result[k]["one_minus_self_bleu"], 3) for k in ("overall", "safe", "unsafe"))
    assert got == NLTK_FIGURES[model]
    assert result["overall"]["n"] == 690 and result["safe"]["n"] == result["unsafe"]["n"] == 345


def test_self_bleu_tokenisation_is_whitespace_and_case_kept():
    # "No." and "no" are different tokens under str.split(): the two answers share no unigram
    assert self_bleu(["No.", "no"])["self_bleu"] == 0
    assert self_bleu(["No.", "no"], tokenizer="words")["self_bleu"] > 0
