"""Six VLM architectures, tiny and random, saved to disk and read back the way users load hub models."""
import pytest
from PIL import Image

from unsafe_concepts import prompts
from unsafe_concepts.models.base import GenerationConfig, Query
from unsafe_concepts.models.registry import load_model

from tiny_vlms import BUILDERS, NEEDS, build_instructblip, torchvision_available

GREEDY = GenerationConfig(max_new_tokens=6, do_sample=False)
EXPECTED = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
    "paligemma": "PaliGemmaForConditionalGeneration",
    "instructblip": "InstructBlipForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def arch(request, tmp_path_factory):
    available, why = NEEDS.get(request.param, (lambda: True, ""))
    if not available():
        pytest.skip(why)
    folder = BUILDERS[request.param](tmp_path_factory.mktemp(request.param) / "model")
    return request.param, load_model(f"hf:{folder}")


def test_batch_of_image_queries(arch):
    name, backend = arch
    assert backend.supports_images
    assert backend.describe()["architecture"] == EXPECTED[name]
    # Different sizes and aspect ratios in one batch (LLaVA-NeXT gives them different token counts).
    queries = [Query(f"q{i}", prompts.alignment_prompt(i), Image.new("RGB", size, color))
               for i, (size, color) in enumerate([((40, 30), "red"), ((20, 70), "blue"), ((64, 64), "white")])]
    out = backend.generate(queries, GREEDY)
    assert [g.error for g in out] == [None] * 3
    assert all(isinstance(g.text, str) and 0 < g.n_tokens <= 6 and g.latency_s > 0 for g in out)
    # Left padding and per-row image tokens must not change an answer: batched == alone under greedy.
    assert [g.text for g in out] == [backend.generate([q], GREEDY)[0].text for q in queries]


def test_instructblip_prompt_is_the_bare_question_and_text_items_get_the_blank_image(tmp_path):
    """InstructBLIP ships no chat template (it failed here before): the family's own format is used,
    and, since it cannot answer without an image, a text-only query is shown the blank white image."""
    from unsafe_concepts.models import inputs

    backend = load_model(f"hf:{build_instructblip(tmp_path / 'ib')}")
    assert inputs.chat_text(backend.processor, "Is it safe?", with_image=True) == "Is it safe?"
    encoded = backend.encode_queries([Query("t", "Is it safe?")])
    assert "pixel_values" in encoded and "qformer_input_ids" in encoded
    n_query = backend.model.config.num_query_tokens
    assert encoded["input_ids"][0, :n_query].tolist() == [backend.model.config.image_token_index] * n_query
    out = backend.generate([Query("t", prompts.text_only_prompt(0, "Gun"))], GREEDY)
    assert out[0].error is None and out[0].n_tokens > 0


@pytest.mark.skipif(torchvision_available(), reason="checks the message shown when torchvision is missing")
def test_qwen2_vl_without_torchvision_is_a_clear_error(tmp_path):
    """Without torchvision, Qwen2-VL's processor cannot be built: the user is told what is missing."""
    from tiny_vlms import HIDDEN, _tokenizer, _vocab
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from unsafe_concepts.errors import UserError

    tok = _tokenizer("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
    text = dict(vocab_size=_vocab(tok), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    vision = dict(depth=1, embed_dim=HIDDEN, hidden_size=HIDDEN, num_heads=2, mlp_ratio=2, patch_size=8)
    config = Qwen2VLConfig(text_config=text, vision_config=vision,
                           image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"))
    Qwen2VLForConditionalGeneration(config).save_pretrained(tmp_path / "qwen")
    tok.save_pretrained(tmp_path / "qwen")
    Qwen2VLImageProcessorPil(patch_size=8).save_pretrained(tmp_path / "qwen")
    with pytest.raises(UserError, match="(?i)torchvision"):
        load_model(f"hf:{tmp_path / 'qwen'}")


@pytest.mark.skipif(torchvision_available(), reason="with torchvision, the Qwen2-VL case of test_batch_of_image_queries runs")
def test_qwen2_vl_through_the_shared_builder_without_torchvision():
    """Without torchvision, the real Qwen2VLProcessor is built with no video processor (its constructor's
    class check, which needs torchvision, is bypassed: images never reach the video processor). The shared
    builder then gives a tiny random Qwen2-VL batched inputs that answer as each query alone does."""
    from unittest import mock

    import torch
    import transformers
    from tiny_vlms import HIDDEN, _tokenizer, _vocab
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from unsafe_concepts.models import inputs
    from unsafe_concepts.models.offline import image_chat_template

    marks = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
    tok = _tokenizer(*marks)
    tok.padding_side = "left"
    ids = {t: tok.convert_tokens_to_ids(t) for t in marks}
    image_processor = Qwen2VLImageProcessorPil(patch_size=8, merge_size=2, temporal_patch_size=2,
                                               size={"shortest_edge": 16 * 16, "longest_edge": 64 * 64})
    with mock.patch.object(transformers.ProcessorMixin, "check_argument_for_proper_class", lambda *a: None):
        processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=None,
                                     chat_template=image_chat_template("<|vision_start|><|image_pad|><|vision_end|>"))
    text = dict(vocab_size=_vocab(tok), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    vision = dict(depth=1, embed_dim=HIDDEN, hidden_size=HIDDEN, num_heads=2, mlp_ratio=2, patch_size=8,
                  spatial_merge_size=2, temporal_patch_size=2)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).eval()

    images = [Image.new("RGB", (40, 30), "red"), Image.new("RGB", (20, 70), "blue")]  # different token counts
    questions = [prompts.alignment_prompt(0), prompts.alignment_prompt(3)]
    batch = inputs.encode(processor, questions, images)
    assert batch["image_grid_thw"].shape == (2, 3)
    settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    batched = model.generate(**batch, **settings)[:, batch["input_ids"].shape[1]:].tolist()
    alone = [model.generate(**inputs.encode(processor, [q], [im]), **settings)[0, -5:].tolist()
             for q, im in zip(questions, images)]
    assert batched == alone
