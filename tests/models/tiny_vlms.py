"""Tiny, randomly initialised VLMs of four architectures, saved as ordinary transformers folders.

Each has a real tokenizer (SmolLM2's, plus the architecture's special image tokens), a real image
processor of the architecture (small sizes) and a chat template, so that the backend loads it the
way users load a hub model: ``load_model("hf:<folder>")`` -> ``from_pretrained``."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    CLIPVisionConfig,
    GemmaConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaProcessor,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    SiglipVisionConfig,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
from transformers.tokenization_utils_base import AddedToken

from unsafe_concepts.models.offline import image_chat_template, smollm2_dir

HIDDEN = 32


def _tokenizer(*special: str):
    tok = AutoTokenizer.from_pretrained(smollm2_dir())
    if special:
        tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in special], special_tokens=True)
    return tok


def _vocab(tok) -> int:
    return (len(tok) + 63) // 64 * 64  # room for every token the processor adds


def _llama(tok, **kw) -> LlamaConfig:
    return LlamaConfig(vocab_size=_vocab(tok), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, **kw)


def _clip(image_size: int, patch: int) -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            image_size=image_size, patch_size=patch, projection_dim=HIDDEN)


def _save(model, processor, out: Path) -> Path:
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_llava(out: Path) -> Path:
    tok = _tokenizer("<image>")
    size, patch = 32, 8
    config = LlavaConfig(vision_config=_clip(size, patch), text_config=_llama(tok),
                         image_token_index=tok.convert_tokens_to_ids("<image>"),
                         image_seq_length=(size // patch) ** 2, vision_feature_layer=-1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
        tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=image_chat_template("<image>"))
    return _save(model, processor, out)


def build_llava_next(out: Path) -> Path:
    """LLaVA-NeXT ("anyres"): the image is tiled by aspect ratio, so image token counts differ per image."""
    tok = _tokenizer("<image>")
    size, patch = 32, 8
    grid = [[32, 64], [64, 32], [64, 64]]
    config = LlavaNextConfig(vision_config=_clip(size, patch), text_config=_llama(tok),
                             image_token_index=tok.convert_tokens_to_ids("<image>"),
                             image_grid_pinpoints=grid, vision_feature_layer=-1)
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(config)
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                                 image_grid_pinpoints=grid)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=image_chat_template("<image>"))
    return _save(model, processor, out)


def build_idefics3(out: Path) -> Path:
    """Idefics3 (the SmolVLM family): pixel-shuffled SigLIP-style tower, <fake_token_around_image> framing."""
    tok = _tokenizer("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>")
    size, patch, scale = 32, 8, 2
    seq_len = (size // patch) ** 2 // scale**2
    vision = dict(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=size, patch_size=patch)
    config = Idefics3Config(vision_config=vision, text_config=_llama(tok), scale_factor=scale,
                            image_token_id=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config)
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": size}, max_image_size={"longest_edge": size},
                                                do_image_splitting=False)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=seq_len,
                                  chat_template=image_chat_template("<image>"))
    return _save(model, processor, out)


def build_paligemma(out: Path) -> Path:
    """PaliGemma: SigLIP tower + Gemma decoder, image tokens prefixed to the prompt (prefix-LM attention)."""
    tok = _tokenizer()
    tok.chat_template = None  # like the real PaliGemma checkpoints: a bare "<image>prompt" format
    size, patch = 32, 8
    seq_len = (size // patch) ** 2
    image_processor = SiglipImageProcessorPil(size={"height": size, "width": size})
    image_processor.image_seq_length = seq_len
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)  # adds <image> + loc/seg tokens
    text = GemmaConfig(vocab_size=_vocab(tok), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = SiglipVisionConfig(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=size, patch_size=patch)
    config = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=processor.image_token_id,
                             projection_dim=HIDDEN)
    config.text_config.num_image_tokens = seq_len
    config.vision_config.projection_dim = HIDDEN
    torch.manual_seed(0)
    model = PaliGemmaForConditionalGeneration(config)
    return _save(model, processor, out)


BUILDERS = {
    "llava": build_llava,
    "llava_next": build_llava_next,
    "idefics3": build_idefics3,
    "paligemma": build_paligemma,
}
