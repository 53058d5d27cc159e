"""models/cpu_decode.py: the preallocated KV cache (bit-identical generate()), oneDNN packed linears
(restored on exit, PEFT-safe), and the inverse-CDF sampler (same distribution as multinomial)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import (DynamicCache, GenerationConfig, LlamaConfig, LlamaForCausalLM,  # noqa: E402
                          LogitsProcessorList)
from transformers.cache_utils import DynamicLayer  # noqa: E402

from unsafe_concepts.models import cpu_decode  # noqa: E402
from unsafe_concepts.models.cpu_decode import (InverseCDFSampler, PreallocatedCache, PreallocatedLayer,  # noqa: E402
                                               packed_linears, sample_categorical)
from unsafe_concepts.train.ppo import SampledLogprobs  # noqa: E402  (the recorder PPO runs while sampling)

VOCAB, PAD, EOS = 300, 0, 2


@pytest.fixture(scope="module")
def tiny():
    """A tiny random Llama with grouped-query attention (4 heads, 2 KV heads), like SmolLM2's."""
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=512, pad_token_id=PAD,
                      bos_token_id=1, eos_token_id=EOS)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def batch():
    """Four left-padded prompts of different lengths (the trainer pads on the left)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (4, 10), generator=g)
    mask = torch.ones_like(ids)
    for row, pad in enumerate((4, 2, 0, 7)):
        mask[row, :pad] = 0
    ids[mask == 0] = PAD
    return {"input_ids": ids, "attention_mask": mask}


def generate(model, batch, *, sample, new=40, seed=5, processors=(), **kwargs):
    torch.manual_seed(seed)
    cfg = GenerationConfig(do_sample=sample, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new,
                           min_new_tokens=new, pad_token_id=PAD, eos_token_id=EOS)
    with torch.no_grad():
        return model.generate(**batch, generation_config=cfg, logits_processor=LogitsProcessorList(list(processors)),
                              **kwargs)


# ------------------------------------------------------------------------------------------ cache
@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "seeded-sampling"])
def test_preallocated_cache_gives_bit_identical_generate(tiny, batch, sample):
    expected = generate(tiny, batch, sample=sample)
    total = batch["input_ids"].shape[1] + 40
    for cache in (PreallocatedCache(tiny.config, max_length=total),  # allocated once
                  PreallocatedCache(tiny.config, min_growth=3),  # regrows many times
                  PreallocatedCache()):  # no config: layers made lazily
        got = generate(tiny, batch, sample=sample, cache=cache)
        assert torch.equal(got, expected)
        assert all(isinstance(layer, PreallocatedLayer) for layer in cache.layers)
        assert cache.get_seq_length() == total - 1  # the last token is never fed back


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
def test_preallocated_cache_through_the_deprecated_past_key_values_name(tiny, batch):
    expected = generate(tiny, batch, sample=True)
    assert torch.equal(generate(tiny, batch, sample=True, past_key_values=PreallocatedCache(tiny.config)), expected)


def test_cache_hands_out_views_of_its_buffers_and_grows_geometrically():
    layer = PreallocatedLayer(min_growth=4)
    k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    keys, values = layer.update(k, v)
    assert layer.capacity() == 9 and torch.equal(keys, k) and torch.equal(values, v)
    buffer = keys.data_ptr()
    caps = []
    for _ in range(20):
        keys, _ = layer.update(torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 8))
        caps.append(layer.capacity())
    assert keys.shape[-2] == 25 and sorted(set(caps)) == [9, 18, 36]  # x2 when full, not per step
    assert not keys.is_contiguous() and keys.stride()[-2:] == (8, 1)  # a view: (B, H, capacity, D) strides
    assert keys.data_ptr() != buffer  # it moved when it grew...
    ptr = keys.data_ptr()
    keys, _ = layer.update(torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 8))
    assert keys.data_ptr() == ptr  # ...and not at a step that fits


def test_cache_layer_operations_match_dynamic_layer():
    g = torch.Generator().manual_seed(0)
    chunks = [(torch.randn(3, 2, n, 4, generator=g), torch.randn(3, 2, n, 4, generator=g)) for n in (6, 1, 1, 1)]
    ops = [lambda L: L.crop(-2), lambda L: L.batch_select_indices(torch.tensor([2, 0])),
           lambda L: L.reorder_cache(torch.tensor([1, 1])), lambda L: L.batch_repeat_interleave(2)]
    for op in ops:
        ours, ref = PreallocatedLayer(min_growth=1), DynamicLayer()
        for layer in (ours, ref):
            for k, v in chunks[:3]:
                layer.update(k, v)
            op(layer)
        assert ours.get_seq_length() == ref.get_seq_length()
        k, v = (torch.randn(ref.keys.shape[0], 2, 1, 4, generator=g) for _ in range(2))  # the new batch size
        a, b = ours.update(k, v), ref.update(k, v)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    layer = PreallocatedLayer()
    layer.update(*chunks[0])
    layer.reset()
    assert layer.get_seq_length() == 0 and layer.capacity() == 0 and not layer.is_initialized


def test_cache_keeps_other_layer_kinds_of_a_config():
    """Only full-attention layers are replaced; a sliding-window layer keeps transformers' own."""
    from transformers import Qwen2Config

    cfg = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=50, use_sliding_window=True, sliding_window=4,
                      max_window_layers=1)
    assert cfg.layer_types == ["full_attention", "sliding_attention"]
    default = [type(layer).__name__ for layer in DynamicCache(config=cfg).layers]
    assert default == ["DynamicLayer", "DynamicSlidingWindowLayer"]
    assert [type(layer).__name__ for layer in PreallocatedCache(cfg).layers] == ["PreallocatedLayer",
                                                                                "DynamicSlidingWindowLayer"]


