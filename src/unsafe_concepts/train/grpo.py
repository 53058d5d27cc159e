"""GRPO baseline: the PPO reward without a value head. For each prompt, ``num_generations`` answers
are sampled; each is scored by the judge against the item's true label with exactly PPO's scoring
(``train.ppo.judge_scores``: default -cross-entropy of the judge's probabilities vs the label,
min-max normalised within the batch), and each answer's advantage is its reward relative to the
other answers to the same prompt (group mean, divided by the group's std). KL to the frozen base
policy (adapter switched off) with coefficient ``kl_coef``, as PPO's.

Runs on TRL's ``GRPOTrainer`` with the shared LoRA policy (TRL generates with ``model.generate``;
no vLLM needed). What is ours: the reward function below (a judge call on the batch) and the
settings mapping.

Length bonus: PPO adds ``length_bonus * answer tokens / response_len`` to the terminal reward (the
protocol's 4.0). Here it is available (``length_bonus``) but 0 by default: at 4.0 it outweighs the
judge score in [0, 1], and within a group it would rank answers by length before correctness.
"""
from __future__ import annotations

from dataclasses import dataclass

from unsafe_concepts.errors import UserError
from unsafe_concepts.train import common, trl_runner


@dataclass
class GRPOConfig(common.TrainConfig):
    CPU_MICRO_BATCH = 1  # answers of up to 512 tokens: one per forward/backward on a CPU

    learning_rate: float = 3e-5  # as PPO (the protocol gives no GRPO rate)
    batch_size: int = 32  # answers per optimiser step = prompts per step x num_generations
    num_generations: int = 4  # answers sampled per prompt (the group)
    response_len: int = 512  # max answer tokens, as PPO
    temperature: float = 1.0
    kl_coef: float = 0.1  # TRL's beta
    reward: str = "neg_ce_minmax"  # one of train.ppo.REWARDS
    length_bonus: float = 0.0
    judge: str = "classifier"
    loss_type: str = "grpo"  # TRL's loss aggregation; "grpo" is the original paper's
    # answers sampled at once (whole groups); None: 8 on a CPU (2 prompts x 4), the whole batch on a GPU.
    # Smaller than batch_size means several generation rounds per optimiser step; the advantages do
    # not change (they are normalised within each prompt's group, and a group is never split).
    generation_batch_size: int | None = None
    gradient_checkpointing: bool = True  # recompute activations in the backward pass: far less memory
    deepspeed: str | None = None
    cpu_mmap_threshold: int | None = 1 << 20  # see TrainConfig (generation itself stays on the heap)
    # merge the LoRA weights into the base weights while TRL samples (unmerged after), as PPO does.
    # None: when the base weights are float32 and DeepSpeed does not partition them
    merge_for_generation: bool | None = None

    def validate(self) -> None:
        super().validate()
        from unsafe_concepts.train.ppo import REWARDS

        gen = self.generation_batch_size
        if gen is not None and (gen < 1 or gen % self.num_generations or self.batch_size % gen):
            raise UserError(f"generation_batch_size ({gen}) must be a multiple of num_generations "
                            f"({self.num_generations}) that divides batch_size ({self.batch_size})")

        if self.num_generations < 2:
            raise UserError(f"num_generations must be >= 2 (advantages compare answers to one prompt), "
                            f"got {self.num_generations}")
        if self.batch_size % self.num_generations:
            raise UserError(f"batch_size ({self.batch_size}) must be a multiple of num_generations "
                            f"({self.num_generations})")
        if self.reward not in REWARDS:
            raise UserError(f"reward must be one of {', '.join(REWARDS)}, got {self.reward!r}")
        if self.temperature <= 0 or self.response_len < 1:
            raise UserError("temperature must be > 0 and response_len >= 1")


CONFIG = GRPOConfig


