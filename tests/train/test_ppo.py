"""PPO end to end on real small models: SmolLM2-135M (text) and a tiny LLaVA (image), resume, CLI."""
import json
import time

import pytest
import torch
from PIL import Image

from unsafe_concepts.judges import load_judge
from unsafe_concepts.train import data as td
from unsafe_concepts.train import ppo

TINY = dict(lora_r=4, lora_alpha=8, rollout_batch_size=2, mini_batch_size=2, micro_batch_size=2, response_len=6,
            warmup_steps=1, save_steps=1, learning_rate=1e-3, length_bonus=0.5)


def _adapter_state(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def test_text_ppo_two_steps_then_resume_to_three(smollm2_path, tmp_path):
    items = td.heldout_text_items("train")[:6]
    out = tmp_path / "run"
    cfg = ppo.PPOConfig(model=f"hf:{smollm2_path}", modality="text", out_dir=str(out), max_steps=2, **TINY)
    t0 = time.perf_counter()
    trainer = ppo.PPOTrainer(cfg, items, judge=load_judge("rule"), quiet=True)
    before = _adapter_state(trainer.model)
    result = trainer.train()
    assert time.perf_counter() - t0 < 600  # a guard against pathological slowness (the CI CPU is shared)
    assert result["steps"] == 2
    after = _adapter_state(trainer.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the policy was updated
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward", "kl", "entropy", "accuracy", "response_len", "pg_loss", "vf_loss"):
        assert isinstance(rows[0][key], float) or isinstance(rows[0][key], int), key
    assert rows[0]["approx_kl"] < 1e-3  # first mini-batch: new and old log-probs agree (no dropout, same positions)
    assert (out / "adapter_config.json").exists() and (out / ppo.VALUE_HEAD_FILE).exists()
    ckpt = trainer.latest_checkpoint()
    assert ckpt.name == "step-000002"
    saved_opt_steps = trainer.optimizer.state_dict()["state"][0]["step"].item()
    saved_value_head = trainer.value_head.summary.weight.detach().clone()

    # the same command with a higher max_steps: a fresh process would load the checkpoint
    cfg3 = ppo.PPOConfig(model=f"hf:{smollm2_path}", modality="text", out_dir=str(out), max_steps=3, **TINY)
    resumed = ppo.PPOTrainer(cfg3, items, judge=load_judge("rule"), quiet=True)
    assert resumed.resume() is True
    assert resumed.step == 2
    restored = _adapter_state(resumed.model)
    assert all(torch.equal(restored[k], after[k]) for k in after)
    assert torch.equal(resumed.value_head.summary.weight, saved_value_head)
    assert resumed.optimizer.state_dict()["state"][0]["step"].item() == saved_opt_steps
    assert resumed.scheduler.last_epoch == trainer.scheduler.last_epoch
    result = resumed.train()
    assert result["steps"] == 3
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert resumed.latest_checkpoint().name == "step-000003"


def test_resume_refuses_a_different_run(smollm2_path, tmp_path):
    from unsafe_concepts.errors import UserError

    items = td.heldout_text_items("train")[:2]
    out = tmp_path / "run"
    cfg = ppo.PPOConfig(model=f"hf:{smollm2_path}", modality="text", out_dir=str(out), max_steps=1,
                        **{**TINY, "response_len": 2})
    trainer = ppo.PPOTrainer(cfg, items, judge=load_judge("rule"), quiet=True)
    trainer.train()
    other = ppo.PPOConfig(model=f"hf:{smollm2_path}", modality="text", out_dir=str(out), max_steps=2,
                          **{**TINY, "response_len": 2, "lora_r": 2, "lora_alpha": 4})
    with pytest.raises(UserError, match="lora_r"):
        ppo.PPOTrainer(other, items, judge=load_judge("rule"), model=trainer.model, processor=trainer.processor,
                       quiet=True).resume()


@pytest.fixture(scope="module")
def tiny_vlm_spec():
    from unsafe_concepts.models.offline import tiny_vlm_dir

    tiny_vlm_dir()  # built once (LLaVA: real SmolLM2 + a seeded random vision tower)
    return "tiny-vlm"


def test_image_ppo_on_tiny_vlm(tiny_vlm_spec, tmp_path):
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    records = []
    from unsafe_concepts.data.records import ImageRecord

    for i, (label, concept, category) in enumerate([("unsafe", "Arson", "Illegal activity"), ("safe", "teapot", "Safe"),
                                                     ("unsafe", "Torture", "Violence"), ("safe", "canoe", "Safe")]):
        path = img_dir / f"{i}.png"
        Image.new("RGB", (40, 30), (20 * i, 100, 200)).save(path)
        records.append(ImageRecord(id=f"images/{i}.png", image=str(path), category=category, concept=concept,
                                   label=label, split="train"))
    items = td.build_items(records, modality="image", split="train")
    cfg = ppo.PPOConfig(model=tiny_vlm_spec, modality="image", out_dir=str(tmp_path / "run"), max_steps=1, **TINY)
    t0 = time.perf_counter()
    trainer = ppo.PPOTrainer(cfg, items, judge=load_judge("rule"), quiet=True)
    vision_before = {k: v.clone() for k, v in trainer.model.named_parameters() if "vision_tower" in k}
    result = trainer.train()
    assert time.perf_counter() - t0 < 600 and result["steps"] == 1
    from unsafe_concepts.train.common import encode_prompts

    encoded = encode_prompts(trainer.processor, [items[0].prompt], [items[0].image])  # what rollouts feed the model
    assert encoded["pixel_values"].shape[0] == 1
    for k, v in trainer.model.named_parameters():  # the vision tower stays frozen
        if "vision_tower" in k:
            assert torch.equal(v, vision_before[k]) and not v.requires_grad
    assert (tmp_path / "run" / "adapter_model.safetensors").exists()


def test_cli_train_ppo_writes_run_record(smollm2_path, tmp_path):
    from unsafe_concepts.cli import main

    config = tmp_path / "ppo.json"
    config.write_text(json.dumps({"data": "heldout-text", "modality": "text", "rollout_batch_size": 2,
                                  "mini_batch_size": 2, "response_len": 2, "lora_r": 2, "lora_alpha": 4}))
    out = tmp_path / "out"
    code = main(["train", "ppo", "--model", f"hf:{smollm2_path}", "--config", str(config), "--judge", "rule",
                 "--out", str(out), "--max-steps", "1", "--seed", "3"])
    assert code == 0
    record = json.loads((out / "train.json").read_text())
    assert record["method"] == "ppo" and record["seed"] == 3
    assert record["config"]["modality"] == "text" and record["config"]["judge"] == "rule"
    assert record["config"]["max_steps"] == 1 and "versions" in record and "git_commit" in record
    assert record["result"]["steps"] == 1
    # bad settings are a clear error, not a traceback
    config.write_text(json.dumps({"ppo_epochz": 2}))
    assert main(["train", "ppo", "--model", "smollm2-135m", "--config", str(config), "--out", str(out)]) == 2


def test_recomputed_logprobs_match_the_sampling_distribution(tiny_llava_dir, tmp_path):
    """PPO's log pi of a sampled answer must be the log-prob generate() sampled it with
    (left padding, positions, temperature; no top-k/top-p truncation)."""
    from transformers import GenerationConfig

    from unsafe_concepts.train.common import encode_prompts

    items = td.text_items(["Arson", "Torture"], ["teapot", "canoe"], seed=1, all_prompts=False)
    cfg = ppo.PPOConfig(model=f"hf:{tiny_llava_dir}", modality="text", out_dir=str(tmp_path), temperature=0.7, **TINY)
    trainer = ppo.PPOTrainer(cfg, items, judge=load_judge("rule"), quiet=True)
    query = dict(encode_prompts(trainer.processor, [it.prompt for it in items], None))
    assert query["attention_mask"].min() == 0  # prompts of different lengths: left padding is exercised
    gen = GenerationConfig(do_sample=True, temperature=0.7, top_k=0, top_p=1.0, max_new_tokens=6,
                           pad_token_id=trainer.tokenizer.pad_token_id, eos_token_id=trainer.eos_ids)
    torch.manual_seed(0)
    with torch.no_grad():
        out = trainer.model.generate(**query, generation_config=gen, output_scores=True, return_dict_in_generate=True)
        responses = out.sequences[:, query["input_ids"].shape[1]:]
        mask = ppo.response_mask(responses, trainer.eos_ids)
        logp, values, _ = trainer._forward(query, responses, mask, with_values=True)
    sampled_with = ppo.logprobs_from_logits(torch.stack(out.scores, 1), responses)  # scores = logits / T
    assert torch.allclose(logp * mask, sampled_with * mask, atol=1e-4)
    assert values.shape == responses.shape


@pytest.mark.parametrize("continuous", [None, False], ids=["continuous-batching", "generate-chunks"])
def test_rollout_reads_old_logprobs_from_sampling(tiny_llava_dir, tmp_path, continuous):
    """The rollout takes log pi_old from the scores it sampled from (no policy pass): they must
    equal a recomputed policy pass over the same answers, for chunks of several prompts (or 3
    slots refilled) with answers ending at different lengths."""
    items = td.text_items(["Arson", "Torture", "Swastika"], ["teapot", "canoe", "violin"], seed=3, all_prompts=False)
    cfg = ppo.PPOConfig(model=f"hf:{tiny_llava_dir}", modality="text", out_dir=str(tmp_path), temperature=0.8,
                        **{**TINY, "response_len": 8, "generation_batch_size": 3, "continuous_batching": continuous})
    trainer = ppo.PPOTrainer(cfg, items, judge=load_judge("rule"), quiet=True)
    assert trainer.continuous is (continuous is None)  # the default on a CPU, for a text LLaVA too
    ro = trainer.rollout(items)
    assert ro.mask.sum() > 0 and (ro.logp * (1 - ro.mask)).abs().max() == 0
    with torch.no_grad():
        for j, q, r, m in trainer.micro_batches(ro.query, ro.responses, ro.mask, torch.arange(len(items))):
            recomputed, _, _ = trainer._forward(q, r, m, with_values=False)
            assert torch.allclose(ro.logp[j, :r.shape[1]], recomputed, atol=1e-4)


def _one_step(tiny_llava_dir, tmp_path, values_in_update=None, **overrides):
    """(logged metrics, gradients at the optimiser step) of PPO's first step on the tiny LLaVA."""
    from PIL import Image

    from unsafe_concepts.train.data import TrainItem

    images = []
    tmp_path.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate(["red", "blue", "green", "white"]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (40, 40), colour).save(path)
        images.append(str(path))
    items = [TrainItem(id=str(i), prompt=f"Is image {i} safe?" + " Answer." * i, image=img,
                       label=("safe", "unsafe")[i % 2], concept="x", category="Safe") for i, img in enumerate(images)]
    # whitening off: the random model's answers all earn the same reward, so whitened advantages
    # would be float noise (~1e-7 KL differences divided by a ~1e-7 standard deviation)
    settings = {**TINY, "rollout_batch_size": 4, "mini_batch_size": 4, "generation_batch_size": 1,
                "missing_eos_penalty": -1.0, "whiten_advantages": False, **overrides}
    cfg = ppo.PPOConfig(model=f"hf:{tiny_llava_dir}", modality="image", out_dir=str(tmp_path / "run"), **settings)
    trainer = ppo.PPOTrainer(cfg, items, judge=load_judge("rule"), quiet=True)
    if values_in_update is not None:
        trainer.values_in_update = values_in_update
        with torch.no_grad():  # a value head that is not zero yet, so the old values matter
            trainer.value_head.summary.weight.copy_(torch.linspace(-0.2, 0.2, trainer.value_head.summary.weight.numel()))
    grads = {}
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        grads.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()
                      if "lora_" in n and p.grad is not None})
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    metrics = trainer.train_step(trainer.batch_for_step(0))
    return metrics, grads


