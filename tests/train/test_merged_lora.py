"""LoRA trained through merged weights (train/merged_lora.py) against PEFT's own unmerged LoRA layers.

The reference here is PEFT's forward and autograd's backward through it, on a tiny random Llama built
from its transformers config: the merged path must give the same loss and the same gradients for
both LoRA matrices, with and without gradient checkpointing, and leave the model as it found it."""
import pytest
import torch

from unsafe_concepts.train.merged_lora import merged_lora_training

pytest.importorskip("peft")


def _tiny_lora(dropout: float = 0.0, adapters=("default",)):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=97, max_position_embeddings=64)
    lora = dict(r=8, lora_alpha=16, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(**lora), adapter_name=adapters[0])
    for name in adapters[1:]:
        model.add_adapter(name, LoraConfig(**lora))
    for n, p in model.named_parameters():  # B starts at zero in PEFT: make both matrices matter
        if "lora_" in n:
            p.requires_grad_(True)
            with torch.no_grad():
                p.normal_(0, 0.2)
    return model


def _loss_and_grads(model, ids, checkpointing: bool, merged: bool, adapter: str = "default"):
    model.set_adapter(adapter)
    base = model.get_base_model()
    enable = getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable
    disable = getattr(base, "activation_checkpointing_disable", None) or base.gradient_checkpointing_disable
    if checkpointing:
        kwarg = "activation" if enable.__name__.startswith("activation") else "gradient"
        enable(**{f"{kwarg}_checkpointing_kwargs": {"use_reentrant": False}})
    else:
        disable()
    model.train()
    for p in model.parameters():
        p.grad = None
    with merged_lora_training(model, adapter, enabled=merged) as switched:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads, switched


@pytest.mark.parametrize("checkpointing", [False, True])
def test_same_loss_and_gradients_as_peft(checkpointing):
    model = _tiny_lora()
    ids = torch.randint(0, 97, (3, 17))
    loss_ref, g_ref, _ = _loss_and_grads(model, ids, checkpointing, merged=False)
    loss, g, switched = _loss_and_grads(model, ids, checkpointing, merged=True)
    assert switched == 2 * 7  # every targeted linear layer of both decoder layers
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    assert g.keys() == g_ref.keys() and any("lora_A" in n for n in g) and any("lora_B" in n for n in g)
    for name in g_ref:
        assert torch.allclose(g[name], g_ref[name], rtol=1e-4, atol=1e-6), name


def test_other_adapter_is_untouched_and_gets_no_gradient():
    model = _tiny_lora(adapters=("default", "value"))
    ids = torch.randint(0, 97, (2, 9))
    loss_ref, g_ref, _ = _loss_and_grads(model, ids, False, merged=False, adapter="value")
    loss, g, _ = _loss_and_grads(model, ids, False, merged=True, adapter="value")
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    assert g.keys() == g_ref.keys()
    assert g and all(".value." in n for n in g)  # the policy adapter ("default") receives nothing
    for name in g_ref:
        assert torch.allclose(g[name], g_ref[name], rtol=1e-4, atol=1e-6), name


def test_model_restored_on_exit_even_after_an_error():
    model = _tiny_lora()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        out_before = model(input_ids=ids).logits
    with pytest.raises(RuntimeError, match="boom"):
        with merged_lora_training(model, "default"):
            assert any(getattr(m, "merged", False) for m in model.modules())
            raise RuntimeError("boom")
    layers = [m for m in model.modules() if hasattr(m, "lora_A")]
    assert layers and not any(m.merged for m in layers)
    assert not any("forward" in m.__dict__ for m in layers)  # PEFT's own forward again
    for n, p in model.named_parameters():  # the base weights went through W + dW - dW in float32
        assert torch.allclose(p, before[n], atol=1e-6), n
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, out_before, atol=1e-5)


def test_layers_it_cannot_run_exactly_are_left_to_peft():
    model = _tiny_lora(dropout=0.1)  # LoRA dropout draws a mask on the LoRA branch only: no merged form
    with merged_lora_training(model, "default") as switched:
        assert switched == 0
        assert not any(getattr(m, "merged", False) for m in model.modules())
    with merged_lora_training(model, "default", enabled=False) as switched:
        assert switched == 0