def judge_reward(judge, *, task: str, kind: str, length_bonus: float = 0.0, response_len: int = 512):
    """A TRL reward function: (prompts, completions, question, label, completion_ids) -> rewards.

    ``question`` is the raw question (the judge reads it, not the chat-templated prompt)."""
    from unsafe_concepts.judges.base import JudgeItem
    from unsafe_concepts.train.ppo import judge_scores

    def reward(prompts, completions, question, label, completion_ids=None, log_metric=None, **_):
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        verdicts = judge.judge([JudgeItem(task=task, prompt=q, response=t.strip()) for q, t in zip(question, texts)])
        scores, raw = judge_scores(verdicts, label, kind)
        if kind == "neg_ce_minmax" and _world() > 1:
            # each process scores its share of the generation batch; the min-max range must be the whole
            # batch's, as on one process (a prompt's group may span processes: TRL's sampler)
            scores, _ = judge_scores(verdicts, label, kind, batch_range=_global_range(raw))
        if length_bonus and completion_ids is not None:
            scores = scores + length_bonus * scores.new_tensor([len(c) for c in completion_ids]) / response_len
        if log_metric is not None:
            log_metric("judge_accuracy", sum(v.label == lab for v, lab in zip(verdicts, label)) / len(label))
            log_metric("judge_unclear_rate", sum(v.label == "unclear" for v in verdicts) / len(label))
        return scores.tolist()

    reward.__name__ = "judge_reward"
    return reward


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _global_range(raw):
    """(min, max) of ``raw`` over every process (the tensors travel on the GPU under NCCL)."""
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else raw.device
    lo, hi = raw.min().to(device).clone(), raw.max().to(device).clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return lo.to(raw.device), hi.to(raw.device)


def build_trainer(config: GRPOConfig, items=None, judge=None):
    import trl

    items = trl_runner.load_train_items(config) if items is None else items
    model, processor = trl_runner.load_policy(config)
    rows = [{"prompt": it.prompt, "image": it.image, "question": it.prompt, "label": it.label} for it in items]
    dataset = trl_runner.to_dataset(rows, processor, answer_keys=(), conversational_vlm=True)
    dataset = dataset.add_column("question", [r["question"] for r in rows])
    dataset = dataset.add_column("label", [r["label"] for r in rows])
    if judge is None:
        from unsafe_concepts.judges import load_judge

        judge = load_judge(config.judge)
    task = "alignment_text_only" if config.modality == "text" else "alignment"  # as PPO names it
    reward = judge_reward(judge, task=task, kind=config.reward, length_bonus=config.length_bonus,
                          response_len=config.response_len)
    generation_batch = config.generation_batch_size or (
        min(8, config.batch_size) if (config.device or common.default_device()) == "cpu" else config.batch_size)
    generation_batch = max(generation_batch - generation_batch % config.num_generations, config.num_generations)
    args = trl_runner.trl_args(config, trl.GRPOConfig, num_generations=config.num_generations,
                               generation_batch_size=generation_batch,
                               max_completion_length=config.response_len, temperature=config.temperature,
                               top_p=1.0, top_k=0, beta=config.kl_coef, loss_type=config.loss_type,
                               log_completions=False)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset,
                              processing_class=processor,
                              callbacks=[common.TrainLogger(config.out_dir).callback()])
    merge = (config.merge_for_generation if config.merge_for_generation is not None
             else common.float32_base(trainer.model) and not config.deepspeed)
    if merge:  # TRL samples with model.generate inside _generate_single_turn: the merged weights serve it
        trainer._generate_single_turn = common.run_inside(trainer._generate_single_turn,
                                                          lambda: common.adapter_merged(trainer.model))
    trl_runner.return_freed_buffers(trainer, config, generation=("_generate_single_turn",))
    return trainer, processor, len(items)


def train(config, *, items=None, judge=None, quiet: bool = False) -> dict:
    """Run GRPO: ``config`` is a GRPOConfig, a dict of settings, or the ``train`` command's arguments;
    ``judge`` (a Judge) overrides ``config.judge``."""
    config = trl_runner.resolve_config(config, GRPOConfig)
    trainer, _, n = build_trainer(config, items, judge)
    return trl_runner.run(trainer, config, "grpo", n_items=n, quiet=quiet)
