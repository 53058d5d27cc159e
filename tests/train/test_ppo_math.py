"""The PPO maths against numbers computed by hand (the comments show the arithmetic)."""
import math

import pytest
import torch

from unsafe_concepts.judges.base import Verdict
from unsafe_concepts.train import ppo


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


def test_gae_full_answer():
    # gamma=1, lam=0.95; V after the last token is 0
    # t=2: delta = 1 + 0 - 0.7 = 0.3                      A2 = 0.3
    # t=1: delta = 0 + 0.7 - 0.6 = 0.1                    A1 = 0.1 + 0.95 * 0.3   = 0.385
    # t=0: delta = 0 + 0.6 - 0.5 = 0.1                    A0 = 0.1 + 0.95 * 0.385 = 0.46575
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = ppo.gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.95)
    assert close(adv, [[0.46575, 0.385, 0.3]])
    assert close(ret, [[0.96575, 0.985, 1.0]])


def test_gae_ignores_padding_after_the_answer():
    # answer of 2 tokens; the padded value 9.9 must not leak in. gamma=0.9, lam=0.5
    # t=1: delta = 2 + 0.9 * 0 - 0.4 = 1.6                A1 = 1.6
    # t=0: delta = 0 + 0.9 * 0.4 - 0.2 = 0.16             A0 = 0.16 + 0.45 * 1.6 = 0.88
    rewards = torch.tensor([[0.0, 2.0, 5.0]])
    values = torch.tensor([[0.2, 0.4, 9.9]])
    adv, ret = ppo.gae(rewards, values, torch.tensor([[1, 1, 0]]), gamma=0.9, lam=0.5)
    assert close(adv, [[0.88, 1.6, 0.0]])
    assert close(ret, [[1.08, 2.0, 0.0]])


def test_whitening():
    # mean 2.5, unbiased var (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3, std 1.2909944
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    w = ppo.masked_whiten(x, torch.ones(1, 4))
    assert close(w, [[-1.1618950, -0.3872983, 0.3872983, 1.1618950]])
    # masked: the 100 is ignored -> mean 2, var (1 + 0 + 1) / 2 = 1
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    assert close(ppo.masked_whiten(x, m), [[-1.0, 0.0, 1.0, 0.0]], tol=1e-4)
    assert close(ppo.masked_whiten(x, m, shift_mean=False), [[1.0, 2.0, 3.0, 0.0]], tol=1e-4)


def test_clipped_policy_loss():
    # ratios 1.5, 0.5, 1.1; advantages 1, -1, 2; clip 0.2
    # token 1: max(-1.5, -1.2) = -1.2 (clipped)  token 2: max(0.5, 0.8) = 0.8 (clipped)
    # token 3: max(-2.2, -2.2) = -2.2            mean = -2.6 / 3
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    loss, stats = ppo.policy_loss(new, old, adv, torch.ones(1, 3), cliprange=0.2)
    assert loss.item() == pytest.approx(-2.6 / 3, abs=1e-5)
    assert stats["clipfrac"] == pytest.approx(2 / 3)
    # approx_kl = mean(0.5 * log(r)^2) = 0.5 * (0.164402 + 0.480453 + 0.009084) / 3
    assert stats["approx_kl"] == pytest.approx(0.108990, abs=1e-5)


def test_policy_loss_gradient_is_zero_where_clipped():
    new = torch.log(torch.tensor([[1.5, 1.1]])).requires_grad_()
    adv = torch.tensor([[1.0, 1.0]])
    loss, _ = ppo.policy_loss(new, torch.zeros(1, 2), adv, torch.ones(1, 2), cliprange=0.2)
    loss.backward()
    # d/dlogp of -A * r / 2 = -r / 2 for the unclipped token; 0 for the clipped one
    assert close(new.grad, [[0.0, -0.55]])


