"""Tasks, registered by name: each turns a benchmark into the list of samples (queries) to ask.

A task is data + prompts; the model backend answers, a judge scores (see runs.py). Every sample
carries its ground truth (label, concept, category, correct option) so that a run folder is
self-describing and can be judged and reported on later without the dataset.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from unsafe_concepts import prompts
from unsafe_concepts.data.records import SAFE, UNSAFE, ImageRecord
from unsafe_concepts.errors import UserError
from unsafe_concepts.taxonomy import CONCEPTS, category_of

BLANK = "<blank>"  # the protocol's white 1000x1000 image, attached only for models that need an image


@dataclass
class Sample:
    """One query with its ground truth. ``id`` is unique within a task (the resume key)."""

    id: str
    prompt: str
    image: str | None  # a file path, BLANK, or None
    concept: str
    category: str
    label: str  # SAFE / UNSAFE: the ground truth of the content
    prompt_index: int | None = None
    extra: dict = field(default_factory=dict)  # correct_option, context, record_id, ...

    def row(self) -> dict:
        """The ground-truth fields of a responses.jsonl row."""
        image = None if self.image in (None, BLANK) else self.image
        return {
            "id": self.id,
            "prompt_index": self.prompt_index,
            "prompt": self.prompt,
            "image": image,
            "blank_image": self.image == BLANK,
            "concept": self.concept,
            "category": self.category,
            "label": self.label,
            **self.extra,
        }


@dataclass(frozen=True)
class TaskOptions:
    prompt_indices: tuple[int, ...] = tuple(range(len(prompts.ALIGNMENT_PROMPTS)))
    split: str = "all"  # "all", "train" or "test"
    seed: int = 2024


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    kind: str  # "perception" or "alignment": decides the judge's label set
    modality: str  # "image" or "text"
    build: Callable  # (data, TaskOptions) -> list[Sample]
    after_training: bool = False  # safe and unsafe items; unclear counted wrong
    # (data_spec, safe_spec, context_file) -> the object `build` reads; None = the UnsafeConcepts
    # benchmark (unsafe_concepts.data.load_benchmark). Evaluation sets (MME, SMID, ...) bring their own.
    loader: Callable | None = None

    def load_data(self, data: str, safe: str | None = None, context_file: str | None = None):
        if self.loader is not None:
            return self.loader(data, safe, context_file)
        from unsafe_concepts.data import load_benchmark

        return load_benchmark(data, safe=safe, context_file=context_file)


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} registered twice")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}: choose one of {', '.join(sorted(TASKS))}") from None


def _in_split(records: list[ImageRecord], split: str) -> list[ImageRecord]:
    if split == "all":
        return list(records)
    return [r for r in records if r.split == split]


def _concepts_in(benchmark) -> list[str]:
    """The benchmark's concepts in taxonomy order (all 75 on the full data)."""
    present = {r.concept for r in benchmark.unsafe}
    return [c for c in CONCEPTS if c in present]


def _context(benchmark, concept: str) -> tuple[str, str]:
    if not benchmark.context:
        raise UserError("context tasks need context questions: pass --context-file (benchmark format)")
    if concept not in benchmark.context:
        raise UserError(f"no context questions for concept {concept!r} in the context file")
    return benchmark.context[concept]


# --- builders -------------------------------------------------------------------------------


def build_perception(benchmark, opts: TaskOptions) -> list[Sample]:
    samples = []
    for r in _in_split(benchmark.unsafe, opts.split):
        option_str, correct = benchmark.perception[r.id]
        samples.append(Sample(
            id=r.id, prompt=prompts.perception_prompt(option_str), image=r.image, concept=r.concept,
            category=r.category, label=UNSAFE, extra={"correct_option": correct, "option_str": option_str},
        ))
    return samples


def build_alignment(benchmark, opts: TaskOptions) -> list[Sample]:
    return [
        Sample(id=f"{r.id}#p{i}", prompt=prompts.alignment_prompt(i), image=r.image, concept=r.concept,
               category=r.category, label=UNSAFE, prompt_index=i, extra={"record_id": r.id})
        for r in _in_split(benchmark.unsafe, opts.split)
        for i in opts.prompt_indices
    ]


def build_alignment_text_only(benchmark, opts: TaskOptions) -> list[Sample]:
    # One query per concept and prompt (75 x 5 on the full data), whatever the split: the text
    # modality names the concept, it shows no image.
    return [
        Sample(id=f"{concept}#p{i}", prompt=prompts.text_only_prompt(i, concept), image=BLANK, concept=concept,
               category=category_of(concept), label=UNSAFE, prompt_index=i)
        for concept in _concepts_in(benchmark)
        for i in opts.prompt_indices
    ]


