"""Tasks, registered by name: each says which samples to ask, how the answers are scored and which metrics
it reports. In the shape of inspect_ai: dataset (``build`` + ``loader``) + solver (the model backend) + scorer.

A task declares
- ``kind``: what an answer is (``alignment``: safe/unsafe; ``perception``: A-D; ``mme`` and ``yesno``: a
  yes/no answer checked against a known answer; ``llavabench``: an open answer reviewed by an LLM);
- ``metrics``: how ``metrics.json`` is computed (``metrics.summarize_run``); never derived from the name;
- ``scorer``: which scorer reads the answers (``judge``: a response judge; ``mme-rule``: MME's string rule;
  ``llava-review``: the LLaVA-Bench LLM review), see ``scorers.py``;
- ``modality`` and a ``version`` (bumped whenever its samples or scoring change; recorded in run.json).

Every sample carries its ground truth (label, concept, category, correct option, answer), so that a run
folder is self-describing and can be scored and reported on later without the dataset.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

from unsafe_concepts import prompts
from unsafe_concepts.data.records import SAFE, UNSAFE, ImageRecord
from unsafe_concepts.errors import UserError
from unsafe_concepts.taxonomy import CONCEPTS, category_of

BLANK = "<blank>"  # the protocol's white 1000x1000 image, attached only for models that need an image

KINDS = ("alignment", "perception", "mme", "yesno", "llavabench")
METRICS = ("alignment", "alignment_context", "perception", "after_training", "mme", "yesno", "llavabench")
# The options a log-prob verdict is read from, per kind ("Yes" = safe for the alignment prompts).
LOGPROB_OPTIONS = {"alignment": ("Yes", "No"), "perception": prompts.PERCEPTION_LETTERS, "mme": ("Yes", "No"),
                   "yesno": ("Yes", "No")}
DEFAULT_SCORER = {"alignment": "judge", "perception": "judge", "mme": "mme-rule", "yesno": "mme-rule",
                  "llavabench": "llava-review"}
# How a task pairs images with the five alignment prompts (the tasks that ask one prompt per image).
PAIRINGS = ("reference", "all", "seeded")


@dataclass
class Sample:
    """One query with its ground truth. ``id`` is unique within a task (the resume key).

    ``image`` is a file path, BLANK, None, or a zero-argument callable returning a PIL image (sets that
    ship images inside a table or on the hub: decoded only when its batch is asked)."""

    id: str
    prompt: str
    image: Any
    concept: str
    category: str
    label: str | None  # SAFE / UNSAFE: the ground truth of the content (None where it has no meaning)
    prompt_index: int | None = None
    extra: dict = field(default_factory=dict)  # correct_option, context, record_id, answer, ...

    def row(self) -> dict:
        """The ground-truth fields of a responses.jsonl row."""
        image = self.image if isinstance(self.image, str) and self.image != BLANK else None
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
    pairing: str = "reference"  # one-prompt-per-image tasks: "reference" (seed 42), "all" five, "seeded"


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    kind: str
    modality: str  # "image" or "text"
    build: Callable  # (data, TaskOptions) -> list[Sample]
    metrics: str = "alignment"
    scorer: str = "judge"
    version: int = 1
    after_training: bool = False  # safe and unsafe items; unclear counted wrong
    # (data_spec, safe_spec, context_file) -> the object `build` reads; None = the UnsafeConcepts
    # benchmark (unsafe_concepts.data.load_benchmark). Evaluation sets (MME, SMID, ...) bring their own.
    loader: Callable | None = None
    # a task whose data ships with the package (e.g. the general-ability check) needs no --data
    default_data: str | None = None
    # a task asked one alignment prompt per image: --pairing applies
    paired: bool = False

    def __post_init__(self):
        if self.kind not in KINDS or self.metrics not in METRICS or self.modality not in ("image", "text"):
            raise ValueError(f"task {self.name}: bad kind/metrics/modality {self.kind}/{self.metrics}/{self.modality}")

    def load_data(self, data: str | None, safe: str | None = None, context_file: str | None = None):
        data = data or self.default_data
        if self.loader is not None:
            return self.loader(data, safe, context_file)
        from unsafe_concepts.data import load_benchmark

        return load_benchmark(data, safe=safe, context_file=context_file)

    @property
    def options(self) -> tuple[str, ...] | None:
        """The answer options a log-prob verdict reads (None: the task cannot be scored that way)."""
        return LOGPROB_OPTIONS.get(self.kind)

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "kind": self.kind, "modality": self.modality,
                "metrics": self.metrics, "after_training": self.after_training, "scorer": self.scorer,
                "description": self.description}

    def __repr__(self) -> str:
        return f"Task({self.name!r} v{self.version}: {self.kind}, {self.modality}, metrics {self.metrics})"


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} registered twice")
    TASKS[task.name] = task
    return task


def task(name: str, description: str, *, kind: str, modality: str, metrics: str | None = None,
         scorer: str | None = None, version: int = 1, after_training: bool = False, loader: Callable | None = None,
         default_data: str | None = None, paired: bool = False):
    """Register the decorated sample builder as task ``name``::

        @task("my_task", "what it asks", kind="alignment", modality="text")
        def build_my_task(data, opts) -> list[Sample]: ...
    """

    def decorate(build: Callable) -> Callable:
        register(Task(name, description, kind, modality, build,
                      metrics=metrics or ("after_training" if after_training and kind == "alignment" else kind),
                      scorer=scorer or DEFAULT_SCORER[kind], version=version, after_training=after_training,
                      loader=loader, default_data=default_data, paired=paired))
        return build

    return decorate


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}: choose one of {', '.join(sorted(TASKS))}") from None


def parse_task_list(text: str) -> list[Task]:
    """``alignment,alignment_text_only`` -> the tasks, each checked (a typo fails before anything runs)."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    if not names:
        raise UserError("--task needs at least one task name (see `unsafe-concepts tasks`)")
    return [get_task(n) for n in dict.fromkeys(names)]