def test_clipped_value_loss():
    # v=1.0, old 0.5, R=2.0: clipped v = 0.7 -> max((1-2)^2, (0.7-2)^2) = 1.69
    # v=0.0, old 0.5, R=0.4: clipped v = 0.3 -> max(0.16, 0.01) = 0.16
    # loss = 0.5 * (1.69 + 0.16) / 2 = 0.4625
    loss, stats = ppo.value_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[2.0, 0.4]]),
                                 torch.ones(1, 2), cliprange_value=0.2)
    assert loss.item() == pytest.approx(0.4625)
    assert stats["vf_clipfrac"] == pytest.approx(0.5)


def test_kl_estimates_and_per_token_rewards():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    assert close(ppo.kl_estimate(logp, ref, "k1"), [[0.5, -1.0]])
    # k3 = exp(-d) - 1 + d: d=0.5 -> 0.6065307 - 0.5 = 0.1065307; d=-1 -> e - 2 = 0.7182818
    assert close(ppo.kl_estimate(logp, ref, "k3"), [[0.1065307, 0.7182818]])
    # rewards: -0.1 * k1 per token, score 2.0 added on the last answer token; padding 0
    rewards, kl = ppo.per_token_rewards(torch.tensor([2.0]), torch.tensor([[-1.0, -2.0, -3.0]]),
                                        torch.tensor([[-1.5, -1.0, -3.0]]), torch.tensor([[1, 1, 0]]), kl_coef=0.1)
    assert close(rewards, [[-0.05, 2.1, 0.0]])
    assert close(kl, [[0.5, -1.0, 0.0]])


