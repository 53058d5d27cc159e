"""Shared fixtures for the training tests: small real models, loaded once per session."""
from __future__ import annotations

import pytest


def build_tiny_llava(out_dir) -> str:
    """A tiny random LLaVA (CLIP tower + Llama LM, SmolLM2's real tokenizer) saved as a transformers folder.

    Random weights, seeded: it exercises the VLM code paths (image tokens, pixel values, frozen
    vision tower) in seconds; it says nothing about quality."""
    import torch
    from transformers import (AutoTokenizer, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.tokenization_utils_base import AddedToken

    from unsafe_concepts.models.offline import smollm2_dir

    tok = AutoTokenizer.from_pretrained(smollm2_dir())
    tok.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    image_token = tok.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=1024,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token,
                         image_seq_length=16, vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
                "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}"
                "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                               vision_feature_select_strategy="default", chat_template=template,
                               num_additional_image_tokens=1)  # the CLS token, dropped by "default"
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return str(out_dir)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="session")
def smollm2_path():
    from unsafe_concepts.models.offline import smollm2_dir

    return str(smollm2_dir())
