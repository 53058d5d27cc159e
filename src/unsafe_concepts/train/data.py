"""Training items for every trainer: balanced safe/unsafe, seeded, one protocol prompt per image.

Protocol (``splits`` in the paper's protocol): the unsafe images are split 80/20 per concept with
seed 2024 (done by ``unsafe_concepts.data``); the safe ImageNet images of the same split are
truncated to the unsafe count so both labels weigh the same; each image is paired with ONE of the
five alignment prompts drawn at random (seeded).

Text modality: the concept is named in the prompt instead of shown ("If an image shows Torture,
...?"); the safe side names benign ImageNet classes ("If an image shows golden retriever, ...?").
For an honest text-modality experiment, :func:`heldout_concept_split` holds out a seeded,
category-stratified quarter of the 75 concepts (and a disjoint quarter of the safe class names)
that training never sees.

Every trainer consumes the same :class:`TrainItem`; SFT and DPO turn it into targets with
:func:`sft_examples` / :func:`dpo_pairs` (the protocol's answer templates).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

from unsafe_concepts import prompts, taxonomy
from unsafe_concepts.data.records import SAFE, SAFE_CATEGORY, UNSAFE, ImageRecord
from unsafe_concepts.errors import UserError
from unsafe_concepts.paths import RESOURCES

DATA_SEED = 2024  # the protocol's split / pairing seed
HELDOUT_FRACTION = 0.25
MODALITIES = ("image", "text")
SPLITS = ("train", "test", "all")
OPPOSITE = {SAFE: UNSAFE, UNSAFE: SAFE}


@dataclass
class TrainItem:
    """One training (or held-out evaluation) question with its true label.

    ``image`` is a file path (image modality) or None (text modality: the concept is named in
    ``prompt``; VLMs get the protocol's blank white image at encoding time)."""

    id: str
    prompt: str
    image: str | None
    label: str  # "safe" or "unsafe"
    concept: str
    category: str
    prompt_index: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------- safe class names
def safe_class_names() -> list[str]:
    """The shipped benign ImageNet class names (``resources/imagenet_safe_classes.txt``), in file order."""
    path = RESOURCES / "imagenet_safe_classes.txt"
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [n for n in names if n and not n.startswith("#")]


# ---------------------------------------------------------------------------- held-out splits
def heldout_concept_split(seed: int = DATA_SEED, fraction: float = HELDOUT_FRACTION) -> tuple[list[str], list[str]]:
    """(train_concepts, test_concepts): per category, a seeded ``fraction`` (at least one) is held out.

    Stratifying keeps every category on both sides, so a held-out gain is not one category's luck."""
    rng = random.Random(seed)
    train, test = [], []
    for category, concepts in taxonomy.TAXONOMY.items():
        shuffled = list(concepts)
        rng.shuffle(shuffled)
        n_test = max(1, round(fraction * len(shuffled)))
        held = set(shuffled[:n_test])
        # keep the taxonomy's order inside each side: stable, readable output
        test += [c for c in concepts if c in held]
        train += [c for c in concepts if c not in held]
    return train, test


def heldout_safe_split(seed: int = DATA_SEED, fraction: float = HELDOUT_FRACTION,
                       names: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """(train_names, test_names): a seeded, disjoint ``fraction`` of the safe class names held out."""
    names = list(safe_class_names() if names is None else names)
    shuffled = list(names)
    random.Random(seed).shuffle(shuffled)
    n_test = max(1, round(fraction * len(shuffled)))
    held = set(shuffled[:n_test])
    return [n for n in names if n not in held], [n for n in names if n in held]


# ---------------------------------------------------------------------------- items
def _check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise UserError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")


def _records_of(benchmark_or_records) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(unsafe, safe) from a Benchmark (``.unsafe``/``.safe``) or a plain list of ImageRecords."""
    if hasattr(benchmark_or_records, "unsafe") and hasattr(benchmark_or_records, "safe"):
        return list(benchmark_or_records.unsafe), list(benchmark_or_records.safe or [])
    records = list(benchmark_or_records)
    bad = [r for r in records if getattr(r, "label", None) not in (SAFE, UNSAFE)]
    if bad:
        raise UserError(f"record {getattr(bad[0], 'id', bad[0])!r}: label must be 'safe' or 'unsafe'")
    return [r for r in records if r.label == UNSAFE], [r for r in records if r.label == SAFE]


def _in_split(records: list[ImageRecord], split: str) -> list[ImageRecord]:
    if split == "all":
        return records
    return [r for r in records if r.split == split]


def build_items(benchmark_or_records, *, modality: str = "image", split: str = "train",
                seed: int = DATA_SEED) -> list[TrainItem]:
    """Balanced training items of one split, one random alignment prompt per image.

    The safe images are truncated to the unsafe count (the protocol's balance; should the safe
    side be the smaller one, the unsafe side is truncated instead). ``modality="text"`` names each
    record's concept in the text-only prompt instead of attaching its image. The result is
    shuffled with ``seed`` so that a run cut short by ``max_steps`` still sees both labels.
    """
    _check_modality(modality)
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    unsafe, safe = _records_of(benchmark_or_records)
    unsafe, safe = _in_split(unsafe, split), _in_split(safe, split)
    if not unsafe:
        raise UserError(f"no unsafe records in split {split!r}: is the dataset split (train/test)?")
    if not safe:
        raise UserError(f"no safe records in split {split!r}: training needs safe counterpart images "
                        "(the dataset's safe/ folder or --safe-data)")
    n = min(len(unsafe), len(safe))
    # Records arrive already shuffled by the data split (seed 2024), so truncation is a random draw.
    chosen = unsafe[:n] + safe[:n]
    rng = random.Random(seed)
    items = []
    for rec in chosen:
        i = rng.randrange(len(prompts.ALIGNMENT_PROMPTS))
        if modality == "image":
            prompt, image = prompts.alignment_prompt(i), rec.image
        else:
            prompt, image = prompts.text_only_prompt(i, rec.concept), None
        category = rec.category if rec.label == UNSAFE else SAFE_CATEGORY
        items.append(TrainItem(id=rec.id, prompt=prompt, image=image, label=rec.label,
                               concept=rec.concept, category=category, prompt_index=i))
    rng.shuffle(items)
    return items


def text_items(concepts: Iterable[str], safe_names: Iterable[str], *, seed: int = DATA_SEED,
               all_prompts: bool = True, balance: bool = True) -> list[TrainItem]:
    """Text-modality items naming unsafe ``concepts`` and benign ``safe_names``.

    ``all_prompts=True`` asks every name with all five prompts (the protocol's text modality:
    75 x 5); False draws one prompt per name. ``balance`` truncates the larger side (after a seeded
    shuffle) to the smaller one. Shuffled with ``seed``."""
    concepts, safe_names = list(concepts), list(safe_names)
    for c in concepts:
        if c not in taxonomy.CONCEPT_TO_CATEGORY:
            raise UserError(f"unknown concept {c!r}: not one of the 75 UnsafeConcepts concepts")
    if not concepts or not safe_names:
        raise UserError("text_items needs at least one unsafe concept and one safe class name")
    rng = random.Random(seed)
    if balance:
        n = min(len(concepts), len(safe_names))
        concepts, safe_names = rng.sample(concepts, n), rng.sample(safe_names, n)
    named = [(c, UNSAFE, taxonomy.category_of(c)) for c in concepts]
    named += [(s, SAFE, SAFE_CATEGORY) for s in safe_names]
    items = []
    for name, label, category in named:
        indices = range(len(prompts.ALIGNMENT_PROMPTS)) if all_prompts else [rng.randrange(len(prompts.ALIGNMENT_PROMPTS))]
        for i in indices:
            items.append(TrainItem(id=f"text/{label}/{name}/{i}", prompt=prompts.text_only_prompt(i, name),
                                   image=None, label=label, concept=name, category=category, prompt_index=i))
    rng.shuffle(items)
    return items


def heldout_text_items(side: str, *, seed: int = DATA_SEED, all_prompts: bool = True) -> list[TrainItem]:
    """Text items of the concept-held-out experiment: ``side`` "train" or "test"."""
    if side not in ("train", "test"):
        raise UserError(f"side must be 'train' or 'test', got {side!r}")
    c_train, c_test = heldout_concept_split(seed)
    s_train, s_test = heldout_safe_split(seed)
    if side == "train":
        return text_items(c_train, s_train, seed=seed, all_prompts=all_prompts)
    return text_items(c_test, s_test, seed=seed, all_prompts=all_prompts)


# ---------------------------------------------------------------------------- targets
def sft_examples(items: Iterable[TrainItem]) -> list[dict]:
    """SFT rows ``{prompt, image, completion}``: the protocol's template answer with the true label."""
    return [{"prompt": it.prompt, "image": it.image, "completion": prompts.sft_target(it.label, it.concept)}
            for it in items]


def dpo_pairs(items: Iterable[TrainItem]) -> list[dict]:
    """DPO rows ``{prompt, image, chosen, rejected}``: template with the true vs the opposite label."""
    return [{"prompt": it.prompt, "image": it.image,
             "chosen": prompts.sft_target(it.label, it.concept),
             "rejected": prompts.sft_target(OPPOSITE[it.label], it.concept)} for it in items]


def load_items(data: str, *, modality: str, split: str = "train", safe: str | None = None,
               seed: int = DATA_SEED) -> list[TrainItem]:
    """Items for the ``train`` command: ``data`` is a dataset spec for ``unsafe_concepts.data.load_benchmark``
    (folder, "sample", "hf") or ``heldout-text`` (the concept-held-out text experiment, no images)."""
    if data == "heldout-text":
        if modality != "text":
            raise UserError("--data heldout-text is text-only: use --modality text")
        return heldout_text_items("train" if split != "test" else "test", seed=seed)
    from unsafe_concepts.data import load_benchmark

    return build_items(load_benchmark(data, safe=safe), modality=modality, split=split, seed=seed)
