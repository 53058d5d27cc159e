"""Tiny, randomly initialised VLMs of six architectures, saved as ordinary transformers folders.

Each has a real tokenizer (SmolLM2's, plus the architecture's special image tokens), a real image
processor of the architecture (small sizes) and, where the family's checkpoints have one, a chat
template, so that the backend loads it the way users load a hub model:
``load_model("hf:<folder>")`` -> ``from_pretrained``. Two of them are families of the paper's eight
VLMs that are not LLaVA: InstructBLIP (no chat template; Q-Former query tokens placed by the
processor) and Qwen2-VL (dynamic resolution, M-RoPE; its processor needs torchvision)."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
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
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
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


def build_instructblip(out: Path) -> Path:
    """InstructBLIP: ViT + Q-Former (its own tokenizer reads the question) + LLaMA-style decoder.

    Like the real checkpoints (Salesforce/instructblip-vicuna-7b/13b) it has no chat template: the
    prompt is the bare question and the processor puts the query tokens in front."""
    tok = _tokenizer()
    size, patch, n_query = 32, 8, 4
    processor = InstructBlipProcessor(image_processor=BlipImageProcessorPil(size={"height": size, "width": size}),
                                      tokenizer=tok, qformer_tokenizer=_tokenizer(), num_query_tokens=n_query)
    tok.chat_template = None
    vision = dict(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=size, patch_size=patch)
    qformer = dict(vocab_size=_vocab(processor.qformer_tokenizer), hidden_size=HIDDEN, num_hidden_layers=1,
                   num_attention_heads=2, intermediate_size=64, encoder_hidden_size=HIDDEN,
                   max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    config = InstructBlipConfig(vision_config=vision, qformer_config=qformer, text_config=_llama(tok).to_dict(),
                                num_query_tokens=n_query, image_token_index=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = InstructBlipForConditionalGeneration(config)
    return _save(model, processor, out)


def torchvision_available() -> bool:
    from transformers.utils import is_torchvision_available

    return is_torchvision_available()


def build_qwen2_vl(out: Path) -> Path:
    """Qwen2-VL: images at their own resolution (patches merged 2x2), M-RoPE positions.

    The chat template is SmolLM2's ChatML with Qwen2-VL's image markers (a guess at the shape of the
    real one, which also uses ChatML with <|vision_start|><|image_pad|><|vision_end|>)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    marks = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
    tok = _tokenizer(*marks)
    ids = {t: tok.convert_tokens_to_ids(t) for t in marks}
    patch, merge = 8, 2
    sizes = dict(patch_size=patch, merge_size=merge, temporal_patch_size=2,
                 size={"shortest_edge": 16 * 16, "longest_edge": 64 * 64})
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessorPil(**sizes), tokenizer=tok,
                                 video_processor=Qwen2VLVideoProcessor(**sizes),
                                 chat_template=image_chat_template("<|vision_start|><|image_pad|><|vision_end|>"))
    text = dict(vocab_size=_vocab(tok), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    vision = dict(depth=1, embed_dim=HIDDEN, hidden_size=HIDDEN, num_heads=2, mlp_ratio=2, patch_size=patch,
                  spatial_merge_size=merge, temporal_patch_size=2)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    return _save(model, processor, out)


BUILDERS = {
    "llava": build_llava,
    "llava_next": build_llava_next,
    "idefics3": build_idefics3,
    "paligemma": build_paligemma,
    "instructblip": build_instructblip,
    "qwen2_vl": build_qwen2_vl,
}
# Builders that need an optional package, and why they are skipped without it.
NEEDS = {"qwen2_vl": (torchvision_available, "Qwen2-VL's processor needs torchvision (not installed)")}