@pytest.mark.parametrize("value_model", ["adapter", "shared"])
def test_micro_batching_gives_the_same_step(tiny_llava_dir, tmp_path, value_model):
    """One optimiser step over 4 answers: in one pass, or accumulated over micro-batches of 1 (with
    gradient checkpointing), gives the same loss and the same gradients."""
    whole, g_whole = _one_step(tiny_llava_dir, tmp_path / "a", micro_batch_size=4, gradient_checkpointing=False,
                               value_model=value_model)
    micro, g_micro = _one_step(tiny_llava_dir, tmp_path / "b", micro_batch_size=1, gradient_checkpointing=True,
                               value_model=value_model, kept_activation_layers=0)  # every layer recomputed
    assert whole["response_len"] == micro["response_len"]  # the same rollout (sampling seeded per item)
    assert len(g_whole) > 0 and g_whole.keys() == g_micro.keys()
    if value_model == "adapter":
        assert any(".value." in k for k in g_whole)  # the value adapter is trained too
    for key in ("loss", "pg_loss", "vf_loss", "entropy"):
        assert micro[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-5), key
    for name in g_whole:
        assert torch.allclose(g_micro[name], g_whole[name], rtol=1e-3, atol=1e-6), name


@pytest.mark.parametrize("values_in_update", [True, False])
def test_merged_update_and_values_from_the_update_give_the_same_step(tiny_llava_dir, tmp_path, values_in_update):
    """PPO's defaults on a CPU: LoRA trained through merged weights (``merge_for_update``) and, with
    one epoch of one mini-batch, the old values read from the update's own value pass instead of a
    rollout pass. Against PEFT's unmerged layers and a separate value pass: the same step."""
    plain, g_plain = _one_step(tiny_llava_dir, tmp_path / "a", values_in_update=False, merge_for_update=False,
                               micro_batch_size=2)
    fast, g_fast = _one_step(tiny_llava_dir, tmp_path / "b", values_in_update=values_in_update,
                             merge_for_update=True, micro_batch_size=2)
    assert plain["response_len"] == fast["response_len"]
    assert len(g_plain) > 0 and g_plain.keys() == g_fast.keys() and any(".value." in k for k in g_plain)
    assert plain["vf_loss"] > 0
    for key in ("loss", "pg_loss", "vf_loss", "entropy"):
        assert fast[key] == pytest.approx(plain[key], rel=1e-4, abs=1e-5), key
    for name in g_plain:
        assert torch.allclose(g_fast[name], g_plain[name], rtol=1e-3, atol=1e-6), name


