"""Alignment training: response-reward PPO (the paper's method), SFT, DPO, GRPO."""