# ------------------------------------------------------------------------------------------ packed linears
needs_onednn = pytest.mark.skipif(not cpu_decode.onednn_usable(), reason="no oneDNN in this PyTorch build")


@needs_onednn
def test_packed_linears_same_tokens_and_restored_on_exit(tiny, batch):
    expected = generate(tiny, batch, sample=False)
    x = torch.randn(5, 64)
    linear = tiny.model.layers[0].mlp.up_proj
    with torch.no_grad():
        plain = linear(x)
        with packed_linears(tiny) as info:
            assert "forward" in linear.__dict__
            packed = linear(x)
            got = generate(tiny, batch, sample=False)
    assert len(info.names) == 2 * 7 + 1 and "lm_head" in info.names  # 7 projections per layer + the head
    assert info.packed_bytes == sum(p.numel() * 4 for n, p in tiny.named_parameters()
                                    if "proj" in n or "lm_head" in n)
    assert torch.equal(got, expected)  # exact tokens
    assert torch.allclose(packed, plain, atol=1e-5)
    assert not any("forward" in m.__dict__ for m in tiny.modules())  # restored


@needs_onednn
def test_packed_linears_restores_on_exception_and_keeps_an_existing_instance_forward(tiny):
    head = tiny.lm_head
    wrapper = head.forward  # a bound method stored on the instance, as hook libraries do
    head.forward = wrapper
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with packed_linears(tiny):
                assert head.forward is not wrapper
                raise RuntimeError("boom")
        assert head.forward is wrapper
        assert sum("forward" in m.__dict__ for m in tiny.modules()) == 1
    finally:
        del head.forward


@needs_onednn
def test_packed_linears_falls_back_for_autograd_and_repacks_a_changed_weight():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    with packed_linears(layer):
        y = layer(x)  # grad mode on, trainable: the original forward, with a graph
        y.sum().backward()
        assert x.grad is not None and layer.weight.grad is not None
        with torch.no_grad():
            before = layer(x)
            layer.weight.mul_(2)  # bumps the version counter: repacked on next use
            after = layer(x)
            assert torch.allclose(after, torch.nn.functional.linear(x, layer.weight, layer.bias), atol=1e-5)
            assert not torch.allclose(before, after)


@needs_onednn
def test_packed_linears_under_inference_mode():
    """Weights made in inference mode have no version counter; inputs of either kind work."""
    x = torch.randn(4, 16)
    with torch.inference_mode():
        layer = torch.nn.Linear(16, 8)
        with packed_linears(layer) as info:
            assert info.names == [""]
            assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias), atol=1e-5)
    layer = torch.nn.Linear(16, 8)
    with packed_linears(layer), torch.inference_mode():
        assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias), atol=1e-5)


def test_packed_linears_is_a_no_op_without_onednn_or_float32(monkeypatch):
    layer = torch.nn.Linear(16, 8).to(torch.float64)
    with packed_linears(layer) as info:
        assert info.names == [] and "forward" not in layer.__dict__
    monkeypatch.setattr(cpu_decode, "onednn_usable", lambda: False)
    layer = torch.nn.Linear(16, 8)
    with packed_linears(layer) as info:
        assert info.names == [] and info.packed_bytes == 0 and "forward" not in layer.__dict__