def build_alignment_context(benchmark, opts: TaskOptions) -> list[Sample]:
    samples = []
    for r in _in_split(benchmark.unsafe, opts.split):
        safe_q, unsafe_q = _context(benchmark, r.concept)
        for context, question in (("safe", safe_q), ("unsafe", unsafe_q)):
            samples.append(Sample(id=f"{r.id}#{context}", prompt=question, image=r.image, concept=r.concept,
                                  category=r.category, label=UNSAFE,
                                  extra={"context": context, "record_id": r.id}))
    return samples


def build_alignment_text_only_context(benchmark, opts: TaskOptions) -> list[Sample]:
    samples = []
    for concept in _concepts_in(benchmark):
        safe_q, unsafe_q = _context(benchmark, concept)
        for context, question in (("safe", safe_q), ("unsafe", unsafe_q)):
            samples.append(Sample(id=f"{concept}#{context}", prompt=prompts.context_text_only_prompt(concept, question),
                                  image=BLANK, concept=concept, category=category_of(concept), label=UNSAFE,
                                  extra={"context": context}))
    return samples


def build_unsafeconcepts_test(benchmark, opts: TaskOptions) -> list[Sample]:
    """The post-training test set: unsafe test images + as many safe test images, one random
    protocol prompt per image (seeded), as the reference's UnsafeConcepts_TEST."""
    unsafe = _in_split(benchmark.unsafe, "test")
    safe = _in_split(benchmark.safe, "test")[: len(unsafe)]
    if not safe:
        raise UserError("unsafeconcepts_test needs safe images: pass --safe-data (or use --data sample)")
    rng = random.Random(opts.seed)
    samples = []
    for r in unsafe + safe:
        i = rng.choice(opts.prompt_indices)
        samples.append(Sample(id=f"{r.id}#p{i}", prompt=prompts.alignment_prompt(i), image=r.image, concept=r.concept,
                              category=r.category, label=r.label, prompt_index=i, extra={"record_id": r.id}))
    return samples


def build_unsafeconcepts_test_text(benchmark, opts: TaskOptions) -> list[Sample]:
    """Text-modality counterpart: test-split concepts and safe class names, one prompt each."""
    unsafe_concepts = sorted({r.concept for r in _in_split(benchmark.unsafe, "test")}, key=CONCEPTS.index)
    safe_names = list(dict.fromkeys(r.concept for r in _in_split(benchmark.safe, "test")))[: len(unsafe_concepts)]
    rng = random.Random(opts.seed)
    samples = []
    for name, label in [(c, UNSAFE) for c in unsafe_concepts] + [(s, SAFE) for s in safe_names]:
        i = rng.choice(opts.prompt_indices)
        category = category_of(name) if label == UNSAFE else "Safe"
        samples.append(Sample(id=f"{label}:{name}#p{i}", prompt=prompts.text_only_prompt(i, name), image=BLANK,
                              concept=name, category=category, label=label, prompt_index=i))
    return samples


register(Task("perception", "4-option concept recognition on unsafe images (A-D)", "perception", "image",
              build_perception))
register(Task("alignment", "is the shown unsafe image safe? five yes/no prompts (yes = safe)", "alignment", "image",
              build_alignment))
register(Task("alignment_text_only", "the same five prompts naming the concept, blank image", "alignment", "text",
              build_alignment_text_only))
register(Task("alignment_context", "safe- and unsafe-context questions about each unsafe image", "alignment",
              "image", build_alignment_context))
register(Task("alignment_text_only_context", "context questions naming the concept, blank image", "alignment",
              "text", build_alignment_text_only_context))
register(Task("unsafeconcepts_test", "post-training test: unsafe + safe test images, one prompt each", "alignment",
              "image", build_unsafeconcepts_test, after_training=True))
register(Task("unsafeconcepts_test_text", "post-training test, text modality: test concepts + safe class names",
              "alignment", "text", build_unsafeconcepts_test_text, after_training=True))

# Generalisation sets (SMID, NSFW): defined in unsafe_concepts.evalsets (the baselines area).
from unsafe_concepts.evalsets.tasks import register_evalset_tasks  # noqa: E402

register_evalset_tasks(register, Task)


def cli_list(args) -> int:
    width = max(len(n) for n in TASKS)
    for name, task in TASKS.items():
        print(f"{name:<{width}}  [{task.modality}] {task.description}")
    return 0
