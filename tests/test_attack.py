"""FGSM/PGD on VLMs: the perturbation stays in its L-inf budget in pixel space, gradients reach the image
through the processor's normalisation and the vision tower, the verdict moves toward "safe", and
`unsafe-concepts attack` writes a resumable run folder on tiny-vlm."""
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from unsafe_concepts import prompts
from unsafe_concepts.attack import AttackConfig, Attacker, reference_rates, summarize
from unsafe_concepts.cli import main
from unsafe_concepts.errors import UserError
from unsafe_concepts.models.hf import load_hf_model

sys.path.insert(0, str(Path(__file__).parent / "models"))
from tiny_vlms import build_llava  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "adversarial"


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return build_llava(tmp_path_factory.mktemp("m") / "llava")


@pytest.fixture(scope="module")
def attacker(llava_dir):
    model, processor = load_hf_model(f"hf:{llava_dir}")
    return Attacker(model, processor)


def noise_image(seed=0):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(48, 40, 3, generator=g) * 255).to(torch.uint8).numpy())


def config(method, **kw):
    c = AttackConfig(method=method, model="hf:x", data="sample", **kw)
    c.validate()
    return c


def test_pixel_space_round_trip(attacker):
    """Undoing the normalisation gives the image in [0, 1]; normalising it again gives the model input back."""
    enc = attacker.encode(prompts.alignment_prompt(0), noise_image())
    pixels = attacker.to_pixels(enc["pixel_values"])
    assert 0 <= pixels.min() and pixels.max() <= 1
    again = (pixels - attacker.mean) / attacker.std
    assert torch.allclose(again, enc["pixel_values"], atol=1e-5)


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_attack_stays_in_budget_and_raises_p_safe(attacker, method):
    for seed in range(3):
        cfg = config(method, eps=0.03, steps=5)
        out = attacker.attack(prompts.alignment_prompt(0), noise_image(seed), cfg, torch.Generator().manual_seed(seed))
        assert out["linf"] <= cfg.eps + 1e-6
        assert out["p_safe_attacked"] > out["p_safe_clean"], out  # the objective is raised


def test_gradients_do_not_touch_the_weights(attacker):
    before = {k: v.clone() for k, v in list(attacker.model.state_dict().items())[:5]}
    attacker.attack(prompts.alignment_prompt(1), noise_image(), config("fgsm"), torch.Generator().manual_seed(0))
    assert all(torch.equal(v, attacker.model.state_dict()[k]) for k, v in before.items())
    assert not any(p.requires_grad for p in attacker.model.parameters())


def test_attack_through_an_adapter(llava_dir, tmp_path):
    """A fine-tune is attacked as trained: the LoRA adapter unmerged on the frozen base, recorded."""
    from peft import LoraConfig, get_peft_model

    from unsafe_concepts.attack import run_attack

    model, _ = load_hf_model(f"hf:{llava_dir}")
    torch.manual_seed(1)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    cfg = AttackConfig(method="fgsm", model=f"hf:{llava_dir}", adapter=str(tmp_path / "adapter"), data="sample",
                       split="all", limit=1)
    metrics = run_attack(cfg, tmp_path / "run", quiet=True)
    assert metrics["n_images"] == 1 and metrics["n_errors"] == 0
    assert metrics["config"]["adapter"] == str(tmp_path / "adapter")
    assert json.loads((tmp_path / "run" / "run.json").read_text())["model_info"]["architecture"] == "LlavaForConditionalGeneration"


def test_summary_counts_success_among_images_called_unsafe():
    rows = [{"error": None, "verdict_clean": "unsafe", "verdict_attacked": "safe", "flipped": True,
             "p_safe_clean": 0.2, "p_safe_attacked": 0.6},
            {"error": None, "verdict_clean": "unsafe", "verdict_attacked": "unsafe", "flipped": False,
             "p_safe_clean": 0.1, "p_safe_attacked": 0.2},
            {"error": None, "verdict_clean": "safe", "verdict_attacked": "unsafe", "flipped": True,
             "p_safe_clean": 0.7, "p_safe_attacked": 0.4},
            {"error": "unreadable image"}]
    m = summarize(rows)
    assert m["attack_success"]["k"] == 1 and m["attack_success"]["n"] == 2
    assert m["flip_rate"]["k"] == 2 and m["flip_rate"]["n"] == 3 and m["n_errors"] == 1
    low, high = m["attack_success"]["ci95"]
    assert 0 < low < 0.5 < high < 1


@pytest.mark.skipif(not REFERENCE.exists(), reason="the reference's adversarial results are not beside the project")
def test_reference_rates_match_the_published_lists():
    rates = reference_rates(REFERENCE)
    assert rates["original_FGSM_eps0.01"]["k"] == 7 and rates["original_FGSM_eps0.01"]["n"] == 100
    assert rates["ppo_PGD_eps0.01"]["k"] == 15
    assert all(0.07 <= r["rate"] <= 0.15 for r in rates.values())


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="eps"):
        config("fgsm", eps=0)
    with pytest.raises(UserError, match="gradients"):
        AttackConfig(method="pgd", model="openai:gpt-4o", data="sample").validate()
    with pytest.raises(UserError, match="prompt-index"):
        config("pgd", prompt_index=7)


def test_cli_attack_on_tiny_vlm_writes_a_resumable_run(tmp_path, capsys):
    out = tmp_path / "fgsm"
    args = ["attack", "fgsm", "--model", "tiny-vlm", "--data", "sample", "--split", "all", "--limit", "2",
            "--eps", "0.01", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "attack success" in printed and "flip rate" in printed
    rows = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["error"] is None and r["label"] == "unsafe" for r in rows)
    assert all(r["linf"] <= 0.01 + 1e-6 and r["verdict_attacked"] in ("safe", "unsafe") for r in rows)
    assert all(0 < r["p_safe_clean"] < 1 and 0 < r["p_safe_attacked"] < 1 for r in rows)
    record = json.loads((out / "run.json").read_text())
    assert record["kind"] == "attack" and record["config"]["model"] == "tiny-vlm"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 2 and metrics["config"]["method"] == "fgsm"

    assert main(args) == 0  # resumed: nothing left to attack, same rows
    assert len((out / "responses.jsonl").read_text().splitlines()) == 2
    assert main([*args[:-4], "--eps", "0.02", "--out", str(out)]) == 2  # other settings: refused
    assert "eps" in capsys.readouterr().err

    assert main(["attack", "table", str(out)]) == 0
    assert "FGSM" in capsys.readouterr().out
    # `report` does not mistake it for an unjudged evaluation run: it points to `attack table`.
    main(["report", str(out), "--out", str(tmp_path / "report")])
    assert "attack table" in capsys.readouterr().err