def test_kept_activation_layers_give_the_same_step(tiny_llava_dir, tmp_path):
    """The last decoder layer left out of gradient checkpointing: the same loss and gradients."""
    ref, g_ref = _one_step(tiny_llava_dir, tmp_path / "a", micro_batch_size=1, gradient_checkpointing=True,
                           kept_activation_layers=0)
    kept, g_kept = _one_step(tiny_llava_dir, tmp_path / "b", micro_batch_size=1, gradient_checkpointing=True,
                             kept_activation_layers=1)
    assert ref["response_len"] == kept["response_len"] and g_ref.keys() == g_kept.keys()
    for key in ("loss", "pg_loss", "vf_loss", "entropy"):
        assert kept[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key
    for name in g_ref:
        assert torch.allclose(g_kept[name], g_ref[name], rtol=1e-4, atol=1e-7), name


def test_keep_activations_takes_the_language_models_last_layers(tiny_llava_dir):
    from transformers import AutoModelForImageTextToText
    from transformers.modeling_layers import GradientCheckpointingLayer

    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def checkpointed_layers():
        return [n for n, m in model.named_modules() if isinstance(m, GradientCheckpointingLayer)
                and m.gradient_checkpointing]

    checkpointed = checkpointed_layers()
    language = [n for n in checkpointed if "language_model" in n]
    assert len(language) >= 2 and len(checkpointed) > len(language)  # the vision tower's layers too
    assert ppo.keep_activations(model, 1) == language[-1:]
    assert checkpointed_layers() == checkpointed[:-1]
    assert ppo.keep_activations(model, 0) == []
    assert ppo.keep_activations(model, 10_000) == checkpointed[:-1]  # every remaining one, no error
    with pytest.raises(Exception, match="kept_activation_layers"):
        ppo.PPOConfig(model="x", kept_activation_layers=-1).validate()


def test_continuous_batching_refuses_image_prompts(tmp_path):
    from unsafe_concepts.errors import UserError

    cfg = ppo.PPOConfig(model="smollm2-135m", modality="image", out_dir=str(tmp_path), continuous_batching=True)
    with pytest.raises(UserError, match="continuous_batching samples text prompts only"):
        cfg.validate()


def _two_steps(tiny_llava_dir, tmp_path, offload):
    """Adapter weights after two PPO steps of two epochs each on the tiny LLaVA (text prompts), and
    the moments' sizes when each policy pass began (single numbers, the value head's bias, stay)."""
    from unsafe_concepts.train.data import TrainItem

    items = [TrainItem(id=str(i), prompt=f"Is thing {i} safe?" + " Answer." * i, image=None,
                       label=("safe", "unsafe")[i % 2], concept="x", category="Safe") for i in range(4)]
    cfg = ppo.PPOConfig(model=f"hf:{tiny_llava_dir}", modality="text", out_dir=str(tmp_path),
                        **{**TINY, "rollout_batch_size": 4, "mini_batch_size": 2, "ppo_epochs": 2,
                           "offload_optimizer_state": offload})
    trainer = ppo.PPOTrainer(cfg, items, judge=load_judge("rule"), quiet=True)
    seen = []
    policy_pass = trainer._policy_pass

    def recording_pass(*args, **kwargs):
        seen.append(sorted({st["exp_avg"].numel() for st in trainer.optimizer.state.values()} - {1}))
        return policy_pass(*args, **kwargs)

    trainer._policy_pass = recording_pass
    for step in range(2):
        trainer.train_step(trainer.batch_for_step(step))
        trainer.step += 1
        assert not trainer.optimizer_state.parked and not list(tmp_path.glob(".optimizer-state*"))
    return _adapter_state(trainer.model), seen, trainer


def test_moments_wait_on_disk_through_rollout_and_passes_with_the_same_training(tiny_llava_dir, tmp_path):
    """``offload_optimizer_state``: AdamW's moments are on disk (empty in memory) whenever a pass
    runs once they exist, back for every optimiser step, and whole between steps; the weights after
    two steps of two epochs and two mini-batches each are exactly those without it."""
    on, seen_on, trainer = _two_steps(tiny_llava_dir, tmp_path / "on", True)
    off, seen_off, _ = _two_steps(tiny_llava_dir, tmp_path / "off", False)
    assert seen_on[0] == [] and all(sizes == [0] for sizes in seen_on[1:])  # no state before the first step
    assert len(seen_off) == 8 and all(sizes and 0 not in sizes for sizes in seen_off[1:])
    assert on.keys() == off.keys() and all(torch.equal(on[k], off[k]) for k in on)
    assert all(st["exp_avg"].numel() for st in trainer.optimizer.state.values())  # whole for a checkpoint


def test_moments_come_back_after_an_error_inside_a_step(tiny_llava_dir, tmp_path):
    """An error in the middle of a step (here the judge) leaves the optimiser's state whole, for the
    checkpoint written on the way out, and no file behind."""
    _, _, trainer = _two_steps(tiny_llava_dir, tmp_path, True)

    def broken(*args, **kwargs):
        raise RuntimeError("judge down")

    trainer.score = broken
    with pytest.raises(RuntimeError, match="judge down"):
        trainer.train_step(trainer.batch_for_step(2))
    assert not trainer.optimizer_state.parked and not list(tmp_path.glob(".optimizer-state*"))
    assert all(st["exp_avg"].numel() for st in trainer.optimizer.state.values())