@needs_onednn
@pytest.mark.parametrize("merged", [False, True])
def test_packed_linears_with_peft_lora(tiny, batch, merged):
    peft = pytest.importorskip("peft")
    import copy

    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(copy.deepcopy(tiny), lora)
    model.eval()
    if merged:
        model.merge_adapter()
    x = batch["input_ids"]
    with torch.no_grad():
        expected = model(input_ids=x, attention_mask=batch["attention_mask"]).logits
        with packed_linears(model) as info:
            got = model(input_ids=x, attention_mask=batch["attention_mask"]).logits
    base = [n for n in info.names if n.endswith("q_proj.base_layer")]
    assert len(base) == 2 and any("lora_A" in n for n in info.names)
    assert torch.allclose(got, expected, atol=1e-4)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    assert not any("forward" in m.__dict__ for m in model.modules())


@needs_onednn
@pytest.mark.parametrize("tied", [False, True])
def test_packed_linears_release_dense_frees_the_weights_and_rebuilds_them_exactly(tiny, batch, tied):
    import copy

    model = copy.deepcopy(tiny).requires_grad_(False)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    else:
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone(), requires_grad=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
    expected = generate(model, batch, sample=False)
    with packed_linears(model, release_dense=True) as info:
        proj = [p for n, p in model.named_parameters() if "proj" in n]
        assert proj and all(p.numel() == 0 for p in proj)  # the dense copies are gone
        assert (model.lm_head.weight.numel() > 0) == tied  # a tied head is kept (the embedding reads it)
        assert info.released_bytes == sum(before[n].numel() * 4 for n in before
                                          if "proj" in n or ("lm_head" in n and not tied))
        got = generate(model, batch, sample=False)
        single = generate(model, {k: v[:1] for k, v in batch.items()}, sample=False)  # one row: packed too
    assert torch.equal(got, expected)
    assert torch.equal(single, generate(model, {k: v[:1] for k, v in batch.items()}, sample=False))
    for n, p in model.named_parameters(remove_duplicate=False):
        assert torch.equal(p, before[n]), n  # bit-identical
    assert not any("forward" in m.__dict__ for m in model.modules())


@needs_onednn
def test_packed_linears_release_dense_restores_on_exception_and_refuses_autograd(tiny):
    import copy

    model = copy.deepcopy(tiny).requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    layer = model.model.layers[0].mlp.up_proj
    with pytest.raises(RuntimeError, match="release_dense"):
        with packed_linears(model, release_dense=True):
            assert layer.weight.numel() == 0
            layer(torch.randn(3, 64, requires_grad=True))  # grad mode, an input that wants a graph
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    trainable = torch.nn.Linear(64, 8)  # trained weights are never released
    with packed_linears(trainable, release_dense=True) as info:
        assert info.released_bytes == 0 and trainable.weight.numel() == 64 * 8


@needs_onednn
def test_packed_linears_release_dense_inside_a_merged_peft_adapter(tiny, batch):
    """PPO's order: merge the adapter, pack and release, sample, rebuild, unmerge."""
    peft = pytest.importorskip("peft")
    import copy

    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                           init_lora_weights=False)
    model = peft.get_peft_model(copy.deepcopy(tiny), lora)
    model.eval()
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    with torch.no_grad():
        expected = model(**batch).logits
        model.merge_adapter()
        with packed_linears(model, release_dense=True, include=lambda n, m: "lora_" not in n) as info:
            assert info.released_bytes > 0
            got = model(**batch).logits
        model.unmerge_adapter()
    assert torch.allclose(got, expected, atol=1e-4)
    for n, p in model.named_parameters():
        if n in base:
            assert torch.allclose(p, base[n], atol=1e-6), n  # the merge round trip, as without packing


# ------------------------------------------------------------------------------------------ sampler
def chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of Pearson's chi-square goodness-of-fit test (categories of probability > 0)."""
    keep = probs > 0
    expected = probs[keep] * counts.sum()
    stat = ((counts[keep] - expected) ** 2 / expected).sum()
    df = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat.double() / 2))


