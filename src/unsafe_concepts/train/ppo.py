"""Response-reward PPO: the paper's alignment method, written out (TRL 1.x has no PPO trainer).

One step:
1. **Rollout** - sample an answer for each of ``rollout_batch_size`` prompts from the LoRA policy
   (temperature ``temperature``, no top-k/top-p truncation, so the log-probabilities are exactly
   those of the distribution sampled from), at most ``response_len`` tokens, cut after EOS.
2. **Score** - a judge reads each answer against the item's true label (safe/unsafe). Default
   reward (the paper's): ``-cross_entropy(judge probs, label)`` min-max normalised within the
   batch; alternatives ``prob_correct`` and ``verdict_match``. A length bonus
   ``non-pad response tokens / response_len * length_bonus`` is added to this terminal score.
3. **Reference** - log-probabilities of the same tokens under the frozen base model, computed by
   the same weights with the adapter switched off (``model.disable_adapter()``): no model copy.
4. **Rewards and advantages** - per-token reward ``-kl_coef * (log pi - log pi_ref)``, terminal
   score on the last answer token; GAE(gamma, lam) over the answer with a value head (a linear
   layer on the policy's last hidden state); advantages whitened.
5. **Update** - ``ppo_epochs`` passes over the rollout in mini-batches: clipped policy loss,
   clipped value loss (``vf_coef``), entropy bonus (``entropy_coef``), gradient clipping,
   AdamW, linear warm-up then cosine decay.

Checkpoints (adapter, value head, optimiser, scheduler, RNG states, step) are written every
``save_steps`` steps; the same command resumes a run killed mid-way. The final adapter is saved as
a standard PEFT folder at the top of ``out_dir``: ``unsafe-concepts evaluate --adapter OUT`` loads it.

The pure functions at the top (GAE, whitening, losses, KL) carry the maths and are unit-tested
against hand-computed numbers; :class:`PPOTrainer` wires them to a model.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from unsafe_concepts.errors import UserError
from unsafe_concepts.train import common
from unsafe_concepts.train.data import TrainItem

REWARDS = ("neg_ce_minmax", "prob_correct", "verdict_match")
CHECKPOINTS = "checkpoints"
VALUE_HEAD_FILE = "value_head.safetensors"
_EPS = 1e-8


@dataclass
class PPOConfig(common.TrainConfig):
    """PPO settings; defaults are the protocol's (``training.ppo``) unless stated.

    One step = one rollout of ``rollout_batch_size`` prompts; ``epochs`` counts passes over the
    training items (unless ``max_steps``); the inherited ``batch_size`` is not used by PPO."""

    learning_rate: float = 3e-5
    kl_coef: float = 0.1
    entropy_coef: float = 0.02
    # NOTE: rewards long answers: a full-length answer earns +length_bonus whatever it says, which
    # at the protocol's 4.0 outweighs the judge score (in [0, 1]) - see docs/training.md.
    length_bonus: float = 4.0
    rollout_batch_size: int = 32
    mini_batch_size: int = 8  # PPO update mini-batch (one optimiser step each); not in the protocol
    ppo_epochs: int = 1
    response_len: int = 512
    temperature: float = 1.0
    whiten_rewards: bool = False
    whiten_advantages: bool = True
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    max_grad_norm: float = 1.0
    reward: str = "neg_ce_minmax"
    judge: str = "classifier"

    def validate(self) -> None:
        super().validate()
        if self.reward not in REWARDS:
            raise UserError(f"reward must be one of {', '.join(REWARDS)}, got {self.reward!r}")
        if self.temperature <= 0:
            raise UserError("PPO samples its rollouts: temperature must be > 0")
        for name in ("rollout_batch_size", "mini_batch_size", "ppo_epochs", "response_len"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise UserError("gamma and lam must be in [0, 1]")


CONFIG = PPOConfig


# ============================================================================ the maths (pure)
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries (unbiased variance); ``shift_mean=False`` keeps the mean."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    white = (x - mean) * torch.rsqrt(var + _EPS)
    if not shift_mean:
        white = white + mean
    return white * mask.to(x.dtype)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) per position: logits (B, L, V), tokens (B, L) -> (B, L)."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution per position: (B, L, V) -> (B, L)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate on tokens sampled from pi.

    ``k1`` = log pi - log pi_ref (unbiased, can be negative per token; the reward penalty);
    ``k3`` = (r - 1) - log r with r = pi_ref / pi (unbiased, always >= 0; for logging)."""
    diff = logp - ref_logp
    if kind == "k1":
        return diff
    if kind == "k3":
        return torch.expm1(-diff) + diff
    raise ValueError(f"unknown KL estimator {kind!r}")