def test_length_bonus_entropy_and_response_mask():
    assert close(ppo.length_bonus(torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]), 4, 4.0), [2.0, 4.0])
    assert ppo.entropy_from_logits(torch.zeros(1, 1, 4)).item() == pytest.approx(math.log(4))
    responses = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 2, 2, 2]])
    assert ppo.response_mask(responses, [2]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert close(ppo.logprobs_from_logits(torch.zeros(1, 2, 4), torch.tensor([[0, 3]])), [[-math.log(4)] * 2])


def test_judge_scores():
    verdicts = [Verdict("unsafe", probs={"safe": 0.05, "unsafe": 0.9, "unclear": 0.05}),
                Verdict("safe", probs={"safe": 0.5, "unsafe": 0.3, "unclear": 0.2}),
                Verdict("unclear", probs={"safe": 0.1, "unsafe": 0.2, "unclear": 0.7})]
    labels = ["unsafe", "safe", "safe"]
    # -CE = log p(label) = log 0.9, log 0.5, log 0.1 = -0.1053605, -0.6931472, -2.3025851
    # min-max: 1, (2.3025851 - 0.6931472) / (2.3025851 - 0.1053605) = 0.7324868, 0
    scores, raw = ppo.judge_scores(verdicts, labels, "neg_ce_minmax")
    assert close(raw, [-0.1053605, -0.6931472, -2.3025851])
    assert close(scores, [1.0, 0.7324868, 0.0])
    assert close(ppo.judge_scores(verdicts, labels, "prob_correct")[0], [0.9, 0.5, 0.1])
    assert close(ppo.judge_scores(verdicts, labels, "verdict_match")[0], [1.0, 1.0, 0.0])
    # all equal -> no preference (zeros), not a division by zero
    same = [Verdict("safe", probs={"safe": 0.5}), Verdict("safe", probs={"safe": 0.5})]
    assert close(ppo.judge_scores(same, ["safe", "safe"], "neg_ce_minmax")[0], [0.0, 0.0])
    # a judge without probabilities (rule): one-hot on its verdict
    rule = [Verdict("unsafe"), Verdict("safe")]
    assert close(ppo.judge_scores(rule, ["unsafe", "unsafe"], "neg_ce_minmax")[0], [1.0, 0.0])


def test_config_validation():
    from unsafe_concepts.errors import UserError

    c = ppo.PPOConfig()
    # the protocol's values, and the reference's where the protocol is silent (README of the reference data)
    assert (c.learning_rate, c.kl_coef, c.entropy_coef, c.length_bonus, c.rollout_batch_size, c.ppo_epochs,
            c.temperature, c.whiten_rewards, c.gamma, c.lam, c.cliprange, c.cliprange_value) == (
        3e-5, 0.1, 0.02, 4.0, 32, 1, 1.0, False, 1.0, 1.0, 0.2, 0.2)
    assert (c.mini_batch_size, c.kl_estimator, c.missing_eos_penalty, c.reward_scale, c.value_model) == (
        32, "k1_clamped", -8.0, 10.0, "adapter")  # one optimiser step per rollout of 32
    with pytest.raises(UserError, match="reward"):
        ppo.PPOConfig(reward="bleu").validate()
    with pytest.raises(UserError, match="temperature"):
        ppo.PPOConfig(temperature=0).validate()


def test_clamped_kl_and_missing_eos():
    logp, ref = torch.tensor([[-1.0, -2.0, -0.5]]), torch.tensor([[-1.5, -1.0, -0.5]])
    assert close(ppo.kl_estimate(logp, ref, "k1"), [[0.5, -1.0, 0.0]])
    assert close(ppo.kl_estimate(logp, ref, "k1_clamped"), [[0.5, 0.0, 0.0]])  # the reference's penalty
    rewards, kl = ppo.per_token_rewards(torch.tensor([2.0]), logp, ref, torch.ones(1, 3), 0.1, "k1_clamped")
    assert close(rewards, [[-0.05, 0.0, 2.0]])
    responses = torch.tensor([[5, 6, 2, 0], [5, 6, 7, 8], [2, 0, 0, 0]])
    mask = ppo.response_mask(responses, [2])
    assert ppo.ended_with_eos(responses, mask, [2]).tolist() == [True, False, True]


def test_selective_logprobs_equal_full_logits_in_value_and_gradient():
    """The chunked log-softmax (answer tokens only, chunks recomputed in backward) gives the same
    log-probs, entropies and gradients as the full-vocabulary computation."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    tokens = torch.randint(0, 50, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    logp, ent = ppo.selective_logprobs(hidden, head, tokens, mask, temperature=0.7, with_entropy=True, chunk_tokens=3)
    logits = head(hidden) / 0.7
    full_logp = ppo.logprobs_from_logits(logits, tokens) * mask
    full_ent = ppo.entropy_from_logits(logits) * mask
    assert torch.allclose(logp, full_logp, atol=1e-5) and torch.allclose(ent, full_ent, atol=1e-5)
    (logp.sum() + 0.3 * ent.sum()).backward()
    g_hidden, g_head = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    (full_logp.sum() + 0.3 * full_ent.sum()).backward()
    assert torch.allclose(g_hidden, hidden.grad, atol=1e-5) and torch.allclose(g_head, head.weight.grad, atol=1e-5)


def test_trainer_state_round_trip_without_pickle(tmp_path):
    """Optimiser and scheduler state go to safetensors + JSON and come back identical."""
    from unsafe_concepts.train.common import TrainConfig, make_scheduler

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = make_scheduler(opt, TrainConfig(warmup_steps=2), 10)
    for _ in range(3):
        model(torch.randn(4, 3)).sum().backward()
        opt.step(), sched.step(), opt.zero_grad()
    ppo.save_trainer_state(tmp_path, opt, sched)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trainer_state.json", "trainer_state.safetensors"]
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched2 = make_scheduler(opt2, TrainConfig(warmup_steps=2), 10)
    ppo.load_trainer_state(tmp_path, opt2, sched2)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for idx in a["state"]:
        for key in a["state"][idx]:
            assert torch.equal(a["state"][idx][key], b["state"][idx][key])
    assert sched2.last_epoch == sched.last_epoch and sched2.get_last_lr() == sched.get_last_lr()