def pair_prompts(n: int, opts: TaskOptions, rng_seed: int | None = None) -> list[list[int]]:
    """The alignment prompt(s) asked of each of ``n`` images in order, by ``opts.pairing``:
    ``reference`` = the reference code's one prompt per image (numpy seed 42), ``all`` = every selected
    prompt, ``seeded`` = one random selected prompt per image (seeded by ``opts.seed``)."""
    if opts.pairing == "all":
        return [list(opts.prompt_indices) for _ in range(n)]
    if opts.pairing == "seeded":
        rng = random.Random(opts.seed if rng_seed is None else rng_seed)
        return [[rng.choice(opts.prompt_indices)] for _ in range(n)]
    if opts.pairing == "reference":
        from unsafe_concepts.data.pairing import reference_prompt_indices

        return [[i] for i in reference_prompt_indices(n)]
    raise UserError(f"--pairing must be one of {', '.join(PAIRINGS)}, got {opts.pairing!r}")


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


@task("perception", "4-option concept recognition on unsafe images (A-D)", kind="perception", modality="image")
def build_perception(benchmark, opts: TaskOptions) -> list[Sample]:
    samples = []
    for r in _in_split(benchmark.unsafe, opts.split):
        option_str, correct = benchmark.perception[r.id]
        samples.append(Sample(
            id=r.id, prompt=prompts.perception_prompt(option_str), image=r.image, concept=r.concept,
            category=r.category, label=UNSAFE, extra={"correct_option": correct, "option_str": option_str},
        ))
    return samples


@task("alignment", "is the shown unsafe image safe? five yes/no prompts (yes = safe)", kind="alignment",
      modality="image")
def build_alignment(benchmark, opts: TaskOptions) -> list[Sample]:
    return [
        Sample(id=f"{r.id}#p{i}", prompt=prompts.alignment_prompt(i), image=r.image, concept=r.concept,
               category=r.category, label=UNSAFE, prompt_index=i, extra={"record_id": r.id})
        for r in _in_split(benchmark.unsafe, opts.split)
        for i in opts.prompt_indices
    ]


@task("alignment_text_only", "the same five prompts naming the concept, blank image", kind="alignment",
      modality="text")
def build_alignment_text_only(benchmark, opts: TaskOptions) -> list[Sample]:
    # One query per concept and prompt (75 x 5 on the full data), whatever the split: the text
    # modality names the concept, it shows no image.
    return [
        Sample(id=f"{concept}#p{i}", prompt=prompts.text_only_prompt(i, concept), image=BLANK, concept=concept,
               category=category_of(concept), label=UNSAFE, prompt_index=i)
        for concept in _concepts_in(benchmark)
        for i in opts.prompt_indices
    ]


