"""LLaVA-Bench (In-the-Wild): 60 open questions on 24 images, scored by an LLM judge against a
reference answer, exactly as the LLaVA repository does (``eval_gpt_review_bench.py`` +
``summarize_gpt_review.py``):

- the judge sees the image caption (the image "represented with a few sentences"), the question,
  Assistant 1 = the reference (GPT-4) answer and Assistant 2 = the model's answer, and must answer
  with a first line of two scores 1-10 "X Y";
- relative score = mean(model scores) / mean(reference scores) * 100, per category (conv, detail,
  complex) and over all questions (a ratio of means, not a mean of ratios, as LLaVA computes it).

Parsing is strict: the first line must hold exactly two numbers (comma or space separated). LLaVA
records an unparsable review as (-1, -1) and averages it in, which biases both means; here such
reviews are excluded from the means and counted in ``n_unparsed`` (reported next to the score).

The reference (TrustAIRLab/SaferVLM) scores with VLMEvalKit's LLaVA-Bench judge: GPT-4o, temperature
0.2, at most 1,024 tokens, the system prompt above (``REFERENCE_JUDGE``), and the relative score
sum(score) / sum(gpt4_score) over the questions (``score_llavabench_reference``; an unparsable review
enters as -1/-1 there, which is why the default scorer leaves it out and counts it instead).
``read_reference_reviews`` reads its published reviews (``LLaVABench_openai_result.xlsx``), and
``load_llavabench`` also reads its question sheet (``LLaVABench.xlsx``, with an image folder).

Sources: ``hf`` / ``hf:<repo>`` (default ``lmms-lab/llava-bench-in-the-wild``, split ``train``:
question_id, question, image, caption, gpt_answer, category) or a local folder in the release
layout: ``questions.jsonl`` (question_id, image, text, category), ``answers_gpt4.jsonl``
(question_id, text), ``context.jsonl`` (image, caption) and ``images/``.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unsafe_concepts.errors import UserError
from unsafe_concepts.evalsets.common import as_pil, first_items, hub_spec, load_hub_split
from unsafe_concepts.io import read_jsonl

HUB_REPO = "lmms-lab/llava-bench-in-the-wild"
CATEGORIES = ("conv", "detail", "complex")

JUDGE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
JUDGE_RUBRIC = (
    "We would like to request your feedback on the performance of two AI assistants in response to the "
    "user question displayed above. The user asks the question on observing an image. For your reference, "
    "the visual content in the image is represented with a few sentences describing the image. \n"
    "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
    "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall "
    "performance.\nPlease first output a single line containing only two values indicating the scores for "
    "Assistant 1 and 2, respectively. The two scores are separated by a space.\nIn the subsequent line, "
    "please provide a comprehensive explanation of your evaluation, avoiding any potential bias and "
    "ensuring that the order in which the responses were presented does not affect your judgment."
)


# The reference's judge call (VLMEvalKit's LLaVA-Bench settings, as the reference runs them).
REFERENCE_JUDGE = {"model": "gpt-4o", "temperature": 0.2, "max_tokens": 1024, "system": JUDGE_SYSTEM}


@dataclass
class LlavaBenchItem:
    id: str
    question: str
    category: str  # conv, detail or complex
    caption: str
    reference_answer: str
    image: Any

    def load_image(self):
        return as_pil(self.image, f"LLaVA-Bench item {self.id}")


def load_llavabench(source: str = "hf", *, limit: int | None = None) -> list[LlavaBenchItem]:
    repo = hub_spec(source)
    if repo is not None:
        repo = repo or HUB_REPO
        items = [LlavaBenchItem(id=str(r["question_id"]), question=r["question"], category=r["category"],
                                caption=r["caption"], reference_answer=r["gpt_answer"], image=r["image"])
                 for r in load_hub_split(repo, "train")]
    elif Path(source).suffix.lower() == ".xlsx":
        items = _from_question_sheet(Path(source))
    else:
        items = _from_folder(Path(source))
    return first_items(items, limit, f"LLaVA-Bench source {source} has no questions")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"LLaVA-Bench folder is missing {path.name}: {path}")
    content = read_jsonl(path)
    content.raise_if_bad(path)
    return content.rows


def _from_folder(root: Path) -> list[LlavaBenchItem]:
    if not root.is_dir():
        raise UserError(f"LLaVA-Bench source not found: {root} (a release folder or 'hf')")
    answers = {str(r["question_id"]): r["text"] for r in _read_jsonl(root / "answers_gpt4.jsonl")}
    captions = {r["image"]: r["caption"] for r in _read_jsonl(root / "context.jsonl")}
    items = []
    for n, q in enumerate(_read_jsonl(root / "questions.jsonl"), start=1):
        where = f"{root / 'questions.jsonl'}:{n}"
        missing = [k for k in ("question_id", "image", "text", "category") if k not in q]
        if missing:
            raise UserError(f"{where}: missing field(s) {missing}")
        qid = str(q["question_id"])
        if qid not in answers:
            raise UserError(f"{where}: question {qid} has no reference answer in answers_gpt4.jsonl")
        if q["image"] not in captions:
            raise UserError(f"{where}: image {q['image']} has no caption in context.jsonl")
        items.append(LlavaBenchItem(id=qid, question=q["text"], category=q["category"],
                                    caption=captions[q["image"]], reference_answer=answers[qid],
                                    image=str(root / "images" / q["image"])))
    return items


def _from_question_sheet(path: Path) -> list[LlavaBenchItem]:
    """The reference's ``LLaVABench.xlsx`` (index, question, image_path, category, caption, gpt4_ans);
    images are looked up in ``images/`` next to it, then beside it."""
    from unsafe_concepts.evalsets.common import read_xlsx, require_columns

    rows = read_xlsx(path)
    require_columns(rows[0].keys() if rows else [], ("index", "question", "image_path", "category", "caption",
                                                     "gpt4_ans"), str(path))
    items = []
    for n, r in enumerate(rows, start=2):
        name = str(r["image_path"] or "").strip()
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise UserError(f"{path}:{n}: image_path must be a plain file name, got {r['image_path']!r}")
        image = next((p for p in (path.parent / "images" / name, path.parent / name) if p.is_file()),
                     path.parent / "images" / name)
        items.append(LlavaBenchItem(id=str(r["index"]), question=str(r["question"]), category=str(r["category"]),
                                    caption=str(r["caption"] or ""), reference_answer=str(r["gpt4_ans"] or ""),
                                    image=str(image)))
    return items


def read_reference_reviews(path: str | Path) -> list[dict]:
    """The reference's GPT-4o reviews (``LLaVABench_openai_result.xlsx``): per question ``index``,
    ``category``, ``gpt4_score`` (the reference answer's score) and ``score`` (the model's), as numbers."""
    from unsafe_concepts.evalsets.common import read_xlsx, require_columns

    rows = read_xlsx(path)
    require_columns(rows[0].keys() if rows else [], ("index", "category", "gpt4_score", "score"), str(path))
    out = []
    for n, r in enumerate(rows, start=2):
        try:
            out.append({"index": str(r["index"]), "category": str(r["category"]),
                        "gpt4_score": float(r["gpt4_score"]), "score": float(r["score"])})
        except (TypeError, ValueError):
            raise UserError(f"{path}:{n}: gpt4_score and score must be numbers, got "
                            f"{r['gpt4_score']!r}, {r['score']!r}") from None
    return out


def score_llavabench_reference(categories: list[str], gpt4_scores: list[float], scores: list[float]) -> dict:
    """The reference's figures: per category and overall, relative score = 100 * sum(score) /
    sum(gpt4_score), plus the mean scores x 10 ("VLM Score", "GPT4 Score" in its summary CSV).
    Every row counts, an unparsed review included as the -1/-1 it was recorded as."""
    if not len(categories) == len(gpt4_scores) == len(scores):
        raise ValueError("categories, gpt4_scores and scores must have the same length")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(categories):
        groups["overall"].append(i)
        groups[c].append(i)
    out = {}
    for name, idx in groups.items():
        ref, model = sum(gpt4_scores[i] for i in idx), sum(scores[i] for i in idx)
        out[name] = {"n": len(idx), "relative_score": 100.0 * model / ref if ref else None,
                     "vlm_score": 10.0 * model / len(idx), "gpt4_score": 10.0 * ref / len(idx)}
    return out


def review_prompt(item: LlavaBenchItem, model_answer: str) -> str:
    """The judge's user message (LLaVA's layout; role "Assistant")."""
    return (f"[Context]\n{item.caption}\n\n[Question]\n{item.question}\n\n"
            f"[Assistant 1]\n{item.reference_answer}\n\n[End of Assistant 1]\n\n"
            f"[Assistant 2]\n{model_answer}\n\n[End of Assistant 2]\n\n[System]\n{JUDGE_RUBRIC}\n\n")


_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")


def parse_score_pair(review: str | None) -> tuple[float, float] | None:
    """First line "X Y" (or "X, Y") -> (reference score, model score); None when it is anything else."""
    if not review:
        return None
    first = review.strip().split("\n")[0].replace(",", " ").split()
    if len(first) != 2 or not all(_NUMBER.match(t) for t in first):
        return None
    return float(first[0]), float(first[1])


def judge_llavabench(items: list[LlavaBenchItem], answers: list[str | None], judge_model,
                     *, max_new_tokens: int = 256, settings: str = "greedy") -> list[str | None]:
    """Ask ``judge_model`` (any ModelBackend from ``models.registry.load_model``) to review each answer;
    returns the raw reviews (None where the judge call failed).

    ``settings="greedy"`` (default): greedy decoding, so that the review of a fixed pair does not depend
    on a sampling seed. ``settings="reference"``: the reference's call, temperature 0.2 and at most
    1,024 tokens (``REFERENCE_JUDGE``; use ``openai:gpt-4o`` as the judge model for its GPT-4o)."""
    from unsafe_concepts.models.base import GenerationConfig, Query

    if settings == "reference":
        config = GenerationConfig(max_new_tokens=REFERENCE_JUDGE["max_tokens"], do_sample=True,
                                  temperature=REFERENCE_JUDGE["temperature"], top_p=1.0)
    elif settings == "greedy":
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, temperature=1.0, top_p=1.0)
    else:
        raise UserError(f"LLaVA-Bench judge settings must be 'greedy' or 'reference', got {settings!r}")
    queries = [Query(id=i.id, prompt=f"{JUDGE_SYSTEM}\n\n{review_prompt(i, a or '')}") for i, a in zip(items, answers)]
    gens = judge_model.generate(queries, config)
    return [g.text for g in gens]


def score_llavabench(items: list[LlavaBenchItem], reviews: list[str | None]) -> dict:
    """Relative score per category and overall from the judge's reviews."""
    if len(items) != len(reviews):
        raise ValueError(f"{len(items)} items but {len(reviews)} reviews")
    pairs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    n_unparsed = 0
    for item, review in zip(items, reviews):
        pair = parse_score_pair(review)
        if pair is None:
            n_unparsed += 1
            continue
        pairs[item.category].append(pair)
        pairs["all"].append(pair)

    def summary(ps):
        ref = sum(p[0] for p in ps) / len(ps)
        model = sum(p[1] for p in ps) / len(ps)
        return {"n": len(ps), "relative_score": 100.0 * model / ref if ref else None,
                "reference_mean": ref, "model_mean": model}

    per_cat = {c: summary(ps) for c, ps in sorted(pairs.items()) if c != "all"}
    overall = summary(pairs["all"]) if pairs["all"] else None
    return {"set": "llavabench", "n": len(items), "n_unparsed": n_unparsed,
            "relative_score": overall["relative_score"] if overall else None,
            "overall": overall, "per_category": per_cat}
