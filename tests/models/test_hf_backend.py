"""The transformers backend on real models: SmolLM2-135M (text) and a tiny random LLaVA (images)."""
import pytest
import torch
from PIL import Image

from unsafe_concepts import prompts
from unsafe_concepts.errors import UserError
from unsafe_concepts.models.base import GenerationConfig, Query
from unsafe_concepts.models.hf import load_hf_model
from unsafe_concepts.models.registry import load_model

from tiny_vlms import build_llava

GREEDY = GenerationConfig(max_new_tokens=12, do_sample=False)
CONCEPTS = ["Swastika", "Torture", "Gun", "Suicide", "Cocaine"]


def text_queries(n=5):
    return [Query(id=f"t{i}", prompt=prompts.text_only_prompt(i % 5, CONCEPTS[i % 5])) for i in range(n)]


@pytest.fixture(scope="module")
def smol():
    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return build_llava(tmp_path_factory.mktemp("models") / "llava")


@pytest.fixture(scope="module")
def llava(llava_dir):
    return load_model(f"hf:{llava_dir}")


def image_query(qid, size=(40, 30), color="red", prompt=None):
    return Query(id=qid, prompt=prompt or prompts.alignment_prompt(0), image=Image.new("RGB", size, color))


# ---- SmolLM2: a real text-only model


def test_smollm2_is_text_only_and_describes_itself(smol):
    d = smol.describe()
    assert smol.supports_images is False
    assert d["backend"] == "hf" and d["architecture"] == "LlamaForCausalLM"
    assert d["dtype"] == "float32" and d["device"] == "cpu" and d["untrained_vision"] is False


def test_batched_greedy_equals_one_at_a_time(smol):
    queries = text_queries(5)  # prompts of different lengths: left padding must not change answers
    batched = smol.generate(queries, GREEDY)
    single = [smol.generate([q], GREEDY)[0] for q in queries]
    assert [g.error for g in batched] == [None] * 5
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(g.text for g in batched)
    assert [g.n_tokens for g in batched] == [g.n_tokens for g in single]
    assert all(0 < g.n_tokens <= 12 and g.latency_s > 0 for g in batched)


def test_seeded_sampling_repeats_and_seeds_differ(smol):
    queries = text_queries(3)
    cfg = GenerationConfig(max_new_tokens=12, temperature=1.0, top_p=0.9, do_sample=True, seed=7)
    first = [g.text for g in smol.generate(queries, cfg)]
    torch.manual_seed(12345)  # global RNG state must not matter: the backend seeds each batch
    again = [g.text for g in smol.generate(queries, cfg)]
    assert first == again
    others = [[g.text for g in smol.generate(queries, GenerationConfig(max_new_tokens=12, seed=s))] for s in (8, 9)]
    assert any(o != first for o in others)


def test_text_only_model_fails_image_queries_per_item(smol, tmp_path):
    queries = text_queries(2)
    queries.insert(1, image_query("img"))
    out = smol.generate(queries, GREEDY)
    assert out[1].text is None and "text-only" in out[1].error and "img" in out[1].error
    assert out[0].error is None and out[2].error is None and out[0].text and out[2].text


