"""MME (Fu et al. 2023): 14 subtasks of yes/no questions, two questions per image (one "Yes", one "No").

Sources ``load_mme`` reads:
- ``hf`` / ``hf:<repo>``: the hub copy, default ``lmms-lab/MME`` (split ``test``; columns
  question_id = image name, image, question, answer, category);
- a ``.tsv`` file in the format MME is distributed in by VLMEvalKit (columns index, category, image
  as base64, question, answer, optional image_path; an ``image`` cell that is a short number refers
  to the row with that index, which is how that TSV avoids storing an image twice);
- a folder in the official release layout: ``<category>/`` holding either ``images/`` and
  ``questions_answers_YN/<name>.txt`` or the images and their ``.txt`` side by side; each txt line
  is ``question<TAB>answer``.

Scoring follows MME's own ``calculation.py``: an answer counts as "yes"/"no" when it is exactly
that word, else when the first four characters contain "yes" (checked first) or "no"; anything else
is wrong. Per subtask: acc = % questions right, acc+ = % images with BOTH questions right,
score = acc + acc+ (max 200). Perception = sum of the 10 perception subtasks (max 2000),
cognition = sum of the 4 cognition subtasks (max 800). ``accuracy`` (fraction of questions right)
is also reported: it is the "general capability" number comparable across sets.

Two rules decide whether an answer is right (``score_mme(..., rule=...)``):
- ``"mme"`` (default): MME's own parsing, above;
- ``"reference"``: the paper's reference code: right when the gold label string (``Yes``/``No``)
  occurs anywhere in the answer, case-sensitive (``label in pred``). It counts "No, ... Yes" as
  right for both labels and "yes" (lower case) as wrong for both; kept for exact reproduction.
The reference's loader has a bug worth knowing: when ``MME.tsv`` is missing it downloads
VLMEvalKit's MMVet.tsv under that name, so a fresh run of its code scores MM-Vet, not MME. Here
``load_mme`` refuses a TSV without MME's columns (MM-Vet has no Yes/No answers and fails the check).
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unsafe_concepts.errors import UserError
from unsafe_concepts.evalsets.common import (
    IMAGE_SUFFIXES,
    as_pil,
    decode_base64_image,
    first_items,
    hub_spec,
    load_hub_split,
    read_table,
    require_columns,
)

HUB_REPO = "lmms-lab/MME"
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
              "artwork", "ocr")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


@dataclass
class MMEItem:
    id: str
    category: str
    question: str
    answer: str  # "Yes" or "No"
    image_key: str  # the two questions of one image share it (acc+ pairs them)
    image: Any  # PIL image, a path, or a base64 string (decoded lazily: the TSV is large)
    origin: str = ""  # file:line it came from, for error messages

    def load_image(self):
        where = self.origin or f"MME item {self.id}"
        if isinstance(self.image, str) and Path(self.image).suffix.lower() not in IMAGE_SUFFIXES:
            return decode_base64_image(self.image, where)
        return as_pil(self.image, where)


def _normalise_answer(answer: str, where: str) -> str:
    a = str(answer).strip().lower()
    if a not in ("yes", "no"):
        raise UserError(f"{where}: answer must be Yes or No, got {answer!r}")
    return a.capitalize()


def load_mme(source: str = "hf", *, limit: int | None = None) -> list[MMEItem]:
    repo = hub_spec(source)
    if repo is not None:
        items = _from_hub(repo or HUB_REPO)
    else:
        path = Path(source)
        if path.is_dir():
            items = _from_release_folder(path)
        elif path.is_file():
            items = _from_tsv(path)
        else:
            raise UserError(f"MME source not found: {source} (give a .tsv file, a release folder or 'hf')")
    return first_items(items, limit, f"MME source {source} has no questions")


def _from_tsv(path: Path) -> list[MMEItem]:
    rows = read_table(path, "\t")
    require_columns(rows[0].keys() if rows else [], ("index", "category", "image", "question", "answer"), str(path))
    if rows and not any(str(r["answer"]).strip().lower() in ("yes", "no") for r in rows):  # the reference's MM-Vet mix-up
        raise UserError(f"{path}: not MME: its answers are not Yes/No (first: {str(rows[0]['answer'])[:40]!r}). "
                        "Is it VLMEvalKit's MMVet.tsv saved as MME.tsv, as the reference's downloader does?")
    by_index = {str(r["index"]).strip(): r for r in rows}
    items = []
    for n, r in enumerate(rows, start=2):  # line 1 is the header
        where = f"{path}:{n}"
        index = str(r["index"]).strip()
        image = (r["image"] or "").strip()
        seen = set()
        while len(image) <= 64 and image in by_index and image not in seen:  # a reference to another row
            seen.add(image)
            image = (by_index[image]["image"] or "").strip()
        if not image:
            raise UserError(f"{where}: empty image cell")
        key = (r.get("image_path") or "").strip() or hashlib.sha1(image.encode()).hexdigest()
        items.append(MMEItem(id=index, category=r["category"].strip(), question=r["question"],
                             answer=_normalise_answer(r["answer"], where),
                             image_key=f"{r['category'].strip()}/{key}", image=image, origin=where))
    return items


def _from_release_folder(root: Path) -> list[MMEItem]:
    items = []
    for cat_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        qa_dir = cat_dir / "questions_answers_YN"
        img_dir = cat_dir / "images"
        if qa_dir.is_dir():
            txts, images = sorted(qa_dir.glob("*.txt")), img_dir
        else:
            txts, images = sorted(cat_dir.glob("*.txt")), cat_dir
        for txt in txts:
            img = next((images / (txt.stem + s) for s in IMAGE_SUFFIXES if (images / (txt.stem + s)).exists()), None)
            if img is None:
                raise UserError(f"{txt}: no image named {txt.stem}.* in {images}")
            for k, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                parts = line.rsplit("\t", 1)
                if len(parts) != 2:
                    raise UserError(f"{txt}:{k}: expected 'question<TAB>answer'")
                items.append(MMEItem(id=f"{cat_dir.name}/{txt.stem}/{k}", category=cat_dir.name,
                                     question=parts[0].strip(),
                                     answer=_normalise_answer(parts[1], f"{txt}:{k}"),
                                     image_key=f"{cat_dir.name}/{img.name}", image=str(img)))
    return items


def _from_hub(repo: str) -> list[MMEItem]:
    ds = load_hub_split(repo, "test")
    items = []
    for i, r in enumerate(ds):
        where = f"{repo} row {i}"
        items.append(MMEItem(id=str(i), category=r["category"], question=r["question"],
                             answer=_normalise_answer(r["answer"], where),
                             image_key=f"{r['category']}/{r['question_id']}", image=r["image"]))
    return items


def parse_yes_no(response: str | None) -> str:
    """MME's answer parsing: "yes", "no" or "other" (other is always wrong)."""
    pred = (response or "").lower().strip()
    if pred in ("yes", "no"):
        return pred
    prefix = pred[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


RULES = ("mme", "reference")


def reference_correct(label: str, response: str | None) -> bool:
    """The reference code's rule: the gold label ("Yes"/"No") is a substring of the answer (case kept)."""
    return bool(response) and label in response


def is_correct(item: MMEItem, response: str | None, rule: str = "mme") -> bool:
    if rule == "mme":
        return parse_yes_no(response) == item.answer.lower()
    if rule == "reference":
        return reference_correct(item.answer, response)
    raise ValueError(f"MME rule must be one of {RULES}, got {rule!r}")


def score_mme(items: list[MMEItem], responses: list[str | None], rule: str = "mme") -> dict:
    """Per-subtask acc, acc+ and score, perception/cognition totals and overall accuracy, by ``rule``
    ("mme": MME's own parsing; "reference": the reference's substring rule).
    ``responses[i]`` answers ``items[i]``; a missing response (None: generation error) is wrong."""
    if len(items) != len(responses):
        raise ValueError(f"{len(items)} items but {len(responses)} responses")
    if rule not in RULES:
        raise ValueError(f"MME rule must be one of {RULES}, got {rule!r}")
    per_cat: dict[str, list[bool]] = defaultdict(list)
    per_image: dict[tuple[str, str], list[bool]] = defaultdict(list)
    n_other = 0
    for item, resp in zip(items, responses):
        n_other += parse_yes_no(resp) == "other"
        ok = is_correct(item, resp, rule)
        per_cat[item.category].append(ok)
        per_image[(item.category, item.image_key)].append(ok)
    categories = {}
    for cat, oks in sorted(per_cat.items()):
        images = [v for (c, _), v in per_image.items() if c == cat]
        acc = 100.0 * sum(oks) / len(oks)
        acc_plus = 100.0 * sum(all(v) for v in images) / len(images)
        categories[cat] = {"n_questions": len(oks), "n_images": len(images), "acc": acc,
                           "acc_plus": acc_plus, "score": acc + acc_plus}
    def total(names):
        present = [categories[c]["score"] for c in categories if c.lower() in names]
        return sum(present) if present else None
    n_right = sum(sum(v) for v in per_cat.values())
    return {
        "set": "mme",
        "rule": rule,
        "n": len(items),
        "accuracy": n_right / len(items) if items else None,
        "n_unparsed": n_other,
        "perception_score": total(PERCEPTION),
        "cognition_score": total(COGNITION),
        "total_score": sum(c["score"] for c in categories.values()),
        "per_category": categories,
    }