def per_token_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                      kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards, kl): ``-kl_coef * k1`` on every answer token, plus ``scores`` on the last one."""
    mask = mask.to(logp.dtype)
    kl = kl_estimate(logp, ref_logp, "k1") * mask
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded answers: (advantages, returns).

    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last answer token is 0);
    A_t = delta_t + gamma * lam * A_{t+1}; returns = A + V."""
    mask = mask.to(values.dtype)
    values, rewards = values * mask, rewards * mask
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                cliprange: float) -> tuple[torch.Tensor, dict]:
    """PPO clipped surrogate: mean over answer tokens of max(-A r, -A clip(r, 1-eps, 1+eps))."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(loss_unclipped, loss_clipped), mask)
    stats = {"clipfrac": masked_mean((loss_clipped > loss_unclipped).float(), mask).item(),
             "approx_kl": masked_mean(0.5 * log_ratio ** 2, mask).item()}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float) -> tuple[torch.Tensor, dict]:
    """Clipped value loss: 0.5 * mean max((V - R)^2, (V_old + clip(V - V_old, +-eps) - R)^2)."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(loss_unclipped, loss_clipped), mask)
    return loss, {"vf_clipfrac": masked_mean((loss_clipped > loss_unclipped).float(), mask).item()}


def length_bonus(mask: torch.Tensor, response_len: int, coef: float) -> torch.Tensor:
    """The protocol's bonus: non-pad answer tokens / response_len * coef, per answer."""
    return mask.to(torch.float32).sum(1) / response_len * coef


def judge_scores(verdicts, labels: Sequence[str], kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, raw): the reward of each answer from its verdict and the item's true label.

    ``neg_ce_minmax`` (the paper's): raw = log p_judge(true label) = -cross-entropy, then min-max
    normalised to [0, 1] within the batch (all equal -> all 0). ``prob_correct``: p_judge(true label).
    ``verdict_match``: 1 if the verdict is the label else 0. A judge without probabilities (``rule``)
    counts as one-hot on its verdict, smoothed by 1e-3 so the log stays finite."""
    probs = []
    for v, label in zip(verdicts, labels):
        if v.probs:
            p = float(v.probs.get(label, 0.0))
        else:
            p = 1.0 - 2e-3 if v.label == label else 1e-3
        probs.append(p)
    p = torch.tensor(probs, dtype=torch.float32)
    if kind == "neg_ce_minmax":
        raw = torch.log(p.clamp(min=1e-6))
        lo, hi = raw.min(), raw.max()
        return (raw - lo) / (hi - lo) if hi - lo > _EPS else torch.zeros_like(raw), raw
    if kind == "prob_correct":
        return p, p
    if kind == "verdict_match":
        match = torch.tensor([float(v.label == label) for v, label in zip(verdicts, labels)])
        return match, match
    raise ValueError(f"unknown reward {kind!r}")


# ============================================================================ model pieces
class ValueHead(nn.Module):
    """V(s_t) = w . h_t + b on the policy's last hidden state (trained; saved with checkpoints)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.summary.weight, std=1.0 / math.sqrt(hidden_size + 1))
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


def hidden_size_of(model) -> int:
    cfg = model.config
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(text.hidden_size)


def eos_token_ids(model, tokenizer) -> list[int]:
    ids = set()
    gen = getattr(model, "generation_config", None)
    for source in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(x) for x in source)
    return sorted(ids)


