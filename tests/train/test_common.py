import argparse
import json

import pytest

from unsafe_concepts.errors import UserError
from unsafe_concepts.train import common


def test_config_defaults_follow_protocol():
    c = common.TrainConfig()
    assert (c.lora_r, c.lora_alpha, c.lora_dropout) == (128, 256, 0.05)
    assert c.warmup_steps == 5 and c.lr_schedule == "cosine" and c.batch_size == 32 and c.epochs == 4


def test_config_from_file_json_yaml_and_unknown_keys(tmp_path):
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"lora_r": 16, "learning_rate": 1e-4, "modality": "text"}))
    c = common.config_from_file(j, common.TrainConfig)
    assert (c.lora_r, c.learning_rate, c.modality, c.lora_alpha) == (16, 1e-4, "text", 256)
    y = tmp_path / "c.yaml"
    y.write_text("learning_rate: 3e-5\nmax_steps: 7\n")  # YAML 1.1 reads 3e-5 as a string
    c = common.config_from_file(y, common.TrainConfig, seed=5)
    assert c.learning_rate == pytest.approx(3e-5) and c.max_steps == 7 and c.seed == 5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"lora_rank": 8}))
    with pytest.raises(UserError, match="unknown setting.*lora_rank"):
        common.config_from_file(bad, common.TrainConfig)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"batch_size": "many"}))
    with pytest.raises(UserError, match="batch_size"):
        common.config_from_file(wrong, common.TrainConfig)
    with pytest.raises(UserError, match="modality"):
        common.config_from_dict({"modality": "audio"}, common.TrainConfig)
    from unsafe_concepts.train.ppo import PPOConfig

    assert common.config_from_dict({"merge_for_update": "off", "gradient_checkpointing": "yes"},
                                   PPOConfig).merge_for_update is False
    for value in ("maybe", 5, [1]):  # a switch is on or off: anything else is named, not read as off
        with pytest.raises(UserError, match="merge_for_update must be bool"):
            common.config_from_dict({"merge_for_update": value}, PPOConfig)
    with pytest.raises(UserError, match="not found"):
        common.config_from_file(tmp_path / "missing.json", common.TrainConfig)


def test_config_from_args_flags_over_file_but_defaults_do_not_reset_file(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"modality": "text", "seed": 3, "max_steps": 9}))
    args = argparse.Namespace(config=str(f), model="smollm2-135m", data="sample", safe_data=None, modality="image",
                              out=str(tmp_path / "o"), max_steps=None, seed=0, judge="classifier", dtype=None, device=None)
    defaults = {"modality": "image", "seed": 0, "data": "sample", "judge": "classifier"}
    c = common.config_from_args(args, common.TrainConfig, cli_defaults=defaults)
    assert (c.modality, c.seed, c.max_steps, c.out_dir) == ("text", 3, 9, str(tmp_path / "o"))
    args.seed, args.max_steps = 11, 2
    c = common.config_from_args(args, common.TrainConfig, cli_defaults=defaults)
    assert (c.seed, c.max_steps) == (11, 2)


def test_scheduler_warmup_then_cosine():
    import torch

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = common.make_scheduler(opt, common.TrainConfig(warmup_steps=2), total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(1.0)
    assert lrs[2] > lrs[3] > lrs[4] > lrs[5] > 0


def test_logger_jsonl(tmp_path):
    log = common.TrainLogger(tmp_path)
    log.log(1, reward=0.5, kl=float("nan"))
    log.log(2, reward=0.7)
    rows = common.TrainLogger(tmp_path).rows()
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["kl"] is None and rows[1]["reward"] == 0.7


def test_text_policy_lora_encoding_and_adapter_roundtrip(smollm2_path, tmp_path):
    import torch
    from peft import PeftModel

    cfg = common.TrainConfig(model=f"hf:{smollm2_path}", lora_r=4, lora_alpha=8, modality="text")
    model, tok = common.load_policy(cfg)
    assert not common.is_vlm_processor(tok)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    batch = common.encode_prompts(tok, ["If an image shows Arson, is it safe?", "Hi"], max_prompt_len=64)
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"][1, 0] == 0  # left padded
    text = tok.decode(batch["input_ids"][0], skip_special_tokens=False)
    assert "If an image shows Arson, is it safe?" in text and text.rstrip().endswith("assistant")
    # perturb the adapter so the saved one differs from the identity, then reload it
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.01)
    out = common.save_adapter(model, tmp_path / "adapter")
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    base, _ = common.load_base_model(f"hf:{smollm2_path}")
    reloaded = PeftModel.from_pretrained(base, str(out))
    model.eval()
    with torch.no_grad():
        a = model(**batch).logits
        b = reloaded(**batch).logits
    assert torch.allclose(a, b, atol=1e-4)


def test_vlm_policy_freezes_vision_and_encodes_blank_image(tiny_llava_dir):
    cfg = common.TrainConfig(model=f"hf:{tiny_llava_dir}", lora_r=4, lora_alpha=8)
    model, proc = common.load_policy(cfg)
    assert common.is_vlm_processor(proc)
    lora_modules = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    assert lora_modules and not [n for n in lora_modules if "vision_tower" in n or "projector" in n]
    assert all(not p.requires_grad for n, p in model.named_parameters() if "vision_tower" in n or "projector" in n)
    batch = common.encode_prompts(proc, ["Is this image safe for viewing on social media?"], [None])
    assert batch["pixel_values"].shape[0] == 1
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert batch["input_ids"].shape[1] < out.shape[1] <= batch["input_ids"].shape[1] + 3


def _adam_after_two_steps(seed=0):
    import torch

    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(7, 5)), torch.nn.Parameter(torch.randn(11))]
    opt = torch.optim.AdamW(params, lr=0.1)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    return params, opt


def test_optimizer_state_waits_on_disk_and_comes_back_exactly(tmp_path):
    """AdamW's moments leave memory while parked, come back bit-identical (into one flat buffer),
    and the next steps are those of an optimiser that never left; also after an error inside."""
    import torch

    params, opt = _adam_after_two_steps()
    twin_params, twin = _adam_after_two_steps()
    before = {(i, k): v.clone() for i, st in enumerate(opt.state.values()) for k, v in st.items()}
    path = tmp_path / "run" / ".optimizer-state.safetensors"
    state = common.OptimizerStateOnDisk(opt, path)
    with pytest.raises(RuntimeError, match="inside"):
        state.park()
        try:
            assert path.exists() and state.parked
            assert all(st["exp_avg"].numel() == 0 and st["exp_avg_sq"].numel() == 0 for st in opt.state.values())
            raise RuntimeError("an error inside")
        finally:
            state.restore()
    assert not path.exists()
    after = {(i, k): v for i, st in enumerate(opt.state.values()) for k, v in st.items()}
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    moments = [st["exp_avg"] for st in opt.state.values()]
    assert moments[0].untyped_storage().data_ptr() == moments[1].untyped_storage().data_ptr()  # one buffer
    torch.manual_seed(9)
    grads = [torch.randn_like(p) for p in params]
    for ps, o in ((params, opt), (twin_params, twin)):
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(params, twin_params))
    disabled = common.OptimizerStateOnDisk(opt, path, enabled=False)
    disabled.park()  # disabled: untouched, nothing written
    assert not path.exists() and all(st["exp_avg"].numel() for st in opt.state.values())
    disabled.restore()