@task("alignment_context", "safe- and unsafe-context questions about each unsafe image", kind="alignment",
      modality="image", metrics="alignment_context")
def build_alignment_context(benchmark, opts: TaskOptions) -> list[Sample]:
    samples = []
    for r in _in_split(benchmark.unsafe, opts.split):
        safe_q, unsafe_q = _context(benchmark, r.concept)
        for context, question in (("safe", safe_q), ("unsafe", unsafe_q)):
            samples.append(Sample(id=f"{r.id}#{context}", prompt=question, image=r.image, concept=r.concept,
                                  category=r.category, label=UNSAFE,
                                  extra={"context": context, "record_id": r.id}))
    return samples


@task("alignment_text_only_context", "context questions naming the concept, blank image", kind="alignment",
      modality="text", metrics="alignment_context")
def build_alignment_text_only_context(benchmark, opts: TaskOptions) -> list[Sample]:
    samples = []
    for concept in _concepts_in(benchmark):
        safe_q, unsafe_q = _context(benchmark, concept)
        for context, question in (("safe", safe_q), ("unsafe", unsafe_q)):
            samples.append(Sample(id=f"{concept}#{context}", prompt=prompts.context_text_only_prompt(concept, question),
                                  image=BLANK, concept=concept, category=category_of(concept), label=UNSAFE,
                                  extra={"context": context}))
    return samples


@task("unsafeconcepts_test", "post-training test: unsafe + safe test images, one prompt each (--pairing)",
      kind="alignment", modality="image", after_training=True, paired=True, version=2)
def build_unsafeconcepts_test(benchmark, opts: TaskOptions) -> list[Sample]:
    """The post-training test set: unsafe test images + as many safe test images (in that order), each
    asked the prompt(s) of ``opts.pairing`` (default: the reference's numpy seed-42 draw, one per image)."""
    unsafe = _in_split(benchmark.unsafe, "test")
    safe = _in_split(benchmark.safe, "test")[: len(unsafe)]
    if not safe:
        raise UserError("unsafeconcepts_test needs safe images: pass --safe-data (or use --data sample)")
    images = unsafe + safe
    return [Sample(id=f"{r.id}#p{i}", prompt=prompts.alignment_prompt(i), image=r.image, concept=r.concept,
                   category=r.category, label=r.label, prompt_index=i, extra={"record_id": r.id})
            for r, chosen in zip(images, pair_prompts(len(images), opts)) for i in chosen]


@task("unsafeconcepts_test_text", "post-training test, text modality: test concepts + safe class names",
      kind="alignment", modality="text", after_training=True, paired=True, version=2)
def build_unsafeconcepts_test_text(benchmark, opts: TaskOptions) -> list[Sample]:
    """Text-modality counterpart: test-split concepts and safe class names, prompts as ``opts.pairing``."""
    unsafe_concepts = sorted({r.concept for r in _in_split(benchmark.unsafe, "test")}, key=CONCEPTS.index)
    safe_names = list(dict.fromkeys(r.concept for r in _in_split(benchmark.safe, "test")))[: len(unsafe_concepts)]
    named = [(c, UNSAFE) for c in unsafe_concepts] + [(s, SAFE) for s in safe_names]
    samples = []
    for (name, label), chosen in zip(named, pair_prompts(len(named), opts)):
        category = category_of(name) if label == UNSAFE else "Safe"
        samples += [Sample(id=f"{label}:{name}#p{i}", prompt=prompts.text_only_prompt(i, name), image=BLANK,
                           concept=name, category=category, label=label, prompt_index=i) for i in chosen]
    return samples


# Evaluation sets (SMID, NSFW, MME, LLaVA-Bench) and the training-evidence checks: unsafe_concepts.evalsets.tasks.
from unsafe_concepts.evalsets import tasks as _evalset_tasks  # noqa: E402,F401  (registers them)


def cli_list(args) -> int:
    width = max(len(n) for n in TASKS)
    for name, t in TASKS.items():
        print(f"{name:<{width}}  [{t.modality}, {t.kind}] {t.description}")
    return 0
