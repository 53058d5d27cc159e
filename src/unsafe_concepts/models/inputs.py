"""The one place that turns (prompt, image) into model inputs, for evaluation AND training.

``models/hf.py`` (answering queries) and ``train/common.py`` (encoding rollouts and training
rows) both call :func:`encode`, so a model is trained on exactly the token ids and pixel values
it is later evaluated on (tested in ``tests/models/test_inputs.py``). What is decided here:

- the prompt format: the processor's (or tokenizer's) chat template with the image first, as
  LLaVA expects; for a VLM family shipped without a template, the family's own format (see
  :data:`NO_TEMPLATE_FORMATS`); or, on request, the reference code's LLaVA v1 conversation
  (:data:`PROMPT_FORMATS`);
- BOS: a template that already starts with BOS does not get a second one (as transformers does);
- images: a path or PIL image becomes RGB; a missing image on a VLM becomes the protocol's blank
  white 1000x1000 image when the caller asks for it (text-only items, as the protocol shows them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from unsafe_concepts.errors import UserError

#: The system prompt of LLaVA's ``conv_vicuna_v1`` template (``llava/conversation.py``), which the
#: paper's reference code used for LLaVA-1.5. The llava-hf checkpoints' own chat template has none.
LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                   "The assistant gives helpful, detailed, and polite answers to the human's questions.")

#: ``--prompt-format`` values: how a prompt is wrapped before tokenisation.
PROMPT_FORMATS = {
    "auto": "the model's own chat template (image first); the family's format when it has none",
    "llava-v1": "the reference code's LLaVA v1 conversation: '<system> USER: <image>\\n<prompt> ASSISTANT:'",
}

#: VLM families whose checkpoints ship no chat template: how their prompts look.
#: "bare": the processor itself puts the image tokens in front (InstructBLIP's query tokens,
#: BLIP-2), and the prompt is the question alone, as the families' model cards and LAVIS ask;
#: anything else gets ``<image token><prompt>`` (e.g. PaliGemma, whose processor expands it).
NO_TEMPLATE_FORMATS = {"instructblip": "bare", "instructblipvideo": "bare", "blip-2": "bare"}
#: VLM families that cannot answer without an image (their generate needs pixel values): a text-only
#: query gets the protocol's blank white image, as the reference code showed text items to them.
IMAGE_REQUIRED = {"instructblip", "instructblipvideo", "blip-2"}

# The attribute a loaded processor carries its chosen prompt format under (set by the loader).
_FORMAT_ATTR = "unsafe_concepts_prompt_format"
_MODEL_TYPE_ATTR = "unsafe_concepts_model_type"


# ---------------------------------------------------------------------------- what the processor is


def is_vlm(processor) -> bool:
    """A VLM processor carries an image processor; a text model comes with a bare tokenizer."""
    return getattr(processor, "image_processor", None) is not None


def tokenizer_of(processor):
    return getattr(processor, "tokenizer", processor)


def configure(processor, *, prompt_format: str | None = None, model_type: str | None = None) -> None:
    """Record on the processor how prompts for its model are formatted (done once, by the loader).

    Everyone who later encodes with this processor (evaluation, the trainers, the attack) then
    builds the same inputs without passing the format around."""
    name = check_prompt_format(prompt_format, vlm=is_vlm(processor))
    setattr(processor, _FORMAT_ATTR, name)
    if model_type:
        setattr(processor, _MODEL_TYPE_ATTR, model_type)


def check_prompt_format(name: str | None, *, vlm: bool) -> str:
    """The format's name ("auto" for None), or a UserError naming the choices."""
    name = name or "auto"
    if name not in PROMPT_FORMATS:
        raise UserError(f"unknown --prompt-format {name!r}; choose one of: " + ", ".join(PROMPT_FORMATS))
    if name == "llava-v1" and not vlm:
        raise UserError("--prompt-format llava-v1 is LLaVA's conversation format: it needs a VLM")
    return name


def prompt_format(processor) -> str:
    return getattr(processor, _FORMAT_ATTR, "auto")


def image_token(processor) -> str:
    token = getattr(processor, "image_token", None) or "<image>"
    return getattr(token, "content", token)  # InstructBLIP keeps an AddedToken


# ---------------------------------------------------------------------------- prompt text


def chat_messages(prompt: str, *, with_image: bool, vlm: bool = True) -> list[dict]:
    """One user turn; for a VLM the image comes first, as LLaVA-style templates expect."""
    if vlm:
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
        return [{"role": "user", "content": content}]
    return [{"role": "user", "content": prompt}]