def response_mask(responses: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """1 for answer tokens up to and including the first EOS, 0 after (pad may equal EOS)."""
    is_eos = torch.zeros_like(responses, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= responses == e
    # number of EOS tokens strictly before each position
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return (before == 0).long()


# ============================================================================ the trainer
@dataclass
class Rollout:
    query: dict  # encoded prompt batch (input_ids, attention_mask[, pixel_values])
    responses: torch.Tensor  # (B, L) sampled tokens, pad after the end
    mask: torch.Tensor  # (B, L) answer tokens
    logp: torch.Tensor
    ref_logp: torch.Tensor
    values: torch.Tensor
    texts: list[str]


class PPOTrainer:
    """PPO on a LoRA policy with a value head, a judge as reward model, the adapter-off model as reference."""

    def __init__(self, config: PPOConfig, items: list[TrainItem], *, judge=None, model=None, processor=None,
                 quiet: bool = False):
        config.validate()
        if not items:
            raise UserError("PPO needs at least one training item")
        self.config, self.items, self.quiet = config, items, quiet
        self.out = Path(config.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        if model is None:
            model, processor = common.load_policy(config)
        self.model, self.processor = model, processor
        self.tokenizer = common.tokenizer_of(processor)
        self.model.eval()  # dropout off: old and new log-probs must agree before any update (as TRL)
        self.device = next(self.model.parameters()).device
        self.value_head = ValueHead(hidden_size_of(self.model)).to(self.device)
        if judge is None:
            from unsafe_concepts.judges import load_judge

            judge = load_judge(config.judge)
        self.judge = judge
        self.task = "alignment_text_only" if config.modality == "text" else "alignment"
        self.eos_ids = eos_token_ids(self.model, self.tokenizer)
        self.params = [p for p in self.model.parameters() if p.requires_grad] + list(self.value_head.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.steps_per_epoch = max(1, math.ceil(len(items) / config.rollout_batch_size))
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        minibatches = math.ceil(min(config.rollout_batch_size, len(items)) / config.mini_batch_size)
        self.scheduler = common.make_scheduler(self.optimizer, config, self.total_steps * config.ppo_epochs * minibatches)
        self.logger = common.TrainLogger(self.out)
        self.step = 0

    # ------------------------------------------------------------------ data order
    def batch_for_step(self, step: int) -> list[TrainItem]:
        """The items of rollout ``step``: a seeded permutation per epoch, so resuming needs only the step."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order = list(range(len(self.items)))
        random.Random(self.config.seed * 1_000_003 + epoch).shuffle(order)
        size = self.config.rollout_batch_size
        return [self.items[i] for i in order[k * size:(k + 1) * size]]

    # ------------------------------------------------------------------ forward passes
    def _forward(self, query: dict, responses: torch.Tensor, mask: torch.Tensor, *, with_values: bool,
                 with_entropy: bool = False):
        """log-probs (and values, entropy) of ``responses`` given the query, one pass."""
        input_ids = torch.cat([query["input_ids"], responses], dim=1)
        attention = torch.cat([query["attention_mask"], mask.to(query["attention_mask"].dtype)], dim=1)
        # positions count real tokens only, as generate() does with left padding
        position_ids = (attention.long().cumsum(-1) - 1).clamp(min=0)
        extra = {k: v for k, v in query.items() if k not in ("input_ids", "attention_mask")}
        out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                         output_hidden_states=with_values, use_cache=False, **extra)
        p = query["input_ids"].shape[1]
        logits = out.logits[:, p - 1:-1, :] / self.config.temperature
        logp = logprobs_from_logits(logits, responses)
        values = self.value_head(out.hidden_states[-1][:, p - 1:-1, :]) if with_values else None
        entropy = entropy_from_logits(logits) if with_entropy else None
        return logp, values, entropy

    def reference_logprobs(self, query: dict, responses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log pi_ref: the same weights with the LoRA adapter switched off - no second model in memory."""
        with self.model.disable_adapter():
            ref, _, _ = self._forward(query, responses, mask, with_values=False)
        return ref

    def _slice(self, query: dict, idx: slice) -> dict:
        return {k: v[idx] for k, v in query.items()}

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def rollout(self, batch: list[TrainItem]) -> Rollout:
        from transformers import GenerationConfig

        cfg = self.config
        query = common.encode_prompts(self.processor, [it.prompt for it in batch],
                                      [it.image for it in batch] if cfg.modality == "image" else None,
                                      max_prompt_len=cfg.max_prompt_len)
        query = {k: v.to(self.device) for k, v in query.items()}
        gen = GenerationConfig(do_sample=True, temperature=cfg.temperature, top_k=0, top_p=1.0,
                               max_new_tokens=cfg.response_len, pad_token_id=self.tokenizer.pad_token_id,
                               eos_token_id=self.eos_ids)
        sequences = self.model.generate(**query, generation_config=gen)
        responses = sequences[:, query["input_ids"].shape[1]:]
        if responses.shape[1] == 0:  # every answer ended at once: keep one (EOS) token per row
            responses = torch.full((len(batch), 1), self.eos_ids[0], device=self.device)
        mask = response_mask(responses, self.eos_ids)
        responses = torch.where(mask.bool(), responses, torch.full_like(responses, self.tokenizer.pad_token_id))
        logps, refs, values = [], [], []
        for start in range(0, len(batch), cfg.mini_batch_size):
            s = slice(start, start + cfg.mini_batch_size)
            lp, v, _ = self._forward(self._slice(query, s), responses[s], mask[s], with_values=True)
            ref = self.reference_logprobs(self._slice(query, s), responses[s], mask[s])
            logps.append(lp), refs.append(ref), values.append(v)
        texts = [self.tokenizer.decode(r[m.bool()], skip_special_tokens=True).strip()
                 for r, m in zip(responses, mask)]
        return Rollout(query, responses, mask, torch.cat(logps), torch.cat(refs), torch.cat(values), texts)

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: list[TrainItem]) -> dict:
        cfg = self.config
        t0 = time.perf_counter()
        ro = self.rollout(batch)
        t_rollout = time.perf_counter() - t0
        from unsafe_concepts.judges.base import JudgeItem

        verdicts = self.judge.judge([JudgeItem(task=self.task, prompt=it.prompt, response=text)
                                     for it, text in zip(batch, ro.texts)])
        labels = [it.label for it in batch]
        scores, raw = judge_scores(verdicts, labels, cfg.reward)
        scores = scores.to(self.device)
        bonus = length_bonus(ro.mask, cfg.response_len, cfg.length_bonus).to(self.device)
        terminal = scores + bonus
        rewards, kl = per_token_rewards(terminal, ro.logp, ro.ref_logp, ro.mask, cfg.kl_coef)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, ro.mask, shift_mean=False)
        advantages, returns = gae(rewards, ro.values, ro.mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, ro.mask)

        stats: dict[str, list[float]] = {}
        n = len(batch)
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(n)
            for start in range(0, n, cfg.mini_batch_size):
                idx = order[start:start + cfg.mini_batch_size]
                query = {k: v[idx] for k, v in ro.query.items()}
                m = ro.mask[idx]
                logp, values, entropy = self._forward(query, ro.responses[idx], m, with_values=True, with_entropy=True)
                pg, pg_stats = policy_loss(logp, ro.logp[idx], advantages[idx], m, cfg.cliprange)
                vf, vf_stats = value_loss(values, ro.values[idx], returns[idx], m, cfg.cliprange_value)
                ent = masked_mean(entropy, m)
                loss = pg + cfg.vf_coef * vf - cfg.entropy_coef * ent
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                for key, val in {"pg_loss": pg.item(), "vf_loss": vf.item(), "entropy": ent.item(),
                                 "grad_norm": float(grad_norm), **pg_stats, **vf_stats}.items():
                    stats.setdefault(key, []).append(val)

        lengths = ro.mask.sum(1).float()
        accuracy = sum(v.label == lab for v, lab in zip(verdicts, labels)) / n
        metrics = {
            "reward": terminal.mean().item(),  # what the policy is trained on (score + length bonus)
            "score": scores.mean().item(),  # judge-based part, after normalisation
            "score_raw": raw.mean().item(),
            "kl": kl.sum(1).mean().item(),  # k1 per answer, summed over tokens
            "kl_k3": (kl_estimate(ro.logp, ro.ref_logp, "k3") * ro.mask).sum(1).mean().item(),
            "accuracy": accuracy,
            "unclear_rate": sum(v.label == "unclear" for v in verdicts) / n,
            "response_len": lengths.mean().item(),
            "lr": self.scheduler.get_last_lr()[0],
            "rollout_s": round(t_rollout, 2),
            "step_s": round(time.perf_counter() - t0, 2),
            **{k: sum(v) / len(v) for k, v in stats.items()},
        }
        metrics["sample"] = {"prompt": batch[0].prompt, "label": labels[0], "response": ro.texts[0][:300],
                             "verdict": verdicts[0].label}
        return metrics

    # ------------------------------------------------------------------ loop
    def train(self) -> dict:
        from tqdm.auto import tqdm

        self.resume()
        cfg = self.config
        bar = tqdm(total=self.total_steps, initial=self.step, desc="ppo", disable=self.quiet, dynamic_ncols=True)
        last = {}
        while self.step < self.total_steps:
            batch = self.batch_for_step(self.step)
            last = self.train_step(batch)
            self.step += 1
            if self.step % cfg.logging_steps == 0 or self.step == self.total_steps:
                self.logger.log(self.step, epoch=(self.step - 1) // self.steps_per_epoch, **last)
            bar.update(1)
            bar.set_postfix(reward=f"{last['reward']:.3f}", acc=f"{last['accuracy']:.2f}", kl=f"{last['kl']:.3f}",
                            len=f"{last['response_len']:.0f}")
            if self.step % cfg.save_steps == 0 and self.step < self.total_steps:
                self.save_checkpoint()
        bar.close()
        self.save_final()
        return {"steps": self.step, "out_dir": str(self.out), "last": {k: v for k, v in last.items() if k != "sample"}}

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_dir(self, step: int) -> Path:
        return self.out / CHECKPOINTS / f"step-{step:06d}"

    def save_checkpoint(self) -> Path:
        """Adapter, value head, optimiser, scheduler, RNG states and step; older checkpoints removed."""
        from safetensors.torch import save_file

        final = self._checkpoint_dir(self.step)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save_pretrained(tmp / "adapter")
        save_file(self.value_head.state_dict(), str(tmp / VALUE_HEAD_FILE))
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}, tmp / "trainer_state.pt")
        common.write_json(tmp / "state.json", {"step": self.step, "total_steps": self.total_steps,
                                               "config": self.config.to_dict()})
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # a checkpoint folder without .tmp is complete
        for old in (self.out / CHECKPOINTS).glob("step-*"):
            if old != final and not old.name.endswith(".tmp"):
                shutil.rmtree(old, ignore_errors=True)
        return final

    def latest_checkpoint(self) -> Path | None:
        found = sorted(p for p in (self.out / CHECKPOINTS).glob("step-*")
                       if not p.name.endswith(".tmp") and (p / "state.json").exists())
        return found[-1] if found else None

    def resume(self) -> bool:
        """Restore the latest checkpoint in ``out_dir`` if any; True when resumed."""
        ckpt = self.latest_checkpoint()
        if ckpt is None:
            return False
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        state = json.loads((ckpt / "state.json").read_text())
        saved = state.get("config", {})
        for key in ("model", "modality", "lora_r", "lora_alpha", "data", "seed", "rollout_batch_size"):
            if key in saved and saved[key] != getattr(self.config, key):
                raise UserError(f"{self.out} holds a run with {key}={saved[key]!r}, not {getattr(self.config, key)!r}: "
                                "use a new --out folder, or the same settings to resume")
        adapter = load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(self.model, adapter)
        if getattr(result, "unexpected_keys", None):
            raise UserError(f"checkpoint {ckpt} does not fit this model: {result.unexpected_keys[:3]}")
        self.value_head.load_state_dict(load_file(str(ckpt / VALUE_HEAD_FILE)))
        trainer_state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        self.optimizer.load_state_dict(trainer_state["optimizer"])
        self.scheduler.load_state_dict(trainer_state["scheduler"])
        torch.set_rng_state(trainer_state["rng"]["torch"])
        random.setstate(trainer_state["rng"]["python"])
        self.step = int(state["step"])
        # steps logged after this checkpoint were lost with the killed process: drop them, they rerun
        rows = [r for r in self.logger.rows() if r.get("step", 0) <= self.step]
        self.logger.path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        if not self.quiet:
            print(f"resumed from {ckpt} (step {self.step}/{self.total_steps})")
        return True

    def save_final(self) -> Path:
        """The adapter at the top of out_dir (loadable with --adapter), plus the value head."""
        from safetensors.torch import save_file

        common.save_adapter(self.model, self.out)
        save_file(self.value_head.state_dict(), str(self.out / VALUE_HEAD_FILE))
        self.save_checkpoint()
        return self.out


def train(config: PPOConfig, *, items: list[TrainItem] | None = None, judge=None, quiet: bool = False) -> dict:
    """Run PPO as configured (the ``train ppo`` command); items default to the configured data."""
    from unsafe_concepts.train.data import load_items

    if items is None:
        items = load_items(config.data, modality=config.modality, split="train", safe=config.safe_data,
                           seed=config.data_seed)
    return PPOTrainer(config, items, judge=judge, quiet=quiet).train()
