"""models/continuous.py: continuous-batching sampling gives, row by row, the tokens that transformers'
own ``generate()`` samples for that prompt alone with the same seeded inverse-CDF draws - whatever
the number of slots, refills, column shifts and the tail's shrinking batch."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM, LogitsProcessorList,  # noqa: E402
                          TemperatureLogitsWarper)

from unsafe_concepts.models import continuous  # noqa: E402
from unsafe_concepts.models.continuous import SlotLayer  # noqa: E402
from unsafe_concepts.models.cpu_decode import InverseCDFSampler  # noqa: E402
from unsafe_concepts.train.ppo import SampledLogprobs  # noqa: E402  (the recorder PPO samples with)

VOCAB, PAD = 300, 0
EOS = list(range(2, 32))  # 30 end tokens of a 300-token vocabulary: answers of ~10 tokens, many lengths
NEW = 24


@pytest.fixture(scope="module")
def tiny():
    """A tiny random Llama with grouped-query attention (4 heads, 2 KV heads), like SmolLM2's."""
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=512, pad_token_id=PAD,
                      bos_token_id=1, eos_token_id=EOS[0])
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def prompts():
    """Nine left-padded prompts of lengths 1 to 12, short ones first (so later, longer prompts must
    make room on the left of a cache that is still narrow)."""
    lengths = (2, 1, 3, 12, 11, 5, 9, 1, 7)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(40, VOCAB, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, ids.shape[1] - n:] = 1
    ids[mask == 0] = PAD
    return ids, mask


def alone(model, ids, mask, seed, temperature):
    """transformers' generate() on one prompt (its padding removed), drawing with a generator seeded
    ``seed`` through the inverse-CDF sampler; (answer tokens, their log-probs)."""
    keep = mask.bool()
    q = {"input_ids": ids[keep][None], "attention_mask": mask[keep][None]}
    recorder = SampledLogprobs()
    warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
    cfg = GenerationConfig(do_sample=False, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=EOS)
    with torch.no_grad():
        seq = model.generate(**q, generation_config=cfg, logits_processor=LogitsProcessorList(
            [*warpers, recorder, InverseCDFSampler(torch.Generator().manual_seed(seed))]))
    answer = seq[0, q["input_ids"].shape[1]:]
    return answer, recorder.result(seq, answer.shape[0])[0]


@pytest.mark.parametrize("slots,slack,temperature", [(1, 64, 1.0), (3, 64, 0.7), (4, 1, 1.0), (16, 2, 1.3)],
                         ids=["one-slot", "three-slots", "four-slots-cache-full-every-step", "more-slots-than-rows"])
def test_each_answer_is_what_generate_samples_for_its_prompt_alone(tiny, prompts, monkeypatch, slots, slack,
                                                                    temperature):
    ids, mask = prompts
    seeds = [1000 + 7 * r for r in range(len(ids))]
    shifts = []
    original = SlotLayer.shift
    monkeypatch.setattr(SlotLayer, "shift", lambda self, n: (shifts.append(n), original(self, n))[1])
    ended = []
    tokens, logp = continuous.sample(tiny, ids, mask, slots=slots, max_new_tokens=NEW, eos_token_ids=EOS,
                                     pad_token_id=PAD, seeds=seeds, temperature=temperature, slack=slack,
                                     on_answer=ended.append)
    lengths = []
    for r in range(len(ids)):
        answer, expected_logp = alone(tiny, ids[r], mask[r], seeds[r], temperature)
        n = answer.shape[0]
        lengths.append(n)
        assert tokens[r, :n].tolist() == answer.tolist(), f"row {r}"
        assert (tokens[r, n:] == PAD).all()
        torch.testing.assert_close(logp[r, :n], expected_logp, atol=2e-5, rtol=1e-4)
        assert (logp[r, n:] == 0).all()
    assert sorted(ended) == list(range(len(ids)))
    assert tokens.shape[1] == max(lengths)
    assert len(set(lengths)) > 3, lengths  # the fixture gives answers of several lengths
    if slots > 1:
        assert any(n > 0 for n in shifts), "no prompt had to make room on the left"
    if slack == 1 and slots > 1:
        assert any(n < 0 for n in shifts), "the cache never dropped unused columns"


def test_answers_do_not_depend_on_the_other_rows(tiny, prompts):
    """A row's answer is a function of its prompt and seed: sampled among other rows, in another
    order, it is the same."""
    ids, mask = prompts
    seeds = list(range(len(ids)))
    kw = dict(max_new_tokens=NEW, eos_token_ids=EOS, pad_token_id=PAD)
    together, _ = continuous.sample(tiny, ids, mask, slots=4, seeds=seeds, **kw)
    order = list(reversed(range(len(ids))))
    reversed_, _ = continuous.sample(tiny, ids[order], mask[order], slots=2, seeds=[seeds[i] for i in order], **kw)
    width = max(together.shape[1], reversed_.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=PAD)  # noqa: E731
    assert torch.equal(pad(together), pad(reversed_)[list(reversed(range(len(ids))))])


def test_refuses_what_it_cannot_do(tiny, prompts):
    ids, mask = prompts
    with pytest.raises(ValueError, match="seeds"):
        continuous.sample(tiny, ids, mask, slots=2, max_new_tokens=4, eos_token_ids=EOS, pad_token_id=PAD,
                          seeds=[1])
    with pytest.raises(ValueError, match="max_new_tokens"):
        continuous.sample(tiny, ids, mask, slots=2, max_new_tokens=0, eos_token_ids=EOS, pad_token_id=PAD,
                          seeds=list(range(len(ids))))
    with pytest.raises(ValueError, match="slots"):
        continuous.sample(tiny, ids, mask, slots=0, max_new_tokens=4, eos_token_ids=EOS, pad_token_id=PAD,
                          seeds=list(range(len(ids))))


def test_supports_full_attention_models_only(tiny):
    from transformers import MistralConfig, MistralForCausalLM

    assert continuous.supports(tiny)
    sliding = MistralForCausalLM(MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=2, num_key_value_heads=1, vocab_size=50,
                                               sliding_window=8))
    assert not continuous.supports(sliding)


def test_greedy_answers_are_generates(tiny, prompts):
    """``greedy=True``: the most likely token at each step, as generate(do_sample=False) gives each
    prompt alone (no seeds needed)."""
    ids, mask = prompts
    tokens, _ = continuous.sample(tiny, ids, mask, slots=3, max_new_tokens=NEW, eos_token_ids=EOS,
                                  pad_token_id=PAD, greedy=True)
    cfg = GenerationConfig(do_sample=False, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=EOS)
    for r in range(len(ids)):
        keep = mask[r].bool()
        with torch.no_grad():
            seq = tiny.generate(input_ids=ids[r][keep][None], attention_mask=mask[r][keep][None], generation_config=cfg)
        answer = seq[0, int(keep.sum()):]
        assert tokens[r, :answer.shape[0]].tolist() == answer.tolist(), f"row {r}"
