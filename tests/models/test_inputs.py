"""One prompt builder: a training item and the evaluation query for the same item give the model the
same input (token ids, attention mask, pixel values), on the real SmolLM2 and on tiny-vlm."""
import pytest
import torch

from unsafe_concepts.data import load_benchmark
from unsafe_concepts.models import inputs
from unsafe_concepts.models.base import Query
from unsafe_concepts.models.registry import load_model
from unsafe_concepts.tasks import BLANK, TaskOptions, get_task
from unsafe_concepts.train import common, data

from tiny_vlms import build_llava


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("sample")


def eval_query(sample, backend) -> Query:
    """The query the evaluation runner asks for a task sample (blank image only for VLMs)."""
    image = sample.image
    if image == BLANK:
        image = inputs.blank_image() if backend.supports_images else None
    return Query(id=sample.id, prompt=sample.prompt, image=image)


def pairs(bench, task_name, modality):
    """(training item, evaluation sample) pairs that are the same item: same prompt, same image."""
    items = data.build_items(bench, modality=modality, split="train")
    samples = get_task(task_name).build(bench, TaskOptions(split="train"))
    by_key = {(s.prompt, s.image if s.image != BLANK else None): s for s in samples}
    found = [(it, by_key[(it.prompt, it.image)]) for it in items if (it.prompt, it.image) in by_key]
    assert len(found) >= 2, f"expected shared items between training and {task_name}"
    return found[:3]


def assert_same_input(backend, found):
    for item, sample in found:
        trained = common.encode_prompts(backend.processor, [item.prompt], [item.image])
        evaluated = backend.encode_queries([eval_query(sample, backend)])
        assert sorted(trained.keys()) == sorted(evaluated.keys())
        for key in trained:
            assert torch.equal(trained[key], evaluated[key].to(trained[key].device)), key
    return trained


@pytest.mark.parametrize("spec", ["smollm2-135m", "tiny-vlm"])
def test_text_item_same_input_in_training_and_evaluation(spec, bench):
    backend = load_model(spec)
    encoded = assert_same_input(backend, pairs(bench, "alignment_text_only", "text"))
    if spec == "tiny-vlm":
        assert "pixel_values" in encoded  # the protocol's blank white image, both ways
        white = inputs.encode(backend.processor, ["x"], [inputs.blank_image()])["pixel_values"]
        assert torch.equal(encoded["pixel_values"], white)
    else:
        assert "pixel_values" not in encoded
    ids = encoded["input_ids"][0].tolist()
    bos = backend.tokenizer.bos_token_id
    assert bos is None or ids[:2] != [bos, bos]  # never a doubled BOS


def test_image_item_same_input_in_training_and_evaluation(bench):
    backend = load_model("tiny-vlm")
    encoded = assert_same_input(backend, pairs(bench, "alignment", "image"))
    n_image = (encoded["input_ids"] == backend.model.config.image_token_index).sum().item()
    assert n_image == 49  # tiny-vlm: 7 x 7 patches, image before the question


def test_batched_training_encoding_equals_the_backend_batch(tmp_path):
    """A left-padded batch (different prompt lengths, different images) is built the same both ways."""
    from PIL import Image

    backend = load_model(f"hf:{build_llava(tmp_path / 'llava')}")
    images = [Image.new("RGB", (40, 30), "red"), Image.new("RGB", (20, 70), "blue")]
    prompts = ["Is this image safe for viewing on social media?", "Short?"]
    trained = common.encode_prompts(backend.processor, prompts, images)
    evaluated = backend.encode_queries([Query(f"q{k}", p, im) for k, (p, im) in enumerate(zip(prompts, images))])
    for key in trained:
        assert torch.equal(trained[key], evaluated[key]), key


def test_llava_v1_format_is_the_reference_conversation(tmp_path):
    backend = load_model(f"hf:{build_llava(tmp_path / 'llava')}", prompt_format="llava-v1")
    text = inputs.chat_text(backend.processor, "Is it safe?", with_image=True)
    assert text == (f"{inputs.LLAVA_V1_SYSTEM} USER: <image>\nIs it safe? ASSISTANT:")
    assert backend.describe()["prompt_format"] == "llava-v1"
    # Training through the same processor uses the same format.
    assert common.chat_text(backend.processor, "Is it safe?") == text


def test_unknown_prompt_format_is_a_user_error():
    from unsafe_concepts.errors import UserError

    with pytest.raises(UserError, match="prompt-format"):
        load_model("smollm2-135m", prompt_format="vicuna-v0")
    with pytest.raises(UserError, match="needs a VLM"):
        load_model("smollm2-135m", prompt_format="llava-v1")


def test_training_loads_the_policy_with_the_same_prompt_format(tmp_path):
    """`train --prompt-format llava-v1` trains on the reference's conversation, as evaluation asks it."""
    config = common.TrainConfig(model=f"hf:{build_llava(tmp_path / 'llava')}", prompt_format="llava-v1",
                                lora_r=4, lora_alpha=8)
    policy, processor = common.load_policy(config)
    assert common.chat_text(processor, "Is it safe?").startswith(inputs.LLAVA_V1_SYSTEM + " USER: <image>\n")