def chat_text(processor, prompt: str, *, with_image: bool) -> str:
    """The prompt as the model expects it, ending where the assistant's answer starts."""
    vlm = is_vlm(processor)
    if prompt_format(processor) == "llava-v1":
        image = image_token(processor) + "\n" if with_image else ""
        return f"{LLAVA_V1_SYSTEM} USER: {image}{prompt} ASSISTANT:"
    owner = processor if vlm else tokenizer_of(processor)
    if getattr(owner, "chat_template", None):
        return owner.apply_chat_template(chat_messages(prompt, with_image=with_image, vlm=vlm),
                                         add_generation_prompt=True, tokenize=False)
    if not vlm:
        return prompt  # a base LM without a chat template gets the bare prompt
    family = NO_TEMPLATE_FORMATS.get(_family(processor))
    if family == "bare" or not with_image:
        return prompt
    return image_token(processor) + prompt


def _family(processor) -> str | None:
    """The model type recorded by the loader; for a processor built by hand, guessed from its class."""
    recorded = getattr(processor, _MODEL_TYPE_ATTR, None)
    if recorded:
        return recorded
    name = type(processor).__name__.lower()
    if "instructblip" in name:
        return "instructblip"
    if "blip2" in name:
        return "blip-2"
    return None


# ---------------------------------------------------------------------------- images


def blank_image():
    """The protocol's blank white image, shown to VLMs with text-only items."""
    from unsafe_concepts.data import blank_image as _blank

    return _blank()


def load_image(image, *, what: str = "image"):
    """A path or PIL image as RGB; None -> the protocol's blank white image. Errors name ``what``."""
    if image is None:
        return blank_image()
    if isinstance(image, (str, Path)):
        from unsafe_concepts.data.records import load_rgb

        return load_rgb(image, what)
    try:
        return image.convert("RGB")
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"{what}: unreadable image: {e}") from None


# ---------------------------------------------------------------------------- encoding


def encode(processor, prompts: Sequence[str], images: Sequence[Any] | None = None, *,
           blank_for_missing: bool = False, max_length: int | None = None):
    """A left-padded batch: ``input_ids``, ``attention_mask`` (+ ``pixel_values`` etc. for a VLM).

    ``images``: one per prompt (a path, a PIL image or None) or None for none at all. On a VLM a
    None image means "no image" unless ``blank_for_missing`` (the protocol's text-only items:
    the blank white image) or the family cannot answer without one (:data:`IMAGE_REQUIRED`).
    A batch is either all-image or all-text (processors cannot mix).
    Text models ignore images. ``max_length`` left-truncates text-model prompts (training only)."""
    vlm = is_vlm(processor)
    n = len(prompts)
    if images is not None and len(images) != n:
        raise ValueError(f"{n} prompts but {len(images)} images")
    pil = None
    if vlm:
        given = list(images) if images is not None else [None] * n
        if blank_for_missing or _family(processor) in IMAGE_REQUIRED:
            given = [blank_image() if im is None else im for im in given]
        has = [im is not None for im in given]
        if any(has) and not all(has):
            raise ValueError("a batch mixes items with and without an image: encode them separately")
        pil = [load_image(im) for im in given] if all(has) and n else None
    texts = [chat_text(processor, p, with_image=pil is not None) for p in prompts]
    tok = tokenizer_of(processor)
    bos = tok.bos_token
    # As transformers does: a template that already starts with BOS must not get a second one.
    add_bos = not (bos and texts and texts[0].startswith(bos))
    kwargs = {"padding": True, "return_tensors": "pt", "add_special_tokens": add_bos}
    if vlm:
        inputs = processor(text=texts, images=[[im] for im in pil] if pil is not None else None, **kwargs)
        inputs.pop("labels", None)  # PaliGemma's processor adds training labels; the model input needs none
        return inputs
    if max_length:
        tok.truncation_side = "left"  # keep the end of the prompt: the question and the assistant turn
        kwargs.update(truncation=True, max_length=max_length)
    return tok(texts, **kwargs)


__all__ = ["LLAVA_V1_SYSTEM", "PROMPT_FORMATS", "NO_TEMPLATE_FORMATS", "IMAGE_REQUIRED", "is_vlm", "tokenizer_of",
           "configure", "check_prompt_format", "prompt_format", "image_token", "chat_messages", "chat_text",
           "blank_image", "load_image", "encode"]