def test_text_only_hf_folder_loads_as_text_only(tmp_path):
    """A plain causal LM saved to disk (no image processor) is an ordinary text-only hf: model."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from unsafe_concepts.models.offline import smollm2_dir

    tok = AutoTokenizer.from_pretrained(smollm2_dir())
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    backend = load_model(f"hf:{tmp_path / 'lm'}")
    assert backend.supports_images is False
    out = backend.generate(text_queries(2), GenerationConfig(max_new_tokens=5, do_sample=False))
    assert [g.error for g in out] == [None, None] and all(g.n_tokens == 5 for g in out)


def test_empty_prompt_and_placeholder_injection_fail_per_item(llava):
    out = llava.generate([image_query("ok"), image_query("empty", prompt="  "),
                          image_query("inject", prompt="look: <image> here")], GREEDY)
    assert out[0].error is None
    assert "empty prompt" in out[1].error
    assert "placeholder token" in out[2].error


def test_max_new_tokens_beyond_the_context_is_a_user_error(llava):
    with pytest.raises(UserError, match="no room"):
        llava.generate([image_query("a")], GenerationConfig(max_new_tokens=512))


# ---- images: per-item errors on a tiny random LLaVA


def test_corrupt_and_missing_images_fail_only_their_own_rows(llava, tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not a png at all")
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 48), "green").save(good)
    truncated = tmp_path / "truncated.png"
    Image.effect_noise((64, 64), 50).convert("RGB").save(tmp_path / "full.png")
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:300])

    queries = [Query("good", prompts.alignment_prompt(0), str(good)),
               Query("garbage", prompts.alignment_prompt(0), str(garbage)),
               Query("missing", prompts.alignment_prompt(0), str(tmp_path / "missing.png")),
               Query("truncated", prompts.alignment_prompt(0), str(truncated)),
               image_query("pil")]
    out = llava.generate(queries, GREEDY)
    assert out[0].error is None and out[0].n_tokens == 12
    assert out[4].error is None
    assert "garbage.png" in out[1].error and "unreadable" in out[1].error
    assert "not found" in out[2].error
    assert "truncated.png" in out[3].error
    assert all(g.text is None for g in out[1:4])


def test_a_batch_that_fails_in_generate_is_retried_item_by_item(llava):
    """A zero-size image loads fine but breaks the processor: the batch fails, the retry isolates it."""
    queries = [image_query("a"), Query("zero", prompts.alignment_prompt(0), Image.new("RGB", (0, 0))),
               image_query("b", size=(30, 60), color="blue")]
    out = llava.generate(queries, GREEDY)
    assert out[1].text is None and out[1].error
    assert out[0].error is None and out[2].error is None
    assert out[0].text == llava.generate([queries[0]], GREEDY)[0].text


def test_long_prompts_are_cut_from_the_start_keeping_image_tokens(llava):
    """The tiny LLaVA takes 512 positions: a ~1500-token prompt must lose its start, not its image or question."""
    long_prompt = "blah " * 1500 + prompts.alignment_prompt(0)
    out = llava.generate([image_query("long", prompt=long_prompt), image_query("short")],
                         GenerationConfig(max_new_tokens=8, do_sample=False))
    assert [g.error for g in out] == [None, None]
    assert out[0].n_tokens == 8


def test_mixed_batch_of_image_and_text_queries(llava):
    queries = [image_query("img"), Query("txt", prompts.text_only_prompt(0, "Gun"))]
    out = llava.generate(queries, GREEDY)
    assert [g.error for g in out] == [None, None]
    assert out[1].text == llava.generate([queries[1]], GREEDY)[0].text


# ---- adapters


@pytest.fixture(scope="module")
def adapter_dir(llava_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    model, _ = load_hf_model(f"hf:{llava_dir}")
    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    out = tmp_path_factory.mktemp("adapter") / "lora"
    peft_model.save_pretrained(out)
    return out


def test_adapter_loads_on_top_and_changes_the_model(llava_dir, adapter_dir, llava):
    tuned = load_model(f"hf:{llava_dir}", adapter=str(adapter_dir))
    assert tuned.describe()["adapter"] == str(adapter_dir)
    queries = [image_query("a"), image_query("b", size=(50, 20), color="blue")]
    tuned_out = [g.text for g in tuned.generate(queries, GREEDY)]
    assert tuned_out != [g.text for g in llava.generate(queries, GREEDY)]

    # The backend merges the adapter for speed; the unmerged PEFT model (what trainers get) agrees.
    from peft import PeftModel

    model, _ = load_hf_model(f"hf:{llava_dir}", adapter=str(adapter_dir))
    assert isinstance(model, PeftModel)
    assert not any(p.requires_grad for p in model.parameters())
    tuned.model = model
    assert [g.text for g in tuned.generate(queries, GREEDY)] == tuned_out


def test_trainable_adapter_and_bad_adapter_folder(llava_dir, adapter_dir, tmp_path):
    model, _ = load_hf_model(f"hf:{llava_dir}", adapter=str(adapter_dir), adapter_trainable=True)
    assert any(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    with pytest.raises(UserError, match="adapter_config.json"):
        load_hf_model(f"hf:{llava_dir}", adapter=str(tmp_path))


def test_default_batch_size_follows_the_kv_cache_on_a_cpu(smol):
    """No --batch-size: 16 rows on a GPU; on a CPU as many as 1,024 positions of KV cache fit in
    2 GiB, at most 32. Real configs: the offline SmolLM2 (30 layers, 3 KV heads of 64) gets 32;
    LLaVA-1.5-7B's language model (Vicuna-7B: 32 layers, 32 heads of 128, values from its published
    config.json) gets 2 in float32 and 4 in bfloat16; a Qwen2-VL config is read through its text part."""
    from transformers import LlamaConfig, LlavaConfig, Qwen2VLConfig

    from unsafe_concepts.models.hf import default_batch_size

    assert smol.batch_size == 32 and smol.describe()["batch_size"] == 32
    vicuna = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32000)
    llava7b = LlavaConfig(text_config=vicuna.to_dict())
    assert default_batch_size(llava7b, torch.float32, "cpu") == 2
    assert default_batch_size(llava7b, torch.bfloat16, "cpu") == 4
    assert default_batch_size(llava7b, torch.float16, "cuda:0") == 16
    qwen = Qwen2VLConfig(text_config={"hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12,
                                      "num_key_value_heads": 2})
    per_row = 1024 * 28 * 2 * 2 * 128 * 4
    assert default_batch_size(qwen, torch.float32, "cpu") == min(32, (2 << 30) // per_row)
    assert load_model("smollm2-135m", batch_size=5).batch_size == 5  # --batch-size reaches the backend
