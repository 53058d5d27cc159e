"""SMID and NSFW as registered tasks of ``unsafe_concepts.tasks``, so the ordinary command works:

    unsafe-concepts evaluate --model tiny-vlm --task smid --data data/SMID --out runs/smid --judge classifier

Each image is asked the selected alignment prompts (default all five); the run is scored like
UnsafeConcepts_TEST after training (safe and unsafe halves, unclear counted wrong). MME and
LLaVA-Bench score differently (string match; an LLM judge) and run through
``unsafe_concepts.train.posteval`` instead.
"""
from __future__ import annotations

from pathlib import Path

from unsafe_concepts import prompts
from unsafe_concepts.errors import UserError


def load_smid_task_data(data: str, safe=None, context_file=None):
    from unsafe_concepts.evalsets.smid import load_smid

    return load_smid(data)


def load_nsfw_task_data(data: str, safe=None, context_file=None):
    from unsafe_concepts.evalsets.nsfw import load_nsfw

    return load_nsfw(data)


def build_labelled_image_samples(items, opts) -> list:
    """One Sample per (image, prompt) with the image's safe/unsafe label as ground truth."""
    from unsafe_concepts.tasks import Sample

    samples = []
    for item in items:
        if not isinstance(item.image, (str, Path)):
            raise UserError(f"{item.source} item {item.id}: the evaluate command needs image files "
                            "(use a local folder/table, or train.posteval for hub images)")
        for k in opts.prompt_indices:
            samples.append(Sample(id=f"{item.id}#p{k}", prompt=prompts.alignment_prompt(k), image=str(item.image),
                                  concept=item.id, category=item.source.upper(), label=item.label,
                                  prompt_index=k, extra=dict(item.meta)))
    return samples


def register_evalset_tasks(register, Task) -> None:
    """Called by ``unsafe_concepts.tasks`` with its ``register`` and ``Task``."""
    register(Task("smid", "SMID images (moral rating <= 2.5 unsafe, >= 3.5 safe), five alignment prompts",
                  "alignment", "image", build_labelled_image_samples, after_training=True,
                  loader=load_smid_task_data))
    register(Task("nsfw", "an NSFW set you hold (safe/ and unsafe/ folders or a labelled table), five prompts",
                  "alignment", "image", build_labelled_image_samples, after_training=True,
                  loader=load_nsfw_task_data))
