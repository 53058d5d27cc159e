"""LoRA trained through merged weights: one matrix product per layer in the forward pass, not three.

A LoRA layer computes ``y = x W^T + s (x A^T) B^T`` (W frozen; A, B trained; s the scaling). PEFT
runs it as written: three matrix products forward, and in the backward pass the input gradient
through the base weight *and* through B and A. At the protocol's rank (r=128 on SmolLM2's 576-wide
layers) the two thin products cost 40% of the base one, and under gradient checkpointing the
forward pass runs twice.

Inside :func:`merged_lora_training` every vanilla LoRA linear layer of the given adapter has
``s B A`` added into W (PEFT's own ``merge``), and runs :class:`MergedLoRALinear` instead:

- forward: ``y = x W'^T`` with W' = W + s B A - the same output as the unmerged layer (up to float32
  rounding);
- backward: ``dx = dy W'`` (exactly the unmerged layer's input gradient: dy W + s (dy B) A),
  ``dB = s dy^T (x A^T)``, ``dA = s (dy B)^T x`` - the same gradients PEFT computes.

So a training step does the same maths with fewer, larger matrix products (the update pass of PPO
on a CPU: see docs/training.md for the measurement). Weights are unmerged on exit, whatever happens
inside. Only float32 base weights: in bfloat16 the merge/unmerge round trip would drift the frozen
weights step after step (the same rule as ``PPOConfig.merge_for_generation``). Layers it cannot run
this way (LoRA variants such as DoRA, a LoRA bias, dropout p > 0, fan-in-fan-out weights) are left
unmerged and run PEFT's own forward.
"""
from __future__ import annotations

import contextlib
import types

import torch
import torch.nn as nn
import torch.nn.functional as F


class MergedLoRALinear(torch.autograd.Function):
    """y = x W'^T + bias with W' = W + s B A already in ``weight``; gradients for x, A and B."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float):
        ctx.save_for_backward(x, weight, lora_a, lora_b)
        ctx.scaling = scaling
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, lora_a, lora_b = ctx.saved_tensors
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
        x2 = x.reshape(-1, x.shape[-1])
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        s = ctx.scaling
        grad_b = (g2.t() @ (x2 @ lora_a.t())).mul_(s) if ctx.needs_input_grad[4] else None
        grad_a = ((g2 @ lora_b).t() @ x2).mul_(s) if ctx.needs_input_grad[3] else None
        return grad_x, None, None, grad_a, grad_b, None


def _mergeable(module, adapter: str) -> bool:
    """A plain LoRA linear layer of ``adapter`` whose merged forward is exactly the formula above."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    if not isinstance(module, LoraLinear) or adapter not in module.lora_A:
        return False
    dropout = module.lora_dropout[adapter]
    return (adapter not in getattr(module, "lora_variant", {})
            and not getattr(module, "lora_bias", {}).get(adapter, False)
            and not module.fan_in_fan_out
            and not module.merged
            and (isinstance(dropout, nn.Identity) or getattr(dropout, "p", 1.0) == 0.0)
            and module.get_base_layer().weight.dtype == torch.float32
            and module.lora_A[adapter].weight.dtype == torch.float32)


def _merged_forward(adapter: str):
    def forward(self, x, *args, **kwargs):
        base = self.get_base_layer()
        return MergedLoRALinear.apply(x.to(base.weight.dtype), base.weight, base.bias,
                                      self.lora_A[adapter].weight, self.lora_B[adapter].weight,
                                      float(self.scaling[adapter]))
    return forward


@contextlib.contextmanager
def merged_lora_training(model, adapter: str, enabled: bool = True):
    """Inside: ``adapter``'s LoRA layers train through merged weights (see the module docstring).

    Yields the number of layers switched. The adapter's parameters must not change inside (take
    the optimiser step after leaving): the merged weight holds the values they had on entry."""
    if not enabled:
        yield 0
        return
    switched = []
    try:
        with torch.no_grad():
            for module in model.modules():
                if _mergeable(module, adapter):
                    module.merge(adapter_names=[adapter])
                    module.forward = types.MethodType(_merged_forward(adapter), module)
                    switched.append(module)
        yield len(switched)
    finally:
        with torch.no_grad():
            for module in switched:
                module.__dict__.pop("forward", None)
                module.unmerge()
