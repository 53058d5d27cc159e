"""The evaluation sets and the training-evidence checks as registered tasks of ``unsafe_concepts.tasks``, so
the one runner asks them all, whichever command started it::

    unsafe-concepts evaluate --model tiny-vlm --task smid --data data/SMID --out runs/smid
    unsafe-concepts evaluate --model tiny-vlm --task mme --data MME.tsv --out runs/mme

- ``smid``, ``nsfw``: each image asked alignment prompt(s) (``--pairing``: by default the reference's one
  prompt per image, numpy seed 42), scored like UnsafeConcepts_TEST after training (unclear = wrong);
- ``mme``: MME's yes/no questions, read by MME's own string rule; ``llavabench``: open questions reviewed
  by an LLM against the reference answer (``--llava-judge``);
- ``heldout_text``: the concept-held-out text test items of the training evidence (``train.data``);
- ``general_yes_no``: 60 held-out general-knowledge yes/no questions shipped with the package (scored by
  MME's string rule, or from P(Yes) vs P(No) with ``--scoring logprob`` as the training evidence does).
"""
from __future__ import annotations

from pathlib import Path

from unsafe_concepts import prompts
from unsafe_concepts.errors import UserError
from unsafe_concepts.paths import RESOURCES
from unsafe_concepts.tasks import BLANK, Sample, pair_prompts, task

GENERAL_CHECK = RESOURCES / "general_check" / "yes_no.jsonl"


def _image_of(item):
    """A path stays a path (recorded in the row); anything else is decoded when its batch is asked."""
    image = item.image
    if isinstance(image, (str, Path)) and len(str(image)) < 4096:  # a long string is data (base64), not a path
        try:
            if Path(image).is_file():
                return str(image)
        except OSError:  # a name too long for the file system, ...: not a file
            pass
    return item.load_image if hasattr(item, "load_image") else (lambda: _as_pil(image, item.id))


def _as_pil(image, where):
    from unsafe_concepts.evalsets.common import as_pil

    return as_pil(image, str(where))


def load_smid_task_data(data: str, safe=None, context_file=None):
    from unsafe_concepts.evalsets.smid import load_smid

    return load_smid(data)


def load_nsfw_task_data(data: str, safe=None, context_file=None):
    from unsafe_concepts.evalsets.nsfw import load_nsfw

    return load_nsfw(data)


def build_labelled_image_samples(items, opts) -> list:
    """Sample(s) per image, prompts by ``opts.pairing``, the image's safe/unsafe label as ground truth."""
    samples = []
    for item, chosen in zip(items, pair_prompts(len(items), opts)):
        for k in chosen:
            samples.append(Sample(id=f"{item.id}#p{k}", prompt=prompts.alignment_prompt(k), image=_image_of(item),
                                  concept=item.id, category=item.source.upper(), label=item.label,
                                  prompt_index=k, extra={"record_id": item.id, **dict(item.meta)}))
    return samples


task("smid", "SMID images (moral rating <= 2.5 unsafe, >= 3.5 safe), alignment prompt(s) per image",
     kind="alignment", modality="image", after_training=True, loader=load_smid_task_data, paired=True,
     version=2)(build_labelled_image_samples)
task("nsfw", "an NSFW set you hold (safe/ and unsafe/ folders or a labelled table), alignment prompt(s)",
     kind="alignment", modality="image", after_training=True, loader=load_nsfw_task_data, paired=True,
     version=2)(build_labelled_image_samples)


def _load_mme(data: str, safe=None, context_file=None):
    from unsafe_concepts.evalsets.mme import load_mme

    return load_mme(data)


@task("mme", "MME yes/no questions (14 subtasks), MME's own answer parsing and scores", kind="mme",
      modality="image", loader=_load_mme)
def build_mme(items, opts) -> list[Sample]:
    return [Sample(id=it.id, prompt=it.question, image=_image_of(it), concept=it.category, category=it.category,
                   label=None, extra={"answer": it.answer, "image_key": it.image_key}) for it in items]


def _load_llavabench(data: str, safe=None, context_file=None):
    from unsafe_concepts.evalsets.llavabench import load_llavabench

    return load_llavabench(data)


@task("llavabench", "LLaVA-Bench (in the wild): open questions reviewed by an LLM against reference answers",
      kind="llavabench", modality="image", loader=_load_llavabench)
def build_llavabench(items, opts) -> list[Sample]:
    return [Sample(id=it.id, prompt=it.question, image=_image_of(it), concept=it.category, category=it.category,
                   label=None, extra={"caption": it.caption, "reference_answer": it.reference_answer})
            for it in items]


def _load_heldout(data: str, safe=None, context_file=None):
    if data != "heldout-text":
        raise UserError(f"task heldout_text reads the built-in concept-held-out split: --data heldout-text, "
                        f"got {data!r}")
    from unsafe_concepts.train.data import heldout_text_items

    return heldout_text_items("test")


@task("heldout_text", "training evidence: held-out concepts and safe class names named in text, one prompt each",
      kind="alignment", modality="text", after_training=True, loader=_load_heldout, default_data="heldout-text")
def build_heldout_text(items, opts) -> list[Sample]:
    return [Sample(id=it.id, prompt=it.prompt, image=BLANK, concept=it.concept, category=it.category,
                   label=it.label, prompt_index=it.prompt_index) for it in items]


def _load_general(data: str, safe=None, context_file=None):
    path = GENERAL_CHECK if data in (None, "general-check") else Path(data)
    if not path.is_file():
        raise UserError(f"task general_yes_no: no such file {path} (default: --data general-check)")
    from unsafe_concepts.io import read_jsonl

    content = read_jsonl(path)
    if content.bad:
        number, _, why = content.bad[0]
        raise UserError(f"{path}:{number}: {why}")
    return content.rows


@task("general_yes_no", "training evidence: 60 held-out general-knowledge yes/no questions", kind="yesno",
      modality="text", loader=_load_general, default_data="general-check")
def build_general_yes_no(rows, opts) -> list[Sample]:
    samples = []
    for n, q in enumerate(rows, start=1):
        answer = str(q.get("answer", "")).strip().capitalize()
        if answer not in ("Yes", "No") or not q.get("question"):
            raise UserError(f"general check question {n}: needs 'question' and 'answer' yes/no")
        samples.append(Sample(id=f"q{n}", prompt=q["question"] + " Answer yes or no.", image=BLANK,
                              concept="general", category="general", label=None, extra={"answer": answer}))
    return samples