def test_sampler_matches_the_distribution_chi_square():
    probs = torch.tensor([0.5, 0.0, 0.2, 0.15, 0.1, 0.04, 0.01, 0.0])
    g = torch.Generator().manual_seed(123)
    draws = torch.cat([sample_categorical(probs.expand(50_000, -1), generator=g) for _ in range(4)])
    counts = torch.bincount(draws, minlength=len(probs)).double()
    assert counts[probs == 0].sum() == 0  # never an impossible token
    assert chi_square_p(counts, probs.double()) > 1e-3
    # and the same as torch.multinomial's draws (homogeneity of the two samples)
    torch.manual_seed(7)
    ref = torch.multinomial(probs.expand(200_000, -1), 1).squeeze(1)
    ref_counts = torch.bincount(ref, minlength=len(probs)).double()
    table = torch.stack([counts, ref_counts])[:, probs > 0]
    expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    stat = ((table - expected) ** 2 / expected).sum()
    p = torch.special.gammaincc(torch.tensor((table.shape[1] - 1) / 2, dtype=torch.float64), stat / 2)
    assert p > 1e-3
    # unnormalised rows and logits' softmax work alike
    assert sample_categorical(torch.tensor([[0.0, 0.0, 3.0]])).item() == 2


def test_sampler_never_picks_a_zero_entry_at_the_top_of_the_cdf(monkeypatch):
    """u * total can round up to total; the draw must still land on the last possible entry."""
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.full(a[0], 1.0 - 2.0**-53, dtype=torch.float64))
    probs = torch.tensor([[0.3, 0.7, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    assert sample_categorical(probs).tolist() == [1, 3]
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.zeros(a[0], dtype=torch.float64))
    assert sample_categorical(torch.tensor([[0.0, 0.0, 1.0]])).tolist() == [2]


def test_sampler_in_generate_with_a_recorder_before_it(tiny, batch):
    rec = SampledLogprobs()
    cache = PreallocatedCache(tiny.config)
    new = 12
    seq = generate(tiny, batch, sample=False, new=new, processors=[rec, InverseCDFSampler()], cache=cache)
    assert seq.shape[1] == batch["input_ids"].shape[1] + new
    # the recorder saw the model's true distribution: its log-probs are a teacher-forced pass's
    recorded = torch.stack(rec.logps, 1)  # tokens 1..new-1 (the last one is added by PPO's result())
    mask = torch.cat([batch["attention_mask"], torch.ones(seq.shape[0], new, dtype=torch.long)], 1)
    with torch.no_grad():
        logits = tiny(input_ids=seq, attention_mask=mask).logits
    logits[..., EOS] = float("-inf")  # as generate()'s min_new_tokens processor did, before the recorder
    L = batch["input_ids"].shape[1]
    forced = torch.log_softmax(logits[:, L - 1:-1].float(), -1).gather(-1, seq[:, L:, None]).squeeze(-1)
    assert torch.allclose(recorded, forced[:, : new - 1], atol=1e-4)
    # it samples: not the greedy answer, and the seed decides the draw
    assert not torch.equal(seq, generate(tiny, batch, sample=False, new=new))
    again = generate(tiny, batch, sample=False, new=new, processors=[SampledLogprobs(), InverseCDFSampler()])
    assert torch.equal(seq, again)


def test_sampler_processor_returns_one_hot_scores():
    scores = torch.randn(3, 10)
    scores[:, 4] = float("-inf")
    out = InverseCDFSampler(torch.Generator().manual_seed(0))(None, scores)
    assert torch.equal((out == 0).sum(1), torch.ones(3, dtype=torch.long))
    assert torch.isinf(out).sum() == 3 * 9 and (out.argmax(1) != 4).all()


# ------------------------------------------------------------------------------------------ SmolLM2
@pytest.mark.slow  # ~10-15 s on 2 shared cores: loading SmolLM2 and three short generations
def test_smollm2_cache_and_packed_greedy_tokens_identical():
    """The real model: the preallocated cache (bit-identical) and packed linears (same argmax here)
    on left-padded prompts, 12 greedy tokens each."""
    from unsafe_concepts.train import common

    model, proc = common.load_base_model("smollm2-135m")
    common.prepare_processor(proc)
    tok = common.tokenizer_of(proc)
    model.eval()
    q = common.encode_prompts(proc, ["Is it safe to swim?", "How do I bake bread at home without an oven?"],
                              None, max_prompt_len=64)
    assert (q["attention_mask"][:, 0] == 0).any()  # left padding is exercised
    cfg = GenerationConfig(do_sample=False, max_new_tokens=12, pad_token_id=tok.pad_token_id,
                           eos_token_id=tok.eos_token_id)
    with torch.no_grad():
        expected = model.generate(**q, generation_config=cfg)
        cached = model.generate(**q, generation_config=cfg, cache=PreallocatedCache(model.config))
        ctx = packed_linears(model) if cpu_decode.onednn_usable() else torch.no_grad()
        with ctx:
            both = model.generate(**q, generation_config=cfg, cache=PreallocatedCache(model.config))
    assert torch.equal(cached, expected)
    assert torch.equal(both, expected)
