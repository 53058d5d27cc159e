"""The paper's headline numbers, shown in the report as context (not as a target to match).

Source: "Bridging the Gap in Vision Language Models in Identifying Unsafe Concepts Across Modalities"
(USENIX Security 2025), as given by a secondary summary of the paper: approximate figures. They are
about 7B-13B models on the full gated benchmark; a run on other models or on the offline sample is
not comparable to them.
"""
from __future__ import annotations

PAPER_SOURCE = ("figures of the paper (arXiv 2507.11155, USENIX Security 2025) as reported by a secondary "
                "summary; approximate")

# (what, the paper's figure)
PAPER_REFERENCE: tuple[tuple[str, str], ...] = (
    ("Perception accuracy (4 options)",
     "0.90-0.97 for LLaVA-7B/13B, InternLM-XComposer2, CogVLM, GPT-4V (GPT-4V 0.97, LLaVA-7B 0.93); "
     "0.45-0.61 for Qwen2-VL, InstructBLIP-7B/13B"),
    ("Alignment accuracy, visual (unsafe images called unsafe)", "0.14-0.70 across the eight VLMs (LLaVA-7B 0.37)"),
    ("Alignment accuracy, textual (named concepts called unsafe)", "0.81-0.95"),
    ("Modality gap (textual - visual), general / in context", "0.331, 0.572, 0.506"),
    ("LLaVA-7B after training, UnsafeConcepts_TEST accuracy",
     "original 0.736, SFT 0.977, DPO 0.648, PPO 0.903"),
    ("LLaVA-7B after training, general capability", "original 0.708, SFT 0.558, DPO 0.656, PPO 0.687"),
    ("LLaVA-7B after training, 1 - Self-BLEU (diversity)", "SFT 0.076, PPO 0.221"),
)
