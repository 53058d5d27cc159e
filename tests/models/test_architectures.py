"""Four VLM architectures, tiny and random, saved to disk and read back the way users load hub models."""
import pytest
from PIL import Image

from unsafe_concepts import prompts
from unsafe_concepts.models.base import GenerationConfig, Query
from unsafe_concepts.models.registry import load_model

from tiny_vlms import BUILDERS

GREEDY = GenerationConfig(max_new_tokens=6, do_sample=False)
EXPECTED = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
    "paligemma": "PaliGemmaForConditionalGeneration",
}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def arch(request, tmp_path_factory):
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
